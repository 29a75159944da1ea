"""The LÆ catalogue: which attests a job centre may ask for, who answers, the reply deadline,
the request form each is asked for on, and whether the citizen's consent is needed.

Defaults come from the KL/Lægeforeningen agreement "Socialt-lægeligt samarbejde" and the
sickness-benefit order (see the project's domain notes). Where an attest has two deadlines
(after consultation / after the request), the gateway only knows the request date, so the
default reply deadline counts from the request.

Forms come in pairs: the municipality asks on a request form and the doctor answers on the
reply form, numbered alike (LÆ 121 → LÆ 125, LÆ 261 → LÆ 265, LÆ 281 → LÆ 285: the pairs the
domain notes name). The other request forms follow the same numbering (the reply form's
number less four); ``request_form_source`` says which is which. An attest type's ``code`` is
its reply form: the attest the job centre wants back.

Consent: a municipality obtains health information about a citizen from a doctor with the
citizen's consent (retssikkerhedsloven § 11 c), unless a law lets it ask without: for the
sickness-benefit follow-up attest LÆ 285, sygedagpengeloven § 11 a obliges the municipality
to ask and the GP to answer (Bek. 1710/2024 § 11). ``legal_bases`` lists the bases a request
may name instead of consent; empty, the citizen's consent is required.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

from dateutil.relativedelta import relativedelta
from pydantic import BaseModel, ConfigDict

from attest_gateway.core.directory import Role


class DeadlineUnit(StrEnum):
    DAYS = "days"
    MONTHS = "months"


class ReplyDeadline(BaseModel):
    """A deadline counted from the date the request is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: int
    unit: DeadlineUnit

    def due(self, sent: dt.date) -> dt.date:
        if self.unit is DeadlineUnit.MONTHS:
            return sent + relativedelta(months=self.amount)
        return sent + dt.timedelta(days=self.amount)


class ReplyKind(StrEnum):
    """What a clinic's reply to an attest request is."""

    ATTEST = "attest"  # here is the attest
    NOT_IN_TREATMENT = "not-in-treatment"  # the citizen is not known or treated here
    WRONG_FORM = "wrong-form"  # the wrong attest type was asked for (maybe naming the right one)
    CANNOT_ANSWER = "cannot-answer"  # the clinic cannot answer; its text says why


def reply_kind_of_detail(detail: str | None) -> ReplyKind:
    """The reply kind a `replied` stage's detail names: an answer without the attest names its
    kind there; an attest names none."""
    known = {k.value: k for k in ReplyKind}
    return known.get(detail or "", ReplyKind.ATTEST)


class FormSource(StrEnum):
    """Where a request/reply form pair comes from."""

    OBSERVED = "observed"  # named in the domain notes (/work/shared/domain/README.md)
    INFERRED = "inferred"  # the same numbering: the reply form's number less four


class AttestType(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    title: str
    issuers: frozenset[Role]
    reply_deadline: ReplyDeadline
    request_form: str
    request_form_source: FormSource = FormSource.INFERRED
    legal_bases: frozenset[str] = frozenset()

    @property
    def reply_form(self) -> str:
        """The form the doctor answers on: the attest type's code."""
        return self.code

    @property
    def consent_required(self) -> bool:
        """Whether a request needs the citizen's consent (no legal basis lets it ask without)."""
        return not self.legal_bases


CONSENT_BASIS: Final = "retssikkerhedsloven § 11 c"
"""Why consent is needed where no other basis applies: the municipality obtains health
information with the citizen's consent."""
LAE285_BASIS: Final = "sygedagpengeloven § 11 a"
"""The municipality asks the GP for LÆ 285 under the sickness-benefit act itself."""


def _kind(
    code: str,
    title: str,
    issuers: set[Role],
    amount: int,
    unit: str,
    *,
    observed: bool = False,
    legal_bases: frozenset[str] = frozenset(),
) -> AttestType:
    number = int(code.removeprefix("LÆ "))
    return AttestType(
        code=code,
        title=title,
        issuers=frozenset(issuers),
        reply_deadline=ReplyDeadline(amount=amount, unit=DeadlineUnit(unit)),
        request_form=f"LÆ {number - 4}",
        request_form_source=FormSource.OBSERVED if observed else FormSource.INFERRED,
        legal_bases=legal_bases,
    )


_GP, _PSY = Role.GP, Role.PSYCHIATRY
_HOSP, _SPEC = Role.HOSPITAL, Role.SPECIALIST
_HEALTH = {_GP, _PSY, _HOSP, _SPEC}

DEFAULT_CATALOGUE: dict[str, AttestType] = {
    k.code: k
    for k in (
        _kind("LÆ 105", "Journaloplysninger fra sygehus", {_HOSP, _PSY}, 14, "days"),
        _kind("LÆ 115", "Journaloplysninger fra speciallægepraksis", {_SPEC}, 14, "days"),
        _kind("LÆ 125", "Statusattest", _HEALTH, 14, "days", observed=True),
        _kind("LÆ 135", "Specifik helbredsattest", {_GP}, 30, "days"),
        _kind("LÆ 145", "Generel helbredsattest", {_GP}, 30, "days"),
        _kind("LÆ 155", "Speciallægeattest", {_PSY, _SPEC}, 2, "months"),
        _kind("LÆ 225", "Attest vedrørende kronisk sygdom", {_GP}, 14, "days"),
        _kind("LÆ 265", "Lægeattest til rehabiliteringsteam", {_GP}, 30, "days", observed=True),
        _kind("LÆ 275", "Lægeattest fra klinisk funktion", {_HOSP, _PSY}, 30, "days"),
        _kind("LÆ 285", "Attest til sygedagpengeopfølgning", {_GP}, 14, "days", observed=True,
              legal_bases=frozenset({LAE285_BASIS})),
    )
}  # fmt: skip

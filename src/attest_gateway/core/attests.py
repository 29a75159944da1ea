"""The LÆ catalogue: which attests a job centre may ask for, who answers, and the reply deadline.

Defaults come from the KL/Lægeforeningen agreement "Socialt-lægeligt samarbejde" and the
sickness-benefit order (see the project's domain notes). Where an attest has two deadlines
(after consultation / after the request), the gateway only knows the request date, so the
default reply deadline counts from the request.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

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


class AttestType(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    title: str
    issuers: frozenset[Role]
    reply_deadline: ReplyDeadline


def _kind(code: str, title: str, issuers: set[Role], amount: int, unit: str) -> AttestType:
    return AttestType(
        code=code,
        title=title,
        issuers=frozenset(issuers),
        reply_deadline=ReplyDeadline(amount=amount, unit=DeadlineUnit(unit)),
    )


_GP, _PSY = Role.GP, Role.PSYCHIATRY
_HOSP, _SPEC = Role.HOSPITAL, Role.SPECIALIST
_HEALTH = {_GP, _PSY, _HOSP, _SPEC}

DEFAULT_CATALOGUE: dict[str, AttestType] = {
    k.code: k
    for k in (
        _kind("LÆ 105", "Journaloplysninger fra sygehus", {_HOSP, _PSY}, 14, "days"),
        _kind("LÆ 115", "Journaloplysninger fra speciallægepraksis", {_SPEC}, 14, "days"),
        _kind("LÆ 125", "Statusattest", _HEALTH, 14, "days"),
        _kind("LÆ 135", "Specifik helbredsattest", {_GP}, 30, "days"),
        _kind("LÆ 145", "Generel helbredsattest", {_GP}, 30, "days"),
        _kind("LÆ 155", "Speciallægeattest", {_PSY, _SPEC}, 2, "months"),
        _kind("LÆ 225", "Attest vedrørende kronisk sygdom", {_GP}, 14, "days"),
        _kind("LÆ 265", "Lægeattest til rehabiliteringsteam", {_GP}, 30, "days"),
        _kind("LÆ 275", "Lægeattest fra klinisk funktion", {_HOSP, _PSY}, 30, "days"),
        _kind("LÆ 285", "Attest til sygedagpengeopfølgning", {_GP}, 14, "days"),
    )
}  # fmt: skip

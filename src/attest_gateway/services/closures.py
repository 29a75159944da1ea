"""`POST /jobcenter/v1/cases/close`: a job centre closes its case of a citizen (case closure).

A case is the job centre's attest requests about one citizen (by CPR number, turned into the
case ref at once and never stored) of one case kind. Closing records the closure and when the
citizen's data in it is erased (CASE_ERASURE_DAYS later), audited. The erasure itself is
retention's (infra/housekeeping/retention.py, docs/data-lifecycle.md): the sealed CPR number,
the sent copies, the conversations made up to the closure with everything of theirs, and the
tracker's rows about them; the tracker's aggregates stay as they are.

Idempotent: closing a case already closed, and not yet erased, answers the first closure, also
when two closures of one case arrive at once (the second finds the first's row on insert).
"""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel, ConfigDict, Field

from attest_gateway.contracts.jobcenter import CaseKind
from attest_gateway.core.audit import CASE_CLOSE, AuditEvent
from attest_gateway.core.clock import Clock
from attest_gateway.core.directory import Organisation
from attest_gateway.core.errors import ErrorCode, Unknown
from attest_gateway.core.identifiers import Cpr
from attest_gateway.crypto import pseudonyms
from attest_gateway.ports.records import CaseClosure
from attest_gateway.ports.store import Store


class CaseCloseIn(BaseModel):
    """`POST /jobcenter/v1/cases/close`."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    citizen_cpr: Cpr
    case_kind: CaseKind


class CaseClosed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    closure_id: str
    case_kind: str
    conversations: int = Field(description="the attest requests of the case, made before closing")
    closed_at: dt.datetime
    erase_after: dt.datetime = Field(
        description="from then on the gateway erases what identifies the citizen in the case"
    )


def _answer(closure: CaseClosure) -> CaseClosed:
    return CaseClosed(
        closure_id=closure.id,
        case_kind=closure.case_kind,
        conversations=closure.conversations,
        closed_at=closure.closed_at,
        erase_after=closure.erase_after,
    )


async def close_case(
    store: Store,
    clock: Clock,
    org: Organisation,
    body: CaseCloseIn,
    *,
    pseudonym_key: bytes,
    erase_after: dt.timedelta,
    source: str,
) -> tuple[CaseClosed, bool]:
    """Close the case; (answer, closed now). Unknown when the job centre has no attest
    request about this citizen in a case of this kind (or its data was erased already)."""
    ref = pseudonyms.case_ref(body.citizen_cpr, pseudonym_key)
    now = clock.now()
    async with store.transaction() as uow:
        pending = await uow.closures.pending(org.id, ref, body.case_kind)
        if pending is not None:
            return _answer(pending), False
        count = await uow.closures.conversations_of(org.id, ref, body.case_kind, now)
        if count == 0:
            raise Unknown(
                ErrorCode.NOT_FOUND, "no attest requests of yours about this citizen in this case"
            )
        closure = CaseClosure(
            id=str(uuid.uuid4()),
            jobcenter_org_id=org.id,
            case_kind=body.case_kind,
            case_ref=ref,
            conversations=count,
            closed_at=now,
            erase_after=now + erase_after,
        )
        if not await uow.closures.add(closure):
            # Closed by a concurrent request since `pending` was read: answer its closure.
            # (None only if it was erased as well in between: then the case is gone.)
            raced = await uow.closures.pending(org.id, ref, body.case_kind)
            if raced is None:
                raise Unknown(ErrorCode.NOT_FOUND, "this case was closed and its data erased")
            return _answer(raced), False
        await uow.audit.record_many(
            [
                AuditEvent(
                    actor=org.id,
                    action=CASE_CLOSE,
                    source=source,
                    at=now,
                    subject_org=org.id,
                    detail={"closure_id": closure.id, "conversations": str(count)},
                )
            ]
        )
    return _answer(closure), True

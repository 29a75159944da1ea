"""`/jobcenter/v1`: thin routes for job-centre systems. Parse, authorise, call one function."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import Field

from attest_gateway.config import Settings
from attest_gateway.contracts.cases import CaseIn, CaseOut, CasePatch, JobcenterCaseId
from attest_gateway.contracts.jobcenter import (
    AttestRequestAccepted,
    AttestRequestIn,
    AttestRequestList,
    AttestTypeList,
    ConversationStatus,
    DeadlineExtensionIn,
    Inbox,
    RequestActionOut,
)
from attest_gateway.contracts.stages import Stage
from attest_gateway.core.bounds import ID_PATTERN, LINE, REFERENCE
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.core.errors import ErrorCode, InvalidInput
from attest_gateway.entrypoints.http.auth import (
    ActingPerson,
    authenticated,
    authenticated_first,
    gateway_of,
    handed_out,
    require_role,
)
from attest_gateway.entrypoints.http.routes.audit import client_source
from attest_gateway.entrypoints.http.routes.medcom import WAIT_DESCRIPTION
from attest_gateway.services import cases, closures, contacts, lifecycle, waiting
from attest_gateway.services import jobcenter as service
from attest_gateway.services.closures import CaseClosed, CaseCloseIn
from attest_gateway.services.contacts import ContactAccepted, ContactIn
from attest_gateway.services.waiting import MAX_WAIT_SECONDS

ROLES = (Role.JOBCENTER,)
router = APIRouter(
    prefix="/jobcenter/v1", tags=["job centre"], route_class=authenticated_first(*ROLES)
)


async def jobcenter(org: Annotated[Organisation, Depends(authenticated)]) -> Organisation:
    return require_role(org, *ROLES)


JobCenter = Annotated[Organisation, Depends(jobcenter)]
IDEMPOTENCY_KEY_DESCRIPTION = (
    "A key the client chooses per request (one line of text, at most 200 characters, no CPR "
    "number): the same key with the same body again gets the first answer, and creates "
    "nothing. Required in production (`ENVIRONMENT=production`: 400 "
    "`idempotency-key-required` without it), optional in development."
)


async def idempotency_key(
    request: Request,
    # A key the client chose, stored in clear with the answer: one line of text, no CPR number.
    idempotency_key: Annotated[
        Annotated[str, Field(max_length=200), REFERENCE] | None,
        Header(description=IDEMPOTENCY_KEY_DESCRIPTION),
    ] = None,
) -> str | None:
    """The request's Idempotency-Key; in production a creating call must send one, so that a
    retried request cannot create a second conversation or contact."""
    settings: Settings = request.app.state.settings
    if idempotency_key is None and settings.environment == "production":
        raise InvalidInput(
            ErrorCode.IDEMPOTENCY_KEY_REQUIRED,
            "send an Idempotency-Key header: in production every creating call needs one, "
            "so that a retry cannot create the same thing twice",
        )
    return idempotency_key


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
# Ids the gateway handed out (a value of another form names nothing: 404).
ConversationId = Annotated[str, Path(pattern=ID_PATTERN)]
MessageId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.post("/attest-requests", status_code=202, response_model=AttestRequestAccepted)
async def request_attest(
    body: AttestRequestIn,
    request: Request,
    response: Response,
    org: JobCenter,
    idempotency_key: IdempotencyKey,
    actor: ActingPerson,
) -> AttestRequestAccepted:
    gw = gateway_of(request)
    accepted, created = await service.submit_attest_request(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        body,
        idempotency_key=idempotency_key,
        catalogue=gw.catalogue,
        gateway_org_id=gw.settings.gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
        source=client_source(request),
        actor=actor,
    )
    response.headers["Location"] = accepted.status_url
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


@router.get("/attest-types", response_model=AttestTypeList)
async def attest_types(request: Request, org: JobCenter) -> AttestTypeList:
    """The LÆ catalogue: each attest type's request and reply form, who issues it, its
    default reply deadline, and whether a request needs the citizen's consent."""
    return service.attest_types(gateway_of(request).catalogue)


@router.post("/contacts", status_code=201, response_model=ContactAccepted)
async def register_contact(
    body: ContactIn,
    request: Request,
    response: Response,
    org: JobCenter,
    idempotency_key: IdempotencyKey,
) -> ContactAccepted:
    """Register a direct contact with psychiatry about a citizen (counts for contact coverage)."""
    gw = gateway_of(request)
    accepted, created = await contacts.register_contact(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        body,
        idempotency_key=idempotency_key,
        gateway_org_id=gw.settings.gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


@router.post("/cases/close", response_model=CaseClosed)
async def close_case(
    body: CaseCloseIn, request: Request, response: Response, org: JobCenter
) -> CaseClosed:
    """Close the job centre's case of a citizen (the attest requests about them of this case
    kind). After CASE_ERASURE_DAYS the gateway erases what identifies the citizen in it; the
    ministry's aggregates stay. Closing a closed case again answers the first closure."""
    gw = gateway_of(request)
    closed, created = await closures.close_case(
        gw.store,
        gw.clock,
        org,
        body,
        pseudonym_key=gw.pseudonym_key,
        erase_after=dt.timedelta(days=gw.settings.case_erasure_days),
        source=client_source(request),
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return closed


@router.post(
    "/cases",
    status_code=201,
    response_model=CaseOut,
    responses={
        200: {"model": CaseOut, "description": "the same case again (`Idempotent-Replayed: true`)"}
    },
)
async def register_case(
    body: CaseIn, request: Request, response: Response, org: JobCenter
) -> CaseOut:
    """Register a sickness case (idempotent by the job centre's case id): the denominator of
    contact coverage, with or without any attest request. 201 when created; the same case again
    answers 200 with `Idempotent-Replayed: true`."""
    gw = gateway_of(request)
    case, created = await cases.register_case(
        gw.store,
        gw.keyring,
        gw.clock,
        org,
        body,
        gateway_org_id=gw.settings.gateway_org_id,
        pseudonym_key=gw.pseudonym_key,
    )
    if not created:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return case


@router.patch("/cases/{case_id}", response_model=CaseOut)
async def update_case(
    case_id: Annotated[JobcenterCaseId, Path()], body: CasePatch, request: Request, org: JobCenter
) -> CaseOut:
    """Change a case's psychiatric course, or close it (`closed_on`)."""
    gw = gateway_of(request)
    return await cases.update_case(gw.store, gw.clock, org, case_id, body)


@router.get("/attest-requests", response_model=AttestRequestList)
async def list_attest_requests(
    request: Request,
    org: JobCenter,
    status: Annotated[Stage | None, Query(description="only those at this stage now")] = None,
    overdue: Annotated[
        bool | None, Query(description="only those past (true) or not past (false) due")
    ] = None,
    attest_type: Annotated[
        Annotated[str, Field(max_length=16), LINE] | None,
        Query(description="only this LÆ code, e.g. 'LÆ 155'"),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(max_length=200, description="`next_cursor` of the page before"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AttestRequestList:
    """The job centre's attest requests, newest first."""
    gw = gateway_of(request)
    found = await lifecycle.list_requests(
        gw.store,
        gw.clock,
        org,
        status=status,
        overdue=overdue,
        attest_type=attest_type,
        cursor=cursor,
        limit=limit,
    )
    handed_out(request, len(found.items))
    return found


@router.post("/attest-requests/{conversation_id}/cancel", response_model=RequestActionOut)
async def cancel_attest_request(
    conversation_id: ConversationId, request: Request, response: Response, org: JobCenter
) -> RequestActionOut:
    """Cancel a request the receiver has not answered: the receiver gets a MedCom
    CareCommunication cancellation, and the tracker stops the clock and the reminders.
    Cancelling again answers the first cancellation (`Idempotent-Replayed: true`)."""
    gw = gateway_of(request)
    out, created = await lifecycle.cancel_request(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        conversation_id,
        source=client_source(request),
        gateway_org_id=gw.settings.gateway_org_id,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.post("/attest-requests/{conversation_id}/extend", response_model=RequestActionOut)
async def extend_attest_request(
    conversation_id: ConversationId,
    body: DeadlineExtensionIn,
    request: Request,
    response: Response,
    org: JobCenter,
) -> RequestActionOut:
    """Move the reply deadline later; the tracker counts overdue and reminds from the new one.
    The same new deadline again answers the first extension (`Idempotent-Replayed: true`)."""
    gw = gateway_of(request)
    out, created = await lifecycle.extend_deadline(
        gw.store, gw.relay, gw.clock, org, conversation_id, body
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.post("/attest-requests/{conversation_id}/remind", response_model=RequestActionOut)
async def remind_attest_request(
    conversation_id: ConversationId,
    request: Request,
    response: Response,
    org: JobCenter,
    idempotency_key: IdempotencyKey,
) -> RequestActionOut:
    """Send the receiver a reminder now, at most one a day per request (409 `reminder-limit`
    otherwise; the same Idempotency-Key again answers the first)."""
    gw = gateway_of(request)
    out, created = await lifecycle.remind_by_hand(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        conversation_id,
        idempotency_key=idempotency_key,
        source=client_source(request),
        gateway_org_id=gw.settings.gateway_org_id,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return out


@router.get("/attest-requests/{conversation_id}", response_model=ConversationStatus)
async def attest_request_status(
    conversation_id: ConversationId, request: Request, org: JobCenter
) -> ConversationStatus:
    gw = gateway_of(request)
    return await service.conversation_status(gw.store, org, conversation_id, gw.catalogue)


@router.get("/inbox", response_model=Inbox)
async def inbox(
    request: Request,
    org: JobCenter,
    actor: ActingPerson,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    wait: Annotated[int, Query(ge=0, le=MAX_WAIT_SECONDS, description=WAIT_DESCRIPTION)] = 0,
) -> Inbox:
    gw = gateway_of(request)
    found = await waiting.long_poll(
        gw.store,
        org.id,
        replies=True,
        wait=wait,
        read=lambda: service.read_inbox(
            gw.store,
            gw.keyring,
            gw.clock,
            org,
            limit=limit,
            source=client_source(request),
            actor=actor,
            gateway_org_id=gw.settings.gateway_org_id,
        ),
        empty=lambda found: not found.items,
    )
    handed_out(request, len(found.items) + len(found.refused) + len(found.unreadable))
    return found


@router.post("/inbox/{message_id}/ack")
async def acknowledge(message_id: MessageId, request: Request, org: JobCenter) -> dict[str, object]:
    gw = gateway_of(request)
    changed = await service.acknowledge_reply(
        gw.store,
        gw.relay,
        gw.keyring,
        gw.clock,
        org,
        message_id,
        source=client_source(request),
        gateway_org_id=gw.settings.gateway_org_id,
    )
    return {"message_id": message_id, "acknowledged": True, "changed": changed}

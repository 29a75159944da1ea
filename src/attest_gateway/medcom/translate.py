"""Pure translation between job-centre JSON and MedCom-like Bundles.

A job centre's `AttestRequestIn` becomes a CareCommunication-shaped Bundle (see
`medcom.build`); an attest reply Bundle becomes an `InboxItem`.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from attest_gateway.contracts.jobcenter import (
    AttachmentOut,
    AttestRequestIn,
    InboxItem,
    OrganisationSummary,
)
from attest_gateway.core.attests import AttestType, ReplyKind
from attest_gateway.medcom.build import (
    PDF_ONLY_TEXT,
    PersonName,
    SegmentAuthor,
    build_attest_request,
)
from attest_gateway.medcom.read import MessageInfo, OrgIdentifiers

CASEWORKER_ROLE = "Sagsbehandler"
"""The role of the request's author, the job centre's caseworker (as text: no MedCom code)."""


def request_bundle(
    body: AttestRequestIn,
    *,
    kind: AttestType,
    reply_deadline: dt.date,
    sender: OrgIdentifiers,
    receiver: OrgIdentifiers,
    conversation_id: str,
    message_id: str,
    bundle_id: str,
    sent_at: dt.datetime,
) -> dict[str, Any]:
    return build_attest_request(
        message_id=message_id,
        bundle_id=bundle_id,
        sent_at=sent_at,
        sender=sender,
        receiver=receiver,
        cpr=body.citizen_cpr,
        patient_name=PersonName(
            family=body.citizen_name.family, given=tuple(body.citizen_name.given)
        ),
        author=SegmentAuthor(
            name=PersonName(family=body.caseworker.family, given=tuple(body.caseworker.given)),
            phone=body.caseworker.phone,
            role=CASEWORKER_ROLE,
            email=body.caseworker.email,
        ),
        attest_type=kind.code,
        attest_title=kind.title,
        case_kind=body.case_kind.value,
        questions=body.questions,
        reply_deadline=reply_deadline,
        conversation_id=conversation_id,
        request_form=kind.request_form,
        consent_date=body.consent.date if body.consent is not None else None,
        legal_basis=body.consent.legal_basis if body.consent is not None else None,
    )


def inbox_item(
    info: MessageInfo,
    *,
    conversation_id: str,
    caseworker_ref: str,
    attest_type: str,
    received_at: dt.datetime,
) -> InboxItem:
    # Only the segments the reply added (a reply repeats the request's segments first), and
    # not the placeholder segment of a PDF-only reply: that is not the clinician's text.
    texts = [t for t in info.new_texts if t and t != PDF_ONLY_TEXT]
    return InboxItem(
        message_id=info.message_id,
        conversation_id=conversation_id,
        caseworker_ref=caseworker_ref,
        attest_type=info.attest_type or attest_type,
        sender=OrganisationSummary(
            name=info.sender.name or "", sor=info.sender.sor, gln=info.sender.gln
        ),
        received_at=received_at,
        attest_text="\n\n".join(texts) if texts else None,
        attachments=[
            AttachmentOut(
                content_type=a.content_type or "application/octet-stream",
                title=a.title,
                data_base64=base64.b64encode(a.data).decode("ascii"),
            )
            for a in info.attachments
        ],
        reply_kind=reply_kind_of(info),
        suggested_attest_type=info.suggested_attest_type,
    )


def reply_kind_of(info: MessageInfo) -> ReplyKind:
    """The reply's kind: its reply-kind extension, an attest without one. Raises ValueError
    for a code the gateway does not know (the gateway refuses such a reply on submission)."""
    return ReplyKind(info.reply_kind) if info.reply_kind is not None else ReplyKind.ATTEST

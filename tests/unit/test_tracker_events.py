"""`gateway.tracking` record values → events, and the reason an unreadable one is refused
(the dead-letter detail)."""

from __future__ import annotations

import datetime as dt

import pytest

from attest_gateway.gateway.tracker.events import (
    ContactChannel,
    ContactEvent,
    NotATrackingEvent,
    parse_tracking_event,
)
from attest_gateway.schemas.events import MessageType, Stage, StageEvent

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
STAGE = StageEvent(
    event_id="e1",
    conversation_id="c1",
    message_id="m1",
    message_type=MessageType.ATTEST_REQUEST,
    stage=Stage.SUBMITTED,
    at=AT,
    attest_type="LÆ 265",
    case_kind="sygedagpenge",
    municipality="101",
    region_code="1084",
    jobcenter_org="jc-101",
    receiver_org="gp-noerrebro",
    case_ref="k1.ab12",
    psychiatric_course=False,
    first_day_of_absence=dt.date(2026, 2, 2),
    reply_deadline=dt.date(2026, 3, 16),
)
CONTACT = ContactEvent(
    event_id="e2",
    contact_id="x1",
    at=AT,
    contact_date=dt.date(2026, 2, 20),
    jobcenter_org="jc-101",
    psychiatry_org="psyk-kbh",
    municipality="101",
    region_code="1084",
    case_kind="sygedagpenge",
    case_ref="k1.ab12",
    first_day_of_absence=dt.date(2026, 2, 2),
    channel=ContactChannel.MEETING,
)


@pytest.mark.parametrize("event", [STAGE, CONTACT])
def test_events_read_back_as_written(event: StageEvent | ContactEvent) -> None:
    parsed = parse_tracking_event(event.model_dump_json().encode())
    assert type(parsed) is type(event)
    assert parsed == event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "the record has no value"),
        (b"{not json", "the record is not JSON"),
        (b"\xff\xfe", "the record is not JSON"),
        (b"[]", "unknown tracking event type"),
        (b"null", "unknown tracking event type"),
        (b'"stage"', "unknown tracking event type"),
        (b'{"event_id": "e1"}', "unknown tracking event type"),
        (b'{"type": "alarm"}', "unknown tracking event type"),
        (b'{"type": 1}', "unknown tracking event type"),
        (b'{"type": "stage"}', "the stage event does not match its schema"),
        (
            STAGE.model_dump_json().replace('"submitted"', '"teleported"').encode(),
            "the stage event does not match its schema",
        ),
        (
            CONTACT.model_dump_json()[:-1].encode() + b', "cpr": "0101901234"}',
            "the contact event does not match its schema",
        ),
    ],
)
def test_unreadable_values_are_refused_with_their_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(NotATrackingEvent) as refused:
        parse_tracking_event(raw)
    assert str(refused.value) == reason

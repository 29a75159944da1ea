"""`gateway.tracking` record values → events, and the reason an unreadable one is refused
(the dead-letter detail)."""

from __future__ import annotations

import pytest

from attest_gateway.contracts.contacts import ContactEvent, NotATrackingEvent, parse_tracking_event
from attest_gateway.contracts.stages import StageEvent
from tests.support.events import contact_event, stage_event

STAGE = stage_event("k1.ab12")
CONTACT = contact_event("k1.ab12")


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

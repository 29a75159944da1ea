"""Tracking events for tests: a valid stage event and contact event about one case ref."""

from __future__ import annotations

import datetime as dt
import uuid

from attest_gateway.contracts.contacts import ContactChannel, ContactEvent
from attest_gateway.contracts.stages import MessageType, Stage, StageEvent


def stage_event(ref: str) -> StageEvent:
    now = dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC)
    return StageEvent(
        event_id=str(uuid.uuid4()),
        conversation_id="conv-1",
        message_id="msg-1",
        message_type=MessageType.ATTEST_REQUEST,
        stage=Stage.SUBMITTED,
        at=now,
        attest_type="LÆ 155",
        case_kind="sygedagpenge",
        municipality="101",
        region_code="1084",
        jobcenter_org="jc",
        receiver_org="psy",
        case_ref=ref,
        psychiatric_course=True,
        first_day_of_absence=now.date(),
        reply_deadline=now.date() + dt.timedelta(days=60),
    )


def contact_event(ref: str) -> ContactEvent:
    return ContactEvent(
        event_id=str(uuid.uuid4()),
        contact_id="contact-1",
        at=dt.datetime(2026, 3, 2, 11, tzinfo=dt.UTC),
        contact_date=dt.date(2026, 3, 2),
        jobcenter_org="jc",
        psychiatry_org="psy",
        municipality="101",
        region_code="1084",
        case_kind="sygedagpenge",
        case_ref=ref,
        first_day_of_absence=dt.date(2026, 2, 1),
        channel=ContactChannel.MEETING,
    )

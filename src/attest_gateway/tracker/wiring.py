"""Wiring of the tracker: its rules from the settings, and its parts in the running gateway
(the `gateway.tracking` consumer and the sweep), started by `bootstrap.running_gateway`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from attest_gateway.config import Settings
from attest_gateway.infra.kafka.bus import ConsumerLoop
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.rules import TrackerRules
from attest_gateway.tracker.sweep import TrackerSweep

if TYPE_CHECKING:
    from attest_gateway.bootstrap import Gateway


_RULES: dict[int, tuple[Settings, TrackerRules]] = {}


def tracker_rules(settings: Settings) -> TrackerRules:
    """The tracker's rules for these settings (built once per settings object)."""
    cached = _RULES.get(id(settings))
    if cached is not None and cached[0] is settings:
        return cached[1]
    rules = _build_rules(settings)
    _RULES[id(settings)] = (settings, rules)
    return rules


def _build_rules(settings: Settings) -> TrackerRules:
    return TrackerRules.build(
        settings.tracker_deadlines,
        next_working_day=settings.tracker_deadline_next_working_day,
        late_request_weeks=dict(settings.tracker_late_request_weeks),
        contact_window_weeks=settings.tracker_contact_window_weeks,
        contact_case_kinds=frozenset(settings.tracker_contact_case_kinds),
        contact_baseline=settings.tracker_contact_baseline,
        reminder_max=settings.tracker_reminder_max,
        reminder_interval_days=settings.tracker_reminder_interval_days,
        min_cell_citizens=settings.tracker_min_cell_citizens,
        timezone=settings.tracker_timezone,
    )


@dataclass
class Tracker:
    state: TrackerState
    consumers: list[ConsumerLoop]  # one group: each holds some of the topic's partitions
    sweep: TrackerSweep

    async def stop(self) -> None:
        await self.sweep.stop()


def make_tracker(gw: Gateway, bootstrap: str) -> Tracker:
    """The consumers (not started) and the sweep (not started) for a running gateway.

    `TRACKER_CONSUMERS` consumers (one by default) share one state (rules, the cells known to
    exist) and join one group, so each applies the polls of its own partitions in its own
    transaction on its own connection: one consumer's Python runs while another's statements
    are in the database. Their transactions take the rows they share (rollup rows, contact
    episodes and memberships of a citizen whose conversations sit in two partitions) in one
    order, as separate tracker processes do, so they wait for each other instead of
    deadlocking."""
    settings = gw.settings
    state = TrackerState(tracker_rules(settings), gw.catalogue)
    consumers = [
        ConsumerLoop(
            settings=settings,
            bootstrap=bootstrap,
            topic=gw.topics.tracking,
            group=f"{settings.kafka_group_prefix}.tracker",
            handler=TrackerHandler(gw.engine, state, store_key=gw.store_key),
            producer=gw.producer,
            dead_letter_topic=gw.topics.dead_letter,
            batch_spans_partitions=settings.tracker_poll_in_one_transaction,
            max_poll_records=settings.tracker_max_poll_records,
        )
        for _ in range(settings.tracker_consumers)
    ]
    sweep = TrackerSweep(gw, state, interval=settings.tracker_sweep_seconds)
    return Tracker(state, consumers, sweep)

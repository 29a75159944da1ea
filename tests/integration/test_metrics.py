"""/metrics after an end-to-end run in process: HTTP requests by route and status with
latency histograms, Kafka records produced and consumed by topic, consumer lag, dead letters
by reason, verification failures, outbox and mailbox depth. Counters are process-wide (both
database kinds run in this process), so the test compares a scrape before with one after."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families

from attest_gateway.infra.db.gauges import StoreGauges
from tests.integration.conftest import Harness
from tests.support.flows import PSY, poison, round_trip
from tests.support.harness import read_topic, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> Iterator[float]:
    for (n, found), v in samples.items():
        if n == name and set(labels.items()) <= set(found):
            yield v


async def scrape(h: Harness) -> Samples:
    response = await h.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_after_a_round_trip(harness: Harness) -> None:
    h = harness
    before = await scrape(h)
    conversation = await round_trip(h)
    bad_id = await poison(h, conversation.envelope)

    async def dead_lettered() -> bool:
        records = await read_topic(h.bootstrap, h.gw.topics.dead_letter)
        return any((r.key or b"").decode() == bad_id for r in records)

    await wait_for(dead_lettered)
    medcom_handled = (
        "attest_gateway_kafka_records_consumed_total",
        frozenset({"topic": h.gw.topics.medcom_messages, "outcome": "handled"}.items()),
    )

    async def all_delivered() -> bool:  # the last acknowledgement is delivered after we return
        return (await scrape(h)).get(medcom_handled, 0) - before.get(medcom_handled, 0) >= 4

    await wait_for(all_delivered)
    await StoreGauges().refresh(
        h.gw.engine, h.gw.clock, force=True
    )  # the app's refresh is rate-limited
    after = await scrape(h)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/jobcenter/v1/attest-requests"
    assert delta("attest_gateway_http_requests_total", method="POST", route=route,
                 status="202") == 1  # fmt: skip
    assert delta("attest_gateway_http_request_duration_seconds_count", method="POST",
                 route=route) == 1  # fmt: skip
    ack_route = "/jobcenter/v1/inbox/{message_id}/ack"
    assert delta("attest_gateway_http_requests_total", method="POST", route=ack_route,
                 status="200") == 1  # fmt: skip
    medcom, tracking, dlq = (
        h.gw.topics.medcom_messages,
        h.gw.topics.tracking,
        h.gw.topics.dead_letter,
    )
    # Request, acknowledgement, reply, and the job centre's acknowledgement of the reply.
    assert delta("attest_gateway_kafka_records_produced_total", topic=medcom) >= 4
    assert delta("attest_gateway_kafka_records_produced_total", topic=tracking) >= 9
    assert delta("attest_gateway_kafka_records_produced_total", topic=dlq) >= 1
    assert delta("attest_gateway_kafka_records_consumed_total", topic=medcom,
                 outcome="handled") >= 4  # fmt: skip
    assert delta("attest_gateway_kafka_records_consumed_total", topic=medcom,
                 outcome="dead-lettered") >= 1  # fmt: skip
    assert delta("attest_gateway_dead_letters_total", reason="signature-invalid",
                 source_topic=medcom) >= 1  # fmt: skip
    assert delta("attest_gateway_verification_failures_total", where="kafka",
                 reason="signature-invalid") >= 1  # fmt: skip
    assert list(matching(after, "attest_gateway_kafka_consumer_lag", topic=medcom))
    assert all(v >= 0 for v in matching(after, "attest_gateway_kafka_consumer_lag"))
    # The job centre's acknowledgement of the reply waits in psychiatry's mailbox.
    assert value(after, "attest_gateway_mailbox_depth", receiver=PSY,
                 message_type="acknowledgement") >= 1  # fmt: skip
    assert ("attest_gateway_outbox_oldest_age_seconds", frozenset()) in after
    assert value(after, "attest_gateway_build_info", version=__import__(
        "attest_gateway").__version__) == 1  # fmt: skip


async def test_problem_answers_are_counted_by_code(harness: Harness) -> None:
    h = harness
    before = await scrape(h)
    response = await h.client.get("/jobcenter/v1/inbox", headers={"Authorization": "Bearer x"})
    assert response.status_code == 401
    unknown = await h.client.get("/no/such/path")
    assert unknown.status_code == 404
    after = await scrape(h)
    key = ("attest_gateway_http_problems_total",
           frozenset({"code": "unauthenticated", "status": "401"}.items()))  # fmt: skip
    assert after[key] - before.get(key, 0) == 1
    # An unknown path is counted under one label, not under the path it asked for.
    unmatched = value(after, "attest_gateway_http_requests_total", method="GET",
                      route="<unmatched>", status="404")  # fmt: skip
    assert unmatched >= 1
    assert not any("/no/such/path" in str(labels) for (_, labels) in after)

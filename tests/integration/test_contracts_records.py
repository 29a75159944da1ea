"""The AsyncAPI document against what the gateway really writes: after a round trip and a
dead-lettered record, every record the gateway produced on medcom.messages,
gateway.tracking and gateway.dead-letter has the documented headers, and its value
validates against the documented payload schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from attest_gateway.entrypoints.http.asyncapi import build_asyncapi
from tests.integration.conftest import Harness
from tests.support.flows import poison, round_trip
from tests.support.harness import read_topic, wait_for


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    root = {**schema, "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)


async def test_records_match_the_asyncapi_document(harness: Harness) -> None:
    h = harness
    doc = json.loads(json.dumps(build_asyncapi(h.settings)))
    conversation = await round_trip(h)
    bad_id = await poison(h, conversation.envelope)

    async def dead_lettered() -> bool:
        records = await read_topic(h.bootstrap, h.gw.topics.dead_letter)
        return any((r.key or b"").decode() == bad_id for r in records)

    await wait_for(dead_lettered)
    by_address = {ch["address"]: ch for ch in doc["channels"].values()}
    checked: dict[str, int] = {}
    for topic in (h.gw.topics.medcom_messages, h.gw.topics.tracking, h.gw.topics.dead_letter):
        messages = [
            doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
            for ref in by_address[topic]["messages"].values()
        ]
        for record in await read_topic(h.bootstrap, topic):
            if not record.headers:  # written by a test straight to Kafka, not by the gateway
                continue
            headers = {k: v.decode() for k, v in record.headers}
            # The channel's message whose headers these are (a channel may carry several).
            (message,) = [
                m for m in messages if _validator(doc, m["headers"]).is_valid(headers)
            ] or [messages[0]]
            _validator(doc, message["headers"]).validate(headers)
            if topic != h.gw.topics.dead_letter:
                _validator(doc, message["payload"]).validate(json.loads(record.value or b"null"))
                if message["name"] != "ContactEvent":  # keyed by the citizen's case ref
                    assert (record.key or b"").decode() == headers["conversation-id"]
            checked[topic] = checked.get(topic, 0) + 1
    assert checked[h.gw.topics.medcom_messages] >= 4
    assert checked[h.gw.topics.tracking] >= 9
    assert checked[h.gw.topics.dead_letter] >= 1

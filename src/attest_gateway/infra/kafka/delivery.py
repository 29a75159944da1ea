"""The delivery consumer's handler: `medcom.messages` records → the delivery use case
(services/delivery.py), a poll at a time or a record at a time. A store error is transient
(the record is retried); a refused envelope is permanent (dead-letter topic)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from aiokafka import ConsumerRecord

from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.core.clock import Clock
from attest_gateway.core.errors import PermanentError, TransientError
from attest_gateway.core.ports import Store
from attest_gateway.infra.db.engine import STORE_ERRORS
from attest_gateway.services.delivery import check_envelope, deliver, deliver_many, parse_envelope

log = structlog.get_logger(__name__)


class DeliveryHandler:
    def __init__(self, store: Store, gateway_org_id: str, clock: Clock) -> None:
        self._store = store
        self._gateway_org_id = gateway_org_id
        self._clock = clock

    async def handle_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Deliver a poll's new, valid envelopes in one transaction (`deliver_many`); returns
        the records left to the one-by-one path (unreadable, refused, already delivered, or
        a second record of a message id in the batch)."""
        by_message: dict[str, ConsumerRecord[bytes, bytes]] = {}
        envelopes: list[SealedEnvelope] = []
        for record in records:
            try:
                envelope = parse_envelope(record.value)
            except PermanentError:
                continue
            if envelope.header.message_id not in by_message:
                by_message[envelope.header.message_id] = record
                envelopes.append(envelope)
        now = self._clock.now()
        try:
            async with self._store.transaction() as uow:
                delivered = await deliver_many(uow, envelopes, self._gateway_org_id, now)
        except STORE_ERRORS as exc:
            raise TransientError("database-unavailable", type(exc).__name__) from exc
        if delivered:  # one line for the batch, not one per message
            log.info(
                "delivery.delivered",
                count=len(delivered),
                message_ids=[e.header.message_id for e in delivered],
            )
        done = {_place(by_message[e.header.message_id]) for e in delivered}
        return [record for record in records if _place(record) not in done]

    async def __call__(self, record: ConsumerRecord[bytes, bytes]) -> None:
        envelope = parse_envelope(record.value)
        now = self._clock.now()
        try:
            async with self._store.transaction() as uow:
                await check_envelope(uow.directory, envelope, self._gateway_org_id, now)
                is_new = await deliver(uow, envelope, now)
        except STORE_ERRORS as exc:
            raise TransientError("database-unavailable", type(exc).__name__) from exc
        h = envelope.header
        log.info(
            "delivery.delivered" if is_new else "delivery.duplicate",
            message_id=h.message_id,
            conversation_id=h.conversation_id,
            message_type=h.message_type.value,
            receiver=h.receiver,
        )


def _place(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset

"""The webhook store (ports/webhooks.py `WebhookStore`) on SQLAlchemy Core: endpoints and
deliveries, each call its own short transaction.

A delivery's id is its primary key, so the dispatcher that reads the same stage event twice
adds nothing the second time (insert-or-ignore); a due delivery is claimed by a conditional
update of its next attempt time, so two senders never post the same attempt at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from attest_gateway.contracts.webhooks import DeliveryStatus, WebhookEvent
from attest_gateway.infra.db.engine import aware, dialect_insert
from attest_gateway.infra.db.tables import webhook_deliveries, webhook_endpoints
from attest_gateway.ports.webhooks import Attempt, DeliveryRecord, EndpointRecord

_D = webhook_deliveries.c
_E = webhook_endpoints.c


def _maybe(value: dt.datetime | None) -> dt.datetime | None:
    return aware(value) if value is not None else None


def _endpoint(row: Any) -> EndpointRecord:
    return EndpointRecord(
        id=row.id,
        org_id=row.org_id,
        url=row.url,
        events=frozenset(WebhookEvent(e) for e in row.events.split()),
        secret=row.secret,
        created_at=aware(row.created_at),
        previous_secret=row.previous_secret,
        previous_until=_maybe(row.previous_until),
        removed_at=_maybe(row.removed_at),
    )


def _delivery(row: Any) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        endpoint_id=row.endpoint_id,
        org_id=row.org_id,
        event_type=WebhookEvent(row.event_type),
        conversation_id=row.conversation_id,
        payload=row.payload.encode("utf-8"),
        created_at=aware(row.created_at),
        give_up_at=aware(row.give_up_at),
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=_maybe(row.next_attempt_at),
        last_attempt_at=_maybe(row.last_attempt_at),
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        delivered_at=_maybe(row.delivered_at),
    )


class SqlWebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_endpoint(self, endpoint: EndpointRecord) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                webhook_endpoints.insert().values(
                    id=endpoint.id,
                    org_id=endpoint.org_id,
                    url=endpoint.url,
                    events=" ".join(sorted(endpoint.events)),
                    secret=endpoint.secret,
                    created_at=endpoint.created_at,
                )
            )

    async def endpoint(self, endpoint_id: str) -> EndpointRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(webhook_endpoints).where(
                        _E.id == endpoint_id, _E.removed_at.is_(None)
                    )
                )
            ).first()
        return _endpoint(row) if row is not None else None

    async def endpoints_of(self, org_ids: Iterable[str]) -> list[EndpointRecord]:
        ids = sorted(set(org_ids))
        if not ids:
            return []
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(webhook_endpoints)
                .where(_E.org_id.in_(ids), _E.removed_at.is_(None))
                .order_by(_E.created_at, _E.id)
            )
            return [_endpoint(r) for r in rows]

    async def remove_endpoint(self, endpoint_id: str, at: dt.datetime) -> bool:
        async with self._engine.begin() as conn:
            removed = await conn.execute(
                webhook_endpoints.update()
                .where(_E.id == endpoint_id, _E.removed_at.is_(None))
                .values(removed_at=at)
            )
            if removed.rowcount != 1:
                return False
            await conn.execute(
                webhook_deliveries.update()
                .where(_D.endpoint_id == endpoint_id, _D.status == DeliveryStatus.PENDING)
                .values(
                    status=DeliveryStatus.FAILED,
                    next_attempt_at=None,
                    last_error="endpoint-removed",
                )
            )
        return True

    async def rotate_secret(
        self, endpoint_id: str, secret: str, previous_until: dt.datetime
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                webhook_endpoints.update()
                .where(_E.id == endpoint_id, _E.removed_at.is_(None))
                .values(previous_secret=_E.secret, previous_until=previous_until, secret=secret)
            )
        return bool(result.rowcount == 1)

    async def add_deliveries(self, deliveries: Sequence[DeliveryRecord]) -> set[str]:
        if not deliveries:
            return set()
        rows = [
            {
                "id": d.id,
                "endpoint_id": d.endpoint_id,
                "org_id": d.org_id,
                "event_type": d.event_type.value,
                "conversation_id": d.conversation_id,
                "payload": d.payload.decode("utf-8"),
                "status": d.status.value,
                "attempts": d.attempts,
                "created_at": d.created_at,
                "give_up_at": d.give_up_at,
                "next_attempt_at": d.next_attempt_at,
            }
            for d in deliveries
        ]
        async with self._engine.begin() as conn:
            statement = dialect_insert(conn.dialect.name, webhook_deliveries)
            added: set[str] = set()
            for delivery, row in zip(deliveries, rows, strict=True):  # a handful per event
                result = await conn.execute(statement.on_conflict_do_nothing(), row)
                if result.rowcount == 1:
                    added.add(delivery.id)
        return added

    async def delivery(self, delivery_id: str) -> DeliveryRecord | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(webhook_deliveries).where(_D.id == delivery_id))
            ).first()
        return _delivery(row) if row is not None else None

    async def deliveries_of(
        self, org_id: str, *, status: DeliveryStatus | None, limit: int
    ) -> list[DeliveryRecord]:
        query = sa.select(webhook_deliveries).where(_D.org_id == org_id)
        if status is not None:
            query = query.where(_D.status == status.value)
        query = query.order_by(_D.created_at.desc(), _D.id).limit(limit)
        async with self._engine.connect() as conn:
            return [_delivery(r) for r in await conn.execute(query)]

    async def due(self, now: dt.datetime, limit: int) -> list[DeliveryRecord]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(webhook_deliveries)
                .where(_D.status == DeliveryStatus.PENDING, _D.next_attempt_at <= now)
                .order_by(_D.next_attempt_at, _D.id)
                .limit(limit)
            )
            return [_delivery(r) for r in rows]

    async def claim(self, delivery: DeliveryRecord, until: dt.datetime) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                webhook_deliveries.update()
                .where(
                    _D.id == delivery.id,
                    _D.status == DeliveryStatus.PENDING,
                    _D.next_attempt_at == delivery.next_attempt_at,
                )
                .values(next_attempt_at=until)
            )
        return bool(result.rowcount == 1)

    async def record_attempt(self, delivery_id: str, attempt: Attempt) -> None:
        values: dict[str, Any] = {
            "attempts": _D.attempts + 1,
            "status": attempt.status.value,
            "last_attempt_at": attempt.at,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error[:200] if attempt.error else None,
            "next_attempt_at": attempt.next_attempt_at,
        }
        if attempt.status is DeliveryStatus.DELIVERED:
            values["delivered_at"] = attempt.at
        async with self._engine.begin() as conn:
            await conn.execute(
                webhook_deliveries.update()
                .where(_D.id == delivery_id, _D.status == DeliveryStatus.PENDING)
                .values(**values)
            )

    async def redeliver(self, delivery_id: str, now: dt.datetime, give_up_at: dt.datetime) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                webhook_deliveries.update()
                .where(_D.id == delivery_id)
                .values(
                    status=DeliveryStatus.PENDING.value,
                    next_attempt_at=now,
                    give_up_at=give_up_at,
                    delivered_at=None,
                )
            )
        return bool(result.rowcount == 1)

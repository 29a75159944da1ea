"""The long-poll: read a mailbox or an inbox, and when it is empty wait (up to `wait`
seconds) for mail to arrive, then read it again. The waiting is the store's
(`Store.wait_for_mail`: woken by a delivery in this process, or found by a short check when
another process delivered; docs/decisions/0012)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from attest_gateway.ports.store import Store

MAX_WAIT_SECONDS: Final = 30

T = TypeVar("T")


async def long_poll(
    store: Store,
    org_id: str,
    *,
    replies: bool,
    wait: float,
    read: Callable[[], Awaitable[T]],
    empty: Callable[[T], bool],
) -> T:
    """`read()`'s answer; when it is `empty` and `wait` > 0, the answer of a second read once
    mail arrived, or the empty one when none arrived in time (or the gateway could not wait:
    too many waiting, shutting down)."""
    result = await read()
    if wait <= 0 or not empty(result):
        return result
    if await store.wait_for_mail(org_id, replies=replies, seconds=wait):
        return await read()
    return result

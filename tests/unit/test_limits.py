"""The limits of one client (core/limits.py) on a hand-stepped clock, the client address
behind trusted proxies (X-Forwarded-For) and the PROXY protocol header parser."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from fastapi import Request
from fastapi.routing import APIRoute

from attest_gateway.core.errors import ErrorCode, RateLimited
from attest_gateway.core.limits import (
    MAX_REMEMBERED_CREDENTIALS,
    AuthLockout,
    EndpointClass,
    Limit,
    RequestLimits,
    read_cost,
)
from attest_gateway.entrypoints.http.auth import asked_items, default_items, endpoint_class
from attest_gateway.entrypoints.http.middleware import forwarded_client
from attest_gateway.entrypoints.http.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_v1,
    parse_v2,
)
from attest_gateway.entrypoints.http.routes.medcom import router as medcom_router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


READS = EndpointClass.READS
WRITES = EndpointClass.WRITES


def test_the_rate_allows_a_burst_then_one_per_interval_per_organisation() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(2.0, 5.0, at_once=0)}, monotonic=clock)
    for _ in range(10):  # the burst: 2 a second for 5 seconds
        with limits.admit("a", READS):
            pass
    with pytest.raises(RateLimited) as over, limits.admit("a", READS):
        pass
    assert over.value.code is ErrorCode.RATE_LIMITED
    assert over.value.retry_after == 1  # half a second to the next token, rounded up
    with limits.admit("b", READS):  # another organisation has its own bucket
        pass
    with limits.admit("a", EndpointClass.WRITES):  # a class without limits
        pass
    clock.now += 0.5
    with limits.admit("a", READS):
        pass
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass


def test_requests_at_once_are_capped_and_released() -> None:
    limits = RequestLimits({READS: Limit(0, 1, at_once=2)}, monotonic=Clock())
    with limits.admit("a", READS), limits.admit("a", READS):
        with pytest.raises(RateLimited) as busy, limits.admit("a", READS):
            pass
        assert busy.value.code is ErrorCode.TOO_MANY_CONCURRENT_REQUESTS
        with limits.admit("b", READS):
            pass
    assert limits.in_progress("a", READS) == 0
    with pytest.raises(ValueError, match="boom"), limits.admit("a", READS):  # released on error
        raise ValueError("boom")
    assert limits.in_progress("a", READS) == 0


@pytest.mark.parametrize(
    ("items", "per_token", "cost"),
    [(0, 1, 1), (1, 1, 1), (200, 1, 200), (0, 10, 1), (10, 10, 1), (11, 10, 2), (500, 0, 1)],
)
def test_a_read_costs_one_token_per_items_begun_and_at_least_one(
    items: int, per_token: int, cost: int
) -> None:
    assert read_cost(items, per_token) == cost


def test_a_read_handing_out_many_items_is_charged_them_and_the_debt_is_waited_out() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(10.0, 10.0, at_once=0, items_per_token=1)}, clock)
    with limits.admit("a", READS) as admission:  # the bucket: 100; admitted on one token
        admission.handed_out(250)  # 249 more: 150 below zero
        admission.handed_out(250)  # charged once, whatever the handler says twice
        assert admission.charged == 250
    with pytest.raises(RateLimited) as over, limits.admit("a", READS):
        pass
    assert over.value.code is ErrorCode.RATE_LIMITED
    assert over.value.retry_after == 16  # 151 tokens at 10 a second: 15.1 s, rounded up
    with limits.admit("b", READS):  # another organisation's bucket is its own
        pass
    clock.now += 15.0
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass
    clock.now += 0.15  # the debt paid and a token and a half saved: served again
    with limits.admit("a", READS) as admission:
        admission.handed_out(0)  # an empty read costs the one token it was admitted on
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass


def test_a_read_is_charged_what_it_asked_for_until_it_is_settled() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(10.0, 50.0, at_once=0, items_per_token=1)}, clock)
    with limits.admit("a", READS, asked=300) as first:  # the bucket: 500 - 300 = 200
        assert first.charged == 300
        with limits.admit("a", READS, asked=300) as second:  # a token left: -100
            with pytest.raises(RateLimited) as over, limits.admit("a", READS, asked=300):
                pass  # two large reads under way: the third waits for what they cost
            assert over.value.retry_after == 11  # 101 tokens at 10 a second
            second.handed_out(0)  # nothing waited: 299 given back (199)
        first.handed_out(150)  # 150 given back (349)
    with limits.admit("a", READS, asked=300) as third:  # 49 left
        pass  # not settled (an error): one token, the rest given back (348)
    assert third.charged == 1
    for _ in range(348):
        with limits.admit("a", READS):
            pass
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass


def test_a_refund_never_fills_the_bucket_beyond_its_size() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(1.0, 5.0, at_once=0, items_per_token=1)}, clock)
    with limits.admit("a", READS, asked=500) as read:  # 5 - 500
        clock.now += 1000  # refilled to 5 while it ran
        read.handed_out(0)  # 499 given back: still 5
    for _ in range(5):
        with limits.admit("a", READS):
            pass
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass


def test_items_are_not_counted_when_switched_off() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(1.0, 2.0, at_once=0, items_per_token=0)}, clock)
    for _ in range(2):
        with limits.admit("a", READS) as admission:
            admission.handed_out(500)
    with pytest.raises(RateLimited), limits.admit("a", READS):
        pass


def test_a_remembered_credential_over_its_limit_is_refused_early_and_takes_nothing() -> None:
    clock = Clock()
    limits = RequestLimits({READS: Limit(1.0, 2.0, at_once=1, items_per_token=1)}, clock)
    limits.refuse_early("key:unknown", READS)  # not remembered: passes, to be looked up
    limits.remember("key:a", "a")
    limits.refuse_early("key:a", READS)  # a full bucket
    with limits.admit("a", READS):
        with pytest.raises(RateLimited) as busy:
            limits.refuse_early("key:a", READS)  # its one place is taken
        assert busy.value.code is ErrorCode.TOO_MANY_CONCURRENT_REQUESTS
        limits.refuse_early("key:b", READS)
    with limits.admit("a", READS) as admission:
        admission.handed_out(3)  # the bucket held 1 (the first read took one): -2
    for _ in range(5):  # refusing early takes no token: the wait does not grow
        with pytest.raises(RateLimited) as empty:
            limits.refuse_early("key:a", READS)
        assert empty.value.code is ErrorCode.RATE_LIMITED
        assert empty.value.retry_after == 3
    limits.refuse_early("key:a", EndpointClass.WRITES)  # a class without limits
    limits.forget("key:a")  # refused since: it is looked up again
    limits.refuse_early("key:a", READS)


def test_remembered_credentials_are_bounded_oldest_first() -> None:
    limits = RequestLimits({READS: Limit(1.0, 1.0, at_once=1)}, Clock())
    limits.remember("key:first", "a")
    for i in range(MAX_REMEMBERED_CREDENTIALS):
        limits.remember(f"key:{i}", "b")
    with limits.admit("a", READS), limits.admit("b", READS):
        limits.refuse_early("key:first", READS)  # forgotten: passes
        with pytest.raises(RateLimited):
            limits.refuse_early("key:0", READS)


def test_an_organisations_requests_of_all_classes_at_once_are_capped() -> None:
    limit = Limit(0, 1, at_once=2)
    limits = RequestLimits({READS: limit, WRITES: limit}, Clock(), org_at_once=3)
    limits.remember("key:a", "a")
    with limits.admit("a", READS), limits.admit("a", READS), limits.admit("a", WRITES):
        assert limits.in_progress("a") == 3
        for endpoint in (READS, WRITES):
            with pytest.raises(RateLimited) as busy, limits.admit("a", endpoint):
                pass
            assert busy.value.code is ErrorCode.TOO_MANY_CONCURRENT_REQUESTS
            with pytest.raises(RateLimited):
                limits.refuse_early("key:a", endpoint)
        with limits.admit("b", WRITES):  # another organisation's share is its own
            pass
    assert limits.in_progress("a") == 0
    with limits.admit("a", WRITES):
        pass


def _query(text: str) -> Request:
    return Request({"type": "http", "query_string": text.encode(), "headers": []})


@pytest.mark.parametrize(
    ("query", "asked"),
    [("limit=200", 200), ("", 100), ("limit=0", 1), ("limit=99999", 500), ("limit=x", 100)],
)
def test_a_read_asks_for_its_limit_within_the_routes_bounds(query: str, asked: int) -> None:
    assert asked_items(_query(query), 100) == asked
    assert asked_items(_query(query), None) == 0  # a route without a limit


def test_the_routes_that_hand_out_items_are_those_with_a_limit() -> None:
    routes = {r.path: r for r in medcom_router.routes if isinstance(r, APIRoute)}
    assert default_items(routes["/medcom/v1/mailbox"]) == 100
    assert default_items(routes["/medcom/v1/mailbox/{message_id}/collected"]) is None


def test_failed_authentications_lock_out_one_address_for_a_while() -> None:
    clock = Clock()
    lockout = AuthLockout(failures=3, window=60, lockout=300, monotonic=clock)
    for _ in range(2):
        lockout.failed("192.0.2.1")
    lockout.check("192.0.2.1")  # two: not yet
    clock.now += 61
    lockout.failed("192.0.2.1")  # the first two are out of the window
    lockout.check("192.0.2.1")
    lockout.failed("192.0.2.1")
    lockout.failed("192.0.2.1")
    with pytest.raises(RateLimited) as locked:
        lockout.check("192.0.2.1")
    assert locked.value.code is ErrorCode.AUTHENTICATION_LOCKED_OUT
    assert locked.value.retry_after == 300
    lockout.check("192.0.2.2")
    clock.now += 300
    lockout.check("192.0.2.1")  # served again


def test_no_lockout_when_switched_off() -> None:
    lockout = AuthLockout(failures=0, window=60, lockout=300, monotonic=Clock())
    for _ in range(100):
        lockout.failed("192.0.2.1")
    lockout.check("192.0.2.1")


@pytest.mark.parametrize(
    ("path", "methods", "expected"),
    [
        ("/medcom/v1/mailbox", {"GET"}, EndpointClass.READS),
        ("/jobcenter/v1/attest-requests", {"POST"}, EndpointClass.WRITES),
        ("/webhooks/v1/endpoints/{endpoint_id}", {"DELETE"}, EndpointClass.WRITES),
        ("/ministry/v1/report", {"GET"}, EndpointClass.REPORTS),
    ],
)
def test_endpoint_classes(path: str, methods: set[str], expected: EndpointClass) -> None:
    assert endpoint_class(path, methods) is expected


PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ("203.0.113.66", "203.0.113.66"),
        ("203.0.113.66, 10.0.0.7", "203.0.113.66"),  # through two proxies
        ("6.6.6.6, 203.0.113.66", "203.0.113.66"),  # the client's own claim is not believed
        ("[2001:db8::1]", "2001:db8::1"),
        ("x" * 300, None),
        ("203.0.113.66, not-an-address, 10.0.0.7", "10.0.0.7"),
        ("", None),
    ],
)
def test_the_forwarded_client_is_the_first_untrusted_address_from_the_right(
    header: str, client: str | None
) -> None:
    assert forwarded_client(header, PROXIES) == client


def test_proxy_v1_lines() -> None:
    line = b"PROXY TCP4 203.0.113.66 10.0.0.2 40000 8443\r\n"
    assert parse_v1(line) == ProxyHeader(("203.0.113.66", 40000))
    six = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n"
    assert parse_v1(six) == ProxyHeader(("2001:db8::1", 40000))
    assert parse_v1(b"PROXY UNKNOWN\r\n") == ProxyHeader(None)
    for bad in (
        b"PROXY TCP4 203.0.113.66 10.0.0.2 40000\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.2 40000 8443\r\n",
        b"PROXY TCP4 203.0.113.66 10.0.0.2 99999 8443\r\n",
        b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
        b"GET / HTTP/1.1\r\n",
    ):
        with pytest.raises(ProxyHeaderError):
            parse_v1(bad)


def _v2(command: int, family: int, payload: bytes) -> bytes:
    return (
        V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload
    )


def test_proxy_v2_headers() -> None:
    four = bytes([203, 0, 113, 66, 10, 0, 0, 2]) + struct.pack("!HH", 40000, 8443)
    assert parse_v2(_v2(1, 0x11, four)) == ProxyHeader(("203.0.113.66", 40000))
    tlv = b"\x04\x00\x01x"  # a TLV after the addresses is skipped
    assert parse_v2(_v2(1, 0x11, four + tlv)) == ProxyHeader(("203.0.113.66", 40000))
    six = ipaddress.IPv6Address("2001:db8::1").packed + bytes(16) + struct.pack("!HH", 1, 2)
    assert parse_v2(_v2(1, 0x21, six)) == ProxyHeader(("2001:db8::1", 1))
    assert parse_v2(_v2(0, 0x00, b"")) == ProxyHeader(None)  # LOCAL: a health check
    for bad in (
        _v2(1, 0x11, four[:6]),  # cut short
        _v2(2, 0x11, four),  # an unknown command
        _v2(1, 0x11, four)[:-1],  # shorter than its stated length
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(4),
    ):
        with pytest.raises(ProxyHeaderError):
            parse_v2(bad)

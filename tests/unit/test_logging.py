"""CPR redaction in log output, for structlog and standard-library loggers alike."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
import sqlalchemy as sa
import structlog
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine

from attest_gateway.entrypoints.http.middleware import RequestLogMiddleware
from attest_gateway.observability.logging import redact_cpr
from tests.support.leaks import json_logs

CPR = "0101901234"
CPR_DASHED = "010190-1234"
MASK = "******-****"
GLN = "5790001348120"
PHONE = "12345678"
_CPR_SHAPE = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")
_UUID_SHAPE = re.compile(
    r"(?<![0-9a-fA-F])[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}(?![0-9a-fA-F])"
)
# A conversation id whose first dash sits between six and four digits, as one in ~300 do.
CPR_SHAPED_UUID = "8f673264-9048-40f2-b9d8-d4f439e42025"


def _redact(event_dict: dict[str, Any]) -> dict[str, Any]:
    return dict(redact_cpr(None, "info", event_dict))


# --- the processor ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CPR, MASK),
        (CPR_DASHED, MASK),
        (f"citizen {CPR} asked", f"citizen {MASK} asked"),
        (f"{CPR_DASHED},{CPR}", f"{MASK},{MASK}"),
        (f"cpr={CPR}.", f"cpr={MASK}."),
        (f"abc{CPR}xyz", f"abc{MASK}xyz"),
        (f"{CPR_SHAPED_UUID} {CPR}", f"{CPR_SHAPED_UUID} {MASK}"),
        (f"{CPR_DASHED}-40f2-b9d8-d4f439e42025", f"{MASK}-40f2-b9d8-d4f439e42025"),
        (f"a{CPR_SHAPED_UUID}", f"a8f{MASK}-40f2-b9d8-d4f439e42025"),  # not a whole UUID
    ],
)
def test_masks_cpr_shaped_strings(text: str, expected: str) -> None:
    assert _redact({"event": text}) == {"event": expected}


@pytest.mark.parametrize(
    "text",
    [
        GLN,
        f"gln {GLN}",
        PHONE,
        f"tlf. +45 {PHONE}",
        "715381000016006",  # SOR code, 15 digits
        "01019012345",  # 11 digits
        "123456789",  # 9 digits
        "0101901-234",  # dash in the wrong place
        "2026-01-31T09:30:00.123456Z",
        "6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11",
        CPR_SHAPED_UUID,
        f"conversation {CPR_SHAPED_UUID.upper()}.",
        "LÆ 265",
    ],
)
def test_leaves_other_numbers_alone(text: str) -> None:
    assert _redact({"event": text, "n": 5790001348120}) == {"event": text, "n": 5790001348120}


def test_masks_nested_dicts_lists_and_tuples() -> None:
    body: dict[str, Any] = {
        "citizen_cpr": CPR_DASHED,
        "jobcenter_gln": GLN,
        "phones": [PHONE, f"{CPR} / {PHONE}"],
        "deep": {"list": [{"cpr": CPR}], "pair": (CPR, 7)},
    }
    event: dict[str, Any] = {"event": "request.received", "body": body, "count": 3, "flag": None}
    assert _redact(event) == {
        "event": "request.received",
        "body": {
            "citizen_cpr": MASK,
            "jobcenter_gln": GLN,
            "phones": [PHONE, f"{MASK} / {PHONE}"],
            "deep": {"list": [{"cpr": MASK}], "pair": (MASK, 7)},
        },
        "count": 3,
        "flag": None,
    }
    assert body["citizen_cpr"] == CPR_DASHED  # the input is not modified in place


_TEXT = st.text(alphabet=st.sampled_from("0123456789-- ax/"), max_size=60)
_UUID_TEXT = st.lists(st.one_of(_TEXT, st.uuids().map(str)), min_size=1, max_size=4).map(" ".join)


@settings(max_examples=300)
@given(text=st.one_of(_TEXT, _UUID_TEXT))
def test_no_cpr_shape_survives_outside_uuids(text: str) -> None:
    out = _redact({"event": text, "nested": [{"v": text}]})
    assert _CPR_SHAPE.search(_UUID_SHAPE.sub(" ", out["event"])) is None
    kept = [m.group() for m in _UUID_SHAPE.finditer(out["event"])]
    assert kept == [m.group() for m in _UUID_SHAPE.finditer(text)]
    assert out["nested"] == [{"v": out["event"]}]
    if _CPR_SHAPE.search(text) is None:
        assert out["event"] == text


@settings(max_examples=200)
@given(
    runs=st.lists(
        st.integers(min_value=1, max_value=20).filter(lambda n: n != 10), min_size=1, max_size=5
    ),
    data=st.data(),
)
def test_digit_runs_of_other_lengths_are_kept(runs: list[int], data: st.DataObject) -> None:
    words = [data.draw(st.text(alphabet="0123456789", min_size=n, max_size=n)) for n in runs]
    text = " ".join(words)
    assert _redact({"event": text}) == {"event": text}


class _Person(NamedTuple):
    cpr: str
    name: str


def test_masks_namedtuples() -> None:
    out = _redact({"who": _Person(CPR, "Jens")})
    assert CPR not in repr(out)


# --- configured output ------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """configure_logging(fmt="json") writing into a buffer; all logging state restored after."""
    with json_logs(level="INFO") as buffer:
        yield buffer


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert CPR not in text
    assert CPR_DASHED not in text
    # A random UUID (a correlation id the gateway made) holds ten digits in a row about once
    # in a hundred; the redaction leaves UUIDs whole, so the check looks outside them.
    assert _CPR_SHAPE.search(_UUID_SHAPE.sub(" ", text)) is None
    lines = text.splitlines()
    assert lines
    return [json.loads(line) for line in lines]


def test_configure_logging_installs_one_root_handler(json_log: io.StringIO) -> None:
    root = logging.getLogger()
    ours = [
        h for h in root.handlers if isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    assert len(ours) == 1  # pytest adds its own capture handlers for the test's call phase
    assert isinstance(ours[0], logging.StreamHandler)
    assert ours[0].stream is json_log
    assert root.level == logging.INFO
    assert logging.getLogger("uvicorn.access").propagate is True
    assert logging.getLogger("uvicorn.access").level == logging.WARNING
    assert logging.getLogger("aiokafka").level == logging.WARNING


def test_structlog_output_is_json_without_cpr(json_log: io.StringIO) -> None:
    log = structlog.get_logger("attest.test")
    log.info(
        f"request for {CPR}",
        cpr=CPR_DASHED,
        gln=GLN,
        phone=PHONE,
        body={"citizen_cpr": CPR, "ids": [CPR_DASHED, GLN]},
    )
    log.debug("not shown at INFO", cpr=CPR)
    (line,) = _lines(json_log)
    assert line["event"] == f"request for {MASK}"
    assert line["cpr"] == MASK
    assert line["gln"] == GLN
    assert line["phone"] == PHONE
    assert line["body"] == {"citizen_cpr": MASK, "ids": [MASK, GLN]}
    assert line["level"] == "info"
    assert line["logger"] == "attest.test"
    assert line["timestamp"].endswith("Z")


def test_stdlib_output_is_json_without_cpr(json_log: io.StringIO) -> None:
    std = logging.getLogger("attest.stdlib")
    std.warning("citizen %s has gln %s", CPR_DASHED, GLN, extra={"who": CPR})
    std.info("plain %s", PHONE)
    first, second = _lines(json_log)
    assert first["event"] == f"citizen {MASK} has gln {GLN}"
    assert first["who"] == MASK
    assert first["level"] == "warning"
    assert first["logger"] == "attest.stdlib"
    assert second["event"] == f"plain {PHONE}"


def test_exception_tracebacks_are_masked(json_log: io.StringIO) -> None:
    log = structlog.get_logger("attest.test")
    std = logging.getLogger("attest.stdlib")
    try:
        raise ValueError(f"bad cpr {CPR}")
    except ValueError:
        log.exception("structlog.failed")
        std.exception("stdlib.failed")
    lines = _lines(json_log)
    assert [line["event"] for line in lines] == ["structlog.failed", "stdlib.failed"]
    for line in lines:
        assert line["level"] == "error"
        assert "ValueError: bad cpr ******-****" in line["exception"]


def test_non_string_values_are_masked(json_log: io.StringIO) -> None:
    structlog.get_logger("attest.test").warning("failed", error=ValueError(f"bad {CPR}"))
    (line,) = _lines(json_log)
    assert line["error"]


def test_calls_below_the_level_are_dropped_before_the_processors() -> None:
    """`filter_by_level` comes first, so a debug call at INFO costs one level check; at DEBUG
    the same call is written."""
    with json_logs(level="DEBUG") as buffer:
        assert structlog.get_config()["processors"][0] is structlog.stdlib.filter_by_level
        structlog.get_logger("attest.test").debug("tracker.applied", stage="fetched")
    (line,) = _lines(buffer)
    assert (line["event"], line["level"], line["stage"]) == ("tracker.applied", "debug", "fetched")


# --- database errors ----------------------------------------------------------------------------

PARAM = "sag-param-marker-7c1e"  # a statement parameter: a caseworker_ref, a case ref …


async def _database_error() -> sa.exc.DBAPIError:
    """A real constraint violation, from an engine made without `hide_parameters` (as any
    engine not made by store.db would be): its text holds the parameter."""
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE probe (ref TEXT PRIMARY KEY)"))
            insert = sa.text("INSERT INTO probe VALUES (:ref)")
            await conn.execute(insert, {"ref": f"{PARAM} {CPR}"})
            with pytest.raises(sa.exc.DBAPIError) as caught:
                await conn.execute(insert, {"ref": f"{PARAM} {CPR}"})
    finally:
        await engine.dispose()
    assert PARAM in str(caught.value)
    return caught.value


async def test_database_errors_are_logged_without_their_text(json_log: io.StringIO) -> None:
    error = await _database_error()
    log = structlog.get_logger("attest.test")
    std = logging.getLogger("attest.stdlib")
    try:
        raise error
    except sa.exc.DBAPIError:
        log.exception("http.unhandled_error")
        std.exception("Exception in ASGI application")  # uvicorn's way
    try:
        try:
            raise error
        except sa.exc.DBAPIError as exc:
            raise RuntimeError("database-unavailable: IntegrityError") from exc
    except RuntimeError:
        log.exception("consumer.handler_crashed")
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_raise(error))
    except ExceptionGroup:
        log.exception("gateway.stop_failed")
    log.warning("consumer.batch_failed", error=error)

    text = json_log.getvalue()
    assert PARAM not in text
    crashed, asgi, wrapped, group, batch = _lines(json_log)
    for line in (crashed, asgi, wrapped, group):
        assert "Traceback (most recent call last)" in line["exception"]
        assert (
            "IntegrityError (from sqlite3.IntegrityError, SQLite SQLITE_CONSTRAINT"
            in (line["exception"])
        )
        assert "[SQL: INSERT INTO probe VALUES (?)]" in line["exception"]
    assert "RuntimeError: database-unavailable: IntegrityError" in wrapped["exception"]
    assert "direct cause" in wrapped["exception"]
    assert "ExceptionGroup: unhandled errors in a TaskGroup" in group["exception"]
    assert batch["error"].startswith("sqlalchemy.exc.IntegrityError (")
    assert batch["error"].endswith("the database's message and parameters are not logged")


async def _raise(error: BaseException) -> None:
    raise error


# --- the correlation id -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),  # W3C traceparent
        ("case-42:retry.1_A", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("a" * 70_000, False),  # a 70 KB header was copied into every log line
        ("two words", False),
        ("tab\there", False),
        ("line\nbreak", False),
        ("é", False),
        ("", False),
    ],
)
async def test_only_a_sane_correlation_id_is_kept(
    json_log: io.StringIO, given: str, kept: bool
) -> None:
    app = FastAPI()
    app.add_middleware(RequestLogMiddleware)

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        structlog.get_logger("attest.test").info("ping.handled")
        return {}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        request = client.build_request("GET", "/ping")
        request.headers["X-Correlation-Id"] = given  # raw, as a client may send it
        response = await client.send(request)
    assert response.status_code == 200
    answered = response.headers["X-Correlation-Id"]
    handled, logged = _lines(json_log)[:2]
    assert handled["correlation_id"] == logged["correlation_id"] == answered
    if kept:
        assert answered == given
    else:
        assert str(uuid.UUID(answered)) == answered
        assert not given or given not in json_log.getvalue()

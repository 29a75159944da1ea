"""Bad input gets RFC 9457 problem+json with a stable code, and nothing is stored or published."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from attest_gateway.contracts.envelope import CONTENT_TYPE as ENVELOPE_TYPE
from attest_gateway.contracts.envelope import EnvelopeHeader
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.clock import SystemClock
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import seal
from attest_gateway.infra.db import audit, tables
from attest_gateway.medcom.build import build_acknowledgement
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import new_request, post, reply_to, sealed_for_gateway
from tests.support.harness import CPR, attest_request_body

JC, PSY = "jc-koebenhavn", "psyk-kbh"
URL = "/jobcenter/v1/attest-requests"


async def counts(h: Harness) -> dict[str, int]:
    """Rows that only an accepted request writes (the relay adds others in the background)."""
    queries = {
        "conversations": sa.select(sa.func.count()).select_from(tables.conversations),
        "idempotency_keys": sa.select(sa.func.count()).select_from(tables.idempotency_keys),
        "outbox_messages": sa.select(sa.func.count())
        .select_from(tables.outbox)
        .where(tables.outbox.c.topic == h.gw.topics.medcom_messages),
        "submitted": sa.select(sa.func.count())
        .select_from(tables.stages)
        .where(tables.stages.c.stage == "submitted"),
    }
    async with h.gw.engine.connect() as conn:
        return {name: (await conn.execute(q)).scalar_one() for name, q in queries.items()}


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith("/" + code)
    assert problem["title"]
    assert problem["detail"]
    assert CPR not in response.text  # never echo the citizen's number
    return problem


# More than a year ahead of any clock the gateway may have while the tests run.
AHEAD = (dt.date.today() + dt.timedelta(days=400)).isoformat()


def valid(h: Harness, **overrides: Any) -> dict[str, Any]:
    return attest_request_body(**{"jobcenter_gln": h.gln(JC), **overrides})


CASES: list[tuple[str, Any, int, str]] = [
    ("unknown attest type", {"attest_type": "LÆ 999"}, 422, "unknown-attest-type"),
    ("CPR not a date", {"citizen_cpr": "3102901234"}, 422, "invalid-cpr"),
    ("CPR too short", {"citizen_cpr": "010190123"}, 422, "invalid-cpr"),
    ("GLN check digit", {"jobcenter_gln": "5790001010011"}, 422, "invalid-gln"),
    ("unknown receiver", {"receiver": {"sor": "999999999999999"}}, 422, "unknown-receiver"),
    ("unknown ydernummer", {"receiver": {"ydernummer": "099999"}}, 422, "unknown-receiver"),
    ("receiver is a job centre", {"receiver": {"sor": "751181000016005"}}, 422, "unknown-receiver"),
    (
        "GP cannot issue LÆ 155",
        {"receiver": {"ydernummer": "012345"}},
        422,
        "receiver-cannot-issue",
    ),
    ("bad case kind", {"case_kind": "kontanthjaelp"}, 422, "invalid-request"),
    ("unknown field", {"extra": 1}, 422, "invalid-request"),
    ("deadline in the past", {"reply_deadline": "2020-01-01"}, 422, "invalid-reply-deadline"),
    ("deadline years ahead", {"reply_deadline": AHEAD}, 422, "invalid-reply-deadline"),
    ("deadline 9999-12-31", {"reply_deadline": "9999-12-31"}, 422, "date-out-of-range"),
    ("absence 9999-12-31", {"first_day_of_absence": "9999-12-31"}, 422, "date-out-of-range"),
    ("absence 0001-01-01", {"first_day_of_absence": "0001-01-01"}, 422, "date-out-of-range"),
    ("absence 1999-12-31", {"first_day_of_absence": "1999-12-31"}, 422, "date-out-of-range"),
    ("absence years ahead", {"first_day_of_absence": AHEAD}, 422, "invalid-first-day-of-absence"),
    ("absence as a number", {"first_day_of_absence": 1_767_225_600}, 422, "invalid-request"),
    (
        "absence with a time",
        {"first_day_of_absence": "2026-01-05T00:00:00"},
        422,
        "invalid-request",
    ),
    ("CPR in caseworker_ref", {"caseworker_ref": "sag-0101901234"}, 422, "cpr-in-reference"),
    ("CPR with dash in ref", {"caseworker_ref": "borger 010190-1234"}, 422, "cpr-in-reference"),
    ("CPR glued to letters", {"caseworker_ref": "sag0101901234"}, 422, "cpr-in-reference"),
    ("CPR alone as ref", {"caseworker_ref": "1502857777"}, 422, "cpr-in-reference"),
    ("NUL in caseworker_ref", {"caseworker_ref": "sag-\x00-1"}, 422, "control-character"),
    ("line feed in caseworker_ref", {"caseworker_ref": "sag-1\n"}, 422, "control-character"),
    ("DEL in caseworker_ref", {"caseworker_ref": "sag-\x7f"}, 422, "control-character"),
    ("NUL in attest type", {"attest_type": "LÆ 155\x00"}, 422, "control-character"),
    ("NUL in questions", {"questions": "Hvad?\x00"}, 422, "control-character"),
    ("escape in questions", {"questions": "Hvad?\x1b[2J"}, 422, "control-character"),
    ("other job centre's GLN", {"municipality": "751"}, 403, "jobcenter-mismatch"),
    ("no citizen name", {"citizen_name": None}, 422, "invalid-request"),
    ("empty family name", {"citizen_name": {"given": [], "family": ""}}, 422, "invalid-request"),
    (
        "NUL in a given name",
        {"citizen_name": {"given": ["An\x00ne"], "family": "Jensen"}},
        422,
        "control-character",
    ),
    ("no caseworker", {"caseworker": None}, 422, "invalid-request"),
    (
        "caseworker without phone",
        {"caseworker": {"given": ["Lars"], "family": "Nielsen"}},
        422,
        "invalid-request",
    ),
    (
        "caseworker phone with words",
        {"caseworker": {"given": [], "family": "Nielsen", "phone": "ring til Lars"}},
        422,
        "invalid-request",
    ),
    (
        "caseworker e-mail without @",
        {"caseworker": {"given": [], "family": "Nielsen", "phone": "87131313", "email": "x"}},
        422,
        "invalid-request",
    ),
]


@pytest.mark.parametrize(("case", "overrides", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_invalid_request_changes_nothing(
    harness: Harness, case: str, overrides: dict[str, Any], status: int, code: str
) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL, json=valid(harness, **overrides), headers=harness.auth(JC)
    )
    assert_problem(response, status, code)
    assert await counts(harness) == before


async def test_malformed_json(harness: Harness) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL,
        content=b'{"municipality": "101",',
        headers={**harness.auth(JC), "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "malformed-json")
    assert await counts(harness) == before


MALFORMED = [b'{"municipality": "101",', b'{"municipality": "\xff\xfe"}']
BODY_URLS = [URL, "/jobcenter/v1/contacts"]


@pytest.mark.parametrize("body", MALFORMED, ids=["truncated", "not UTF-8"])
@pytest.mark.parametrize("url", BODY_URLS)
@pytest.mark.parametrize(
    "auth",
    [{}, {"Authorization": "Bearer agw_nobody_123"}],
    ids=["no key", "wrong key"],
)
async def test_malformed_body_of_an_unknown_caller_is_unauthenticated(
    harness: Harness, url: str, body: bytes, auth: dict[str, str]
) -> None:
    """Authentication comes before the body is read: a caller that is not known learns
    nothing about how its body was parsed."""
    before = await counts(harness)
    response = await harness.client.post(
        url, content=body, headers={**auth, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 401, "unauthenticated")
    assert "errors" not in problem
    assert "json" not in response.text.lower()
    assert await counts(harness) == before


@pytest.mark.parametrize("body", MALFORMED, ids=["truncated", "not UTF-8"])
async def test_malformed_body_of_another_role_is_forbidden(harness: Harness, body: bytes) -> None:
    response = await harness.client.post(
        URL, content=body, headers={**harness.auth("psyk-kbh"), "Content-Type": "application/json"}
    )
    assert_problem(response, 403, "forbidden")


async def test_body_that_is_not_utf8_is_malformed_json(harness: Harness) -> None:
    before = await counts(harness)
    response = await harness.client.post(
        URL, content=MALFORMED[1], headers={**harness.auth(JC), "Content-Type": "application/json"}
    )
    assert_problem(response, 400, "malformed-json")
    assert response.json()["title"] == "Bad request"
    assert await counts(harness) == before


FRAMEWORK_ERRORS = [
    ("DELETE", "/jobcenter/v1/inbox", "GET"),
    ("PUT", URL, "GET, POST"),  # two routes on one path: both methods
    ("PUT", "/webhooks/v1/endpoints", "GET, POST"),
    ("GET", "/jobcenter/v1/cases/close", "POST"),  # not /cases/{case_id}'s PATCH
    ("GET", "/medcom/v1/messages", "POST"),
    ("TRACE", "/audit/v1/entries", "GET"),
    ("POST", "/ministry/v1/report", "GET"),
    ("PATCH", "/healthz", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allow"), FRAMEWORK_ERRORS)
@pytest.mark.parametrize("authenticated", [True, False], ids=["with key", "without key"])
async def test_method_not_allowed_is_a_problem_with_allow(
    harness: Harness, method: str, path: str, allow: str, authenticated: bool
) -> None:
    """RFC 9110: a 405 names the methods the resource takes in `Allow`."""
    headers = harness.auth(JC) if authenticated else {}
    response = await harness.client.request(method, path, headers=headers)
    problem = assert_problem(response, 405, "method-not-allowed")
    assert problem["title"] == "Method not allowed"
    assert response.headers["allow"] == allow


async def test_body_over_the_limit(harness: Harness) -> None:
    before = await counts(harness)
    big = valid(harness, questions="x" * (harness.settings.max_body_bytes + 10))
    response = await harness.client.post(URL, json=big, headers=harness.auth(JC))
    assert_problem(response, 413, "payload-too-large")
    assert await counts(harness) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer agw_nobody_123"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["missing", "wrong key", "wrong scheme"],
)
async def test_missing_or_wrong_api_key(harness: Harness, headers: dict[str, str]) -> None:
    before = await counts(harness)
    response = await harness.client.post(URL, json=valid(harness), headers=headers)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    assert await counts(harness) == before


async def test_wrong_role(harness: Harness) -> None:
    response = await harness.client.post(URL, json=valid(harness), headers=harness.auth("psyk-kbh"))
    assert_problem(response, 403, "forbidden")
    response = await harness.client.get("/medcom/v1/mailbox", headers=harness.auth(JC))
    assert_problem(response, 403, "forbidden")


async def test_other_job_centres_conversation_is_not_found(harness: Harness) -> None:
    response = await harness.client.post(URL, json=valid(harness), headers=harness.auth(JC))
    assert response.status_code == 202
    cid = response.json()["conversation_id"]
    other = await harness.client.get(f"{URL}/{cid}", headers=harness.auth("jc-aarhus"))
    missing = await harness.client.get(f"{URL}/no-such-id", headers=harness.auth("jc-aarhus"))
    assert_problem(other, 404, "not-found")
    assert_problem(missing, 404, "not-found")
    assert other.json()["detail"] == missing.json()["detail"]


async def test_unknown_route_is_problem_json(harness: Harness) -> None:
    problem = assert_problem(await harness.client.get("/nowhere"), 404, "not-found")
    assert problem["title"] == "Not found"


async def test_idempotency_key(harness: Harness) -> None:
    h = harness
    key = {"Idempotency-Key": "retry-7f3a"}
    first = await h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key})
    assert first.status_code == 202
    before = await counts(h)
    again = await h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key})
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await counts(h) == before
    changed = await h.client.post(
        URL, json=valid(h, questions="Andre spørgsmål"), headers={**h.auth(JC), **key}
    )
    assert_problem(changed, 409, "idempotency-key-reused")
    assert await counts(h) == before
    # The same key from another organisation is a different request.
    other = await h.client.post(
        URL,
        json=attest_request_body(jobcenter_gln=h.gln("jc-aarhus"), municipality="751"),
        headers={**h.auth("jc-aarhus"), **key},
    )
    assert other.status_code == 202
    assert other.json()["conversation_id"] != first.json()["conversation_id"]


async def test_one_idempotency_key_at_the_same_moment_makes_one_request(harness: Harness) -> None:
    """Five posts with one key at once: they pass the replay check together and their writes
    meet in one group commit, where the key's unique index stops all but one; the others are
    answered as replays of it."""
    h = harness
    before = await counts(h)
    key = {"Idempotency-Key": "at-once-51c2"}
    answers = await asyncio.gather(
        *(h.client.post(URL, json=valid(h), headers={**h.auth(JC), **key}) for _ in range(5))
    )
    assert [a.status_code for a in answers] == [202] * 5
    assert len({a.json()["conversation_id"] for a in answers}) == 1
    assert sorted(a.headers.get("idempotent-replayed", "false") for a in answers) == [
        "false", "true", "true", "true", "true"
    ]  # fmt: skip
    after = await counts(h)
    assert {name: after[name] - before[name] for name in after} == {
        "conversations": 1, "idempotency_keys": 1, "outbox_messages": 1, "submitted": 1
    }  # fmt: skip


def contact(**overrides: Any) -> dict[str, Any]:
    today = dt.date.today()
    body = {
        "municipality": "101",
        "citizen_cpr": CPR,
        "psychiatry_sor": "715381000016006",
        "case_kind": "sygedagpenge",
        "first_day_of_absence": (today - dt.timedelta(days=30)).isoformat(),
        "contact_date": (today - dt.timedelta(days=10)).isoformat(),
    }
    return body | overrides


async def contact_rows(h: Harness) -> tuple[int, int]:
    """Registered contacts, and contact events in the outbox (keyed by the citizen's case ref;
    stage events, which other tests' traffic adds meanwhile, are keyed by conversation)."""
    ref = pseudonyms.case_ref(CPR, h.gw.pseudonym_key)
    async with h.gw.engine.connect() as conn:
        contacts = (
            await conn.execute(sa.select(sa.func.count()).select_from(tables.tracker_contacts))
        ).scalar_one()
        events = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.outbox)
                .where(tables.outbox.c.topic == h.gw.topics.tracking, tables.outbox.c.key == ref)
            )
        ).scalar_one()
    return contacts, events


CONTACT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("absence 0001-01-01", {"first_day_of_absence": "0001-01-01"}, "date-out-of-range"),
    ("absence 9999-12-31", {"first_day_of_absence": "9999-12-31"}, "date-out-of-range"),
    ("contact 0001-01-01", {"contact_date": "0001-01-01"}, "date-out-of-range"),
    ("absence years ahead", {"first_day_of_absence": AHEAD}, "invalid-first-day-of-absence"),
]


@pytest.mark.parametrize(
    ("case", "overrides", "code"), CONTACT_CASES, ids=[c[0] for c in CONTACT_CASES]
)
async def test_contact_dates_out_of_range_change_nothing(
    harness: Harness, case: str, overrides: dict[str, Any], code: str
) -> None:
    """0001-01-01 as the first day of absence was a 500 (OverflowError in the service)."""
    before = await contact_rows(harness)
    response = await harness.client.post(
        "/jobcenter/v1/contacts", json=contact(**overrides), headers=harness.auth(JC)
    )
    assert_problem(response, 422, code)
    assert await contact_rows(harness) == before


@pytest.mark.parametrize("date", ["0001-01-01", "9999-12-31", "1999-12-31"])
async def test_ministry_dates_out_of_range(harness: Harness, date: str) -> None:
    for param in ("from", "to"):
        response = await harness.client.get(
            "/ministry/v1/deadlines", params={param: date}, headers=harness.auth("ministry")
        )
        assert_problem(response, 422, "date-out-of-range")


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
async def test_a_sealed_submission_created_at_the_calendar_s_ends(
    harness: Harness, created_at: str
) -> None:
    """The header's time in UTC overflowed the calendar: a 500 before it was bounded."""
    header = {
        "v": 1,
        "message_id": "m-1",
        "bundle_id": "b-1",
        "conversation_id": "c-1",
        "message_type": "attest-reply",
        "sender": "psyk-kbh",
        "receiver": "gateway",
        "suite": "X25519/HKDF_SHA256/AES_256_GCM",
        "recipient_key_id": "k-1",
        "signer": "psyk-kbh",
        "signer_key_id": "k-2",
        "created_at": created_at,
    }
    response = await harness.client.post(
        "/medcom/v1/messages",
        json={"header": header, "ciphertext": "AAAA", "signature": "AAAA"},
        headers={**harness.auth("psyk-kbh"), "Content-Type": ENVELOPE_TYPE},
    )
    assert_problem(response, 400, "invalid-envelope")


async def test_audit_after_seq_past_64_bits(harness: Harness) -> None:
    """A seq is a signed 64-bit integer in both databases: one past it was a 500."""
    url, auth = "/audit/v1/entries", harness.auth(JC)
    response = await harness.client.get(url, params={"after_seq": 2**63}, headers=auth)
    assert_problem(response, 422, "invalid-request")
    response = await harness.client.get(url, params={"after_seq": 2**63 - 1}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"entries": [], "next_after_seq": 2**63 - 1}


# --- control characters (PostgreSQL text cannot hold NUL: each was a 500 there) ----------------


async def test_lone_surrogates_are_refused(harness: Harness) -> None:
    """JSON can carry a lone UTF-16 surrogate as an escape; UTF-8 cannot encode it (a 500 when
    the store or the Bundle's serialiser met it, on both databases)."""
    before = await counts(harness)
    for field in ("caseworker_ref", "questions"):
        body = json.dumps(valid(harness, **{field: "sag \ud800"})).encode()  # ASCII, escaped
        response = await harness.client.post(
            URL, content=body, headers={**harness.auth(JC), "Content-Type": "application/json"}
        )
        assert_problem(response, 422, "control-character")
    assert await counts(harness) == before


async def test_free_text_keeps_tabs_and_line_breaks(harness: Harness) -> None:
    questions = "1. Funktionsevne?\r\n2.\tBehandling?\n"
    response = await harness.client.post(
        URL, json=valid(harness, questions=questions), headers=harness.auth(JC)
    )
    assert response.status_code == 202, response.text


async def test_control_characters_in_the_idempotency_key(harness: Harness) -> None:
    before = await counts(harness)
    for key in ("retry\x00", "retry\x01"):
        response = await harness.client.post(
            URL, json=valid(harness), headers={**harness.auth(JC), "Idempotency-Key": key}
        )
        assert_problem(response, 422, "control-character")
    assert await counts(harness) == before
    response = await harness.client.post(
        "/jobcenter/v1/contacts",
        json=contact(),
        headers={**harness.auth(JC), "Idempotency-Key": "contact\x00"},
    )
    assert_problem(response, 422, "control-character")


@pytest.mark.parametrize(
    ("method", "path", "org"),
    [
        ("GET", "/jobcenter/v1/attest-requests/{}", JC),
        ("POST", "/jobcenter/v1/inbox/{}/ack", JC),
        ("POST", "/medcom/v1/mailbox/{}/collected", PSY),
    ],
)
@pytest.mark.parametrize("bad_id", ["a%00b", "%0a", "a%20b", "x" * 65, "a%C3%A6"])
async def test_an_id_of_another_form_names_nothing(
    harness: Harness, method: str, path: str, org: str, bad_id: str
) -> None:
    response = await harness.client.request(method, path.format(bad_id), headers=harness.auth(org))
    assert_problem(response, 404, "not-found")


async def test_control_characters_in_the_ministry_s_filters(harness: Harness) -> None:
    response = await harness.client.get(
        "/ministry/v1/deadlines",
        params={"attest_type": "LÆ 155\x00"},
        headers=harness.auth("ministry"),
    )
    assert_problem(response, 422, "control-character")


async def medcom_rows(h: Harness, conversation_id: str) -> tuple[int, int]:
    """The conversation's mailbox rows, and its organisations' inbound messages."""
    async with h.gw.engine.connect() as conn:
        mailbox = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.mailbox)
                .where(tables.mailbox.c.conversation_id == conversation_id)
            )
        ).scalar_one()
        inbound = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(tables.inbound_messages)
                .where(tables.inbound_messages.c.conversation_id == conversation_id)
            )
        ).scalar_one()
    return mailbox, inbound


async def test_control_characters_in_a_submitted_bundle(harness: Harness) -> None:
    """FHIR strings hold no character below U+0020 but tab, line feed and carriage return: a
    NUL in an id the gateway looks up, or a vertical tab in the attest text, is refused before
    anything is stored (plain and sealed for the gateway)."""
    h = harness
    accepted, request, _ = await new_request(h)
    cid = accepted["conversation_id"]
    before = await medcom_rows(h, cid)
    ack = build_acknowledgement(
        acked=request, message_id=str(uuid.uuid4()), bundle_id=str(uuid.uuid4()),
        sent_at=SystemClock().now(), code="ok",
    )  # fmt: skip
    ack["entry"][0]["resource"]["response"]["identifier"] += "\x00"
    reply = reply_to(request)
    communication = next(
        e["resource"] for e in reply["entry"] if e["resource"]["resourceType"] == "Communication"
    )
    communication["payload"][0]["contentString"] = "Borgeren\x0ber i behandling."
    for bundle, kind in ((ack, MessageType.ACKNOWLEDGEMENT), (reply, MessageType.ATTEST_REPLY)):
        assert_problem(await post(h, PSY, bundle), 422, "control-character")
        envelope = sealed_for_gateway(
            h, h.client_keys(PSY), bundle, conversation_id=cid, message_type=kind
        )
        response = await post(h, PSY, envelope.model_dump(mode="json"), ENVELOPE_TYPE)
        assert_problem(response, 422, "control-character")
    assert await medcom_rows(h, cid) == before


async def test_control_characters_in_a_sealed_envelope_s_header(harness: Harness) -> None:
    """The header's ids are stored (the audit entry of the opening) before the Bundle is read:
    a NUL there, signed by the sender itself, was a 500 on PostgreSQL and stored on SQLite."""
    h = harness
    accepted, request, _ = await new_request(h)
    cid = accepted["conversation_id"]
    keys = h.client_keys(PSY)
    ack = build_acknowledgement(
        acked=request, message_id=str(uuid.uuid4()), bundle_id=str(uuid.uuid4()),
        sent_at=SystemClock().now(), code="ok",
    )  # fmt: skip
    good = sealed_for_gateway(
        h, keys, ack, conversation_id=cid, message_type=MessageType.ACKNOWLEDGEMENT
    ).header
    header = EnvelopeHeader.model_construct(
        **(good.model_dump() | {"conversation_id": cid + "\x00"})
    )
    gateway_key = h.gw.keyring.orgs[h.settings.gateway_org_id].current_hpke
    envelope = seal(orjson.dumps(ack), header, gateway_key.public(), keys.current_signing)
    before = await medcom_rows(h, cid)
    response = await post(h, PSY, envelope.model_dump(mode="json"), ENVELOPE_TYPE)
    assert_problem(response, 400, "invalid-envelope")
    assert await medcom_rows(h, cid) == before
    await audit.chain_all(h.gw.engine, h.gw.topics)  # what is pending too
    async with h.gw.engine.connect() as conn:
        opened = await conn.execute(
            sa.select(tables.audit_log).where(tables.audit_log.c.message_id == good.message_id)
        )
        assert opened.all() == []


# --- CPR numbers in references a client writes (stored in clear) -------------------------------


async def test_a_cpr_number_in_the_idempotency_key_is_refused(harness: Harness) -> None:
    before = await counts(harness)
    key = {"Idempotency-Key": f"req-{CPR}"}
    response = await harness.client.post(
        URL, json=valid(harness), headers={**harness.auth(JC), **key}
    )
    assert_problem(response, 422, "cpr-in-reference")
    assert await counts(harness) == before
    contacts_before = await contact_rows(harness)
    response = await harness.client.post(
        "/jobcenter/v1/contacts", json=contact(), headers={**harness.auth(JC), **key}
    )
    assert_problem(response, 422, "cpr-in-reference")
    assert await contact_rows(harness) == contacts_before


@pytest.mark.parametrize(
    "ref",
    [
        "sag-2026-0042",
        "27.24.00-G01-1234-24",
        "sag-01019012345",  # eleven digits: a longer number, not a CPR number
        "sag-3213901234",  # not DDMMYY
        "0b6a9a3e-52a4-4d0c-a0a1-5b5c8a2f4e10",
        "8f010190-1234-4aaa-8bbb-cccc0101901f",  # a UUID with CPR-shaped runs inside
    ],
)
async def test_references_without_a_cpr_number_are_accepted(harness: Harness, ref: str) -> None:
    response = await harness.client.post(
        URL,
        json=valid(harness, caseworker_ref=ref),
        headers={**harness.auth(JC), "Idempotency-Key": f"{ref}-{uuid.uuid4()}"},
    )
    assert response.status_code == 202, response.text
    status = await harness.get_json(response.headers["location"], JC)
    assert status["caseworker_ref"] == ref

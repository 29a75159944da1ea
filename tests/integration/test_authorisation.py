"""Authorisation across tenants, on both databases.

Every route of the app is classified here (a new route that is not makes
`test_every_route_is_classified` fail); the matrix then asks each route as each role: no
credentials → 401, the wrong role → 403, the right role → neither. A job centre sees only
its own conversations and inbox, a healthcare organisation only its own mailbox and the
requests sent to it, the ministry only aggregates. Asking for someone else's thing answers
exactly what asking for a thing that does not exist answers (the same bytes, `instance`
aside), and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import string
import uuid
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.routing import iter_route_contexts

from attest_gateway.config import load_settings
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.entrypoints.http.app import create_app
from attest_gateway.infra.db import tables
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from tests.integration.conftest import Harness
from tests.integration.test_medcom_side import new_request, post
from tests.support.envelopes import mailbox_row, opened
from tests.support.flows import round_trip
from tests.support.harness import ATTEST_TEXT, CPR, attest_request_body, wait_for
from tests.support.people import CLINICIAN

JC, JC2, PSY, GP, MINISTRY = "jc-koebenhavn", "jc-aarhus", "psyk-kbh", "gp-noerrebro", "ministry"
REGION_ANALYST, MUNICIPALITY_ANALYST = "analyse-hovedstaden", "analyse-koebenhavn"
SOR = {PSY: "715381000016006", GP: "486711000016004"}


class Access(StrEnum):
    PUBLIC = "public"  # no credentials: documents, health, metrics, the dashboard's static files
    JOBCENTER = "jobcenter"
    HEALTH = "health"  # psychiatry, GP, hospital, specialist
    PSYCHIATRY = "psychiatry"  # psychiatry only
    MINISTRY = "ministry"  # the ministry, and a region's or a municipality's analysts
    ANY_ORG = "any organisation"  # its own records only (the audit trail)
    PARTNER = "partner"  # job centres and healthcare organisations: their own webhooks


ROUTES: dict[tuple[str, str], Access] = {
    ("GET", "/openapi.json"): Access.PUBLIC,
    ("GET", "/docs"): Access.PUBLIC,
    ("GET", "/docs/oauth2-redirect"): Access.PUBLIC,
    ("GET", "/redoc"): Access.PUBLIC,
    ("GET", "/asyncapi.json"): Access.PUBLIC,
    ("GET", "/healthz"): Access.PUBLIC,
    ("GET", "/readyz"): Access.PUBLIC,
    ("GET", "/metrics"): Access.PUBLIC,  # its own token (METRICS_TOKEN) when set; unset here
    ("GET", "/ministry/"): Access.PUBLIC,  # the dashboard page; its data needs the ministry key
    ("GET", "/ministry/static/{name}"): Access.PUBLIC,
    ("POST", "/jobcenter/v1/attest-requests"): Access.JOBCENTER,
    ("GET", "/jobcenter/v1/attest-requests/{conversation_id}"): Access.JOBCENTER,
    ("GET", "/jobcenter/v1/attest-requests"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/attest-requests/{conversation_id}/cancel"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/attest-requests/{conversation_id}/extend"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/attest-requests/{conversation_id}/remind"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/contacts"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/cases/close"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/cases"): Access.JOBCENTER,
    ("PATCH", "/jobcenter/v1/cases/{case_id}"): Access.JOBCENTER,
    ("POST", "/psychiatry/v1/treatments"): Access.PSYCHIATRY,
    ("POST", "/psychiatry/v1/contacts"): Access.PSYCHIATRY,
    ("GET", "/jobcenter/v1/inbox"): Access.JOBCENTER,
    ("GET", "/jobcenter/v1/attest-types"): Access.JOBCENTER,
    ("POST", "/jobcenter/v1/inbox/{message_id}/ack"): Access.JOBCENTER,
    ("GET", "/medcom/v1/mailbox"): Access.HEALTH,
    ("POST", "/medcom/v1/mailbox/{message_id}/collected"): Access.HEALTH,
    ("POST", "/medcom/v1/messages"): Access.HEALTH,
    ("GET", "/ministry/v1/report"): Access.MINISTRY,
    ("GET", "/ministry/v1/durations"): Access.MINISTRY,
    ("GET", "/ministry/v1/deadlines"): Access.MINISTRY,
    ("GET", "/ministry/v1/contacts"): Access.MINISTRY,
    ("GET", "/ministry/v1/meta"): Access.MINISTRY,
    ("GET", "/ministry/v1/coverage"): Access.MINISTRY,
    ("GET", "/ministry/v1/latency"): Access.MINISTRY,
    ("GET", "/ministry/v1/request-timing"): Access.MINISTRY,
    ("GET", "/ministry/v1/overdue"): Access.MINISTRY,
    ("GET", "/ministry/v1/rehabilitation"): Access.MINISTRY,
    ("GET", "/audit/v1/entries"): Access.ANY_ORG,
    ("GET", "/directory/v1/organisations/{org_id}/keys"): Access.ANY_ORG,
    ("POST", "/webhooks/v1/endpoints"): Access.PARTNER,
    ("GET", "/webhooks/v1/endpoints"): Access.PARTNER,
    ("DELETE", "/webhooks/v1/endpoints/{endpoint_id}"): Access.PARTNER,
    ("POST", "/webhooks/v1/endpoints/{endpoint_id}/rotate"): Access.PARTNER,
    ("POST", "/webhooks/v1/endpoints/{endpoint_id}/ping"): Access.PARTNER,
    ("GET", "/webhooks/v1/deliveries"): Access.PARTNER,
    ("POST", "/webhooks/v1/deliveries/{delivery_id}/redeliver"): Access.PARTNER,
}

# caller → the organisation it authenticates as (None: no credentials)
CALLERS: dict[str, str | None] = {
    "anonymous": None,
    "jobcenter": JC,
    "psychiatry": PSY,
    "gp": GP,
    "ministry": MINISTRY,
    "region-analyst": REGION_ANALYST,
    "municipality-analyst": MUNICIPALITY_ANALYST,
}
ALLOWED: dict[Access, set[str]] = {
    Access.PUBLIC: set(CALLERS),
    Access.JOBCENTER: {"jobcenter"},
    Access.HEALTH: {"psychiatry", "gp"},
    Access.PSYCHIATRY: {"psychiatry"},
    Access.MINISTRY: {"ministry", "region-analyst", "municipality-analyst"},
    Access.ANY_ORG: {
        "jobcenter",
        "psychiatry",
        "gp",
        "ministry",
        "region-analyst",
        "municipality-analyst",
    },
    Access.PARTNER: {"jobcenter", "psychiatry", "gp"},
}


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path template) of every route the composition root serves (HEAD aside)."""
    app = create_app(load_settings(var_dir=tmp_path), "127.0.0.1:1")  # not started: no I/O
    found: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        assert route.path is not None, route
        found |= {(m, route.path) for m in (route.methods or {"GET"}) - {"HEAD"}}
    return found


def test_every_route_is_classified(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    assert len(routes) > 20  # the enumeration really sees the included routers
    assert sorted(routes - ROUTES.keys()) == [], "classify the new route in ROUTES"
    assert sorted(ROUTES.keys() - routes) == [], "ROUTES names a route the app does not serve"


def fill(path: str, value: str) -> str:
    names = [f for _, f, _, _ in string.Formatter().parse(path) if f]
    return path.format(**dict.fromkeys(names, value))


async def call(
    h: Harness, method: str, url: str, org: str | None, body: Any = None
) -> httpx.Response:
    headers = h.auth(org) if org else {}
    if method == "GET":
        return await h.client.get(url, headers=headers)
    if method == "DELETE":
        return await h.client.delete(url, headers=headers)
    return await h.client.request(
        method,
        url,
        content=orjson.dumps({} if body is None else body),
        headers={**headers, "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES), ids=[" ".join(r) for r in ROUTES])
async def test_route_answers_by_role(harness: Harness, method: str, path: str) -> None:
    access = ROUTES[(method, path)]
    url = fill(path, str(uuid.uuid4()))
    got: dict[str, tuple[int, str | None]] = {}
    for caller, org in CALLERS.items():
        response = await call(harness, method, url, org)
        code = None
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            code = response.json()["code"]
        got[caller] = (response.status_code, code)
    expected: dict[str, object] = {}
    for caller in CALLERS:
        if caller in ALLOWED[access]:
            expected[caller] = "allowed"
        elif caller == "anonymous":
            expected[caller] = (401, "unauthenticated")
        else:
            expected[caller] = (403, "forbidden")
    seen = {
        caller: "allowed" if status not in (401, 403) else (status, code)
        for caller, (status, code) in got.items()
    }
    assert seen == expected, got


def assert_same_answer(
    theirs: httpx.Response, missing: httpx.Response, *, real: str, fake: str
) -> None:
    """The answer about someone else's thing is the answer about a thing that does not
    exist: same status, same headers that matter, same bytes once the id in `instance` is
    swapped back."""
    assert theirs.status_code == missing.status_code, (theirs.text, missing.text)
    assert theirs.status_code in (401, 403, 404)
    assert theirs.headers["content-type"] == missing.headers["content-type"]
    assert theirs.content == missing.content.replace(fake.encode(), real.encode())
    assert real not in theirs.json().get("detail", "")


def random_id() -> str:
    return str(uuid.uuid4())


async def test_other_job_centres_conversation_inbox_and_reply(harness: Harness) -> None:
    h = harness
    done = await round_trip(h)  # jc-koebenhavn ↔ psychiatry, the reply acknowledged
    waiting_cid, waiting_reply = await reply_waiting_in_inbox(h)

    cases = [
        ("GET", "/jobcenter/v1/attest-requests/{}", done.conversation_id),
        ("GET", "/jobcenter/v1/attest-requests/{}", waiting_cid),
        ("POST", "/jobcenter/v1/attest-requests/{}/cancel", waiting_cid),
        ("POST", "/jobcenter/v1/attest-requests/{}/remind", waiting_cid),
        ("POST", "/jobcenter/v1/inbox/{}/ack", done.reply_message_id),
        ("POST", "/jobcenter/v1/inbox/{}/ack", waiting_reply),
        # a message that is in jc-koebenhavn's mailbox but is not a reply
        ("POST", "/jobcenter/v1/inbox/{}/ack", await psy_ack_id(h, done.conversation_id)),
    ]
    for method, template, real in cases:
        fake = random_id()
        for org in (JC2, PSY, MINISTRY, None):  # other job centre → 404, others → 403 / 401
            theirs = await call(h, method, template.format(real), org)
            missing = await call(h, method, template.format(fake), org)
            assert_same_answer(theirs, missing, real=real, fake=fake)
            assert theirs.status_code == (404 if org == JC2 else 403 if org else 401)

    # jc-aarhus's inbox does not list jc-koebenhavn's waiting reply; acking it changed nothing.
    items = (await h.get_json("/jobcenter/v1/inbox", JC2))["items"]
    assert waiting_cid not in [i["conversation_id"] for i in items]
    assert waiting_reply not in [i["message_id"] for i in items]
    row = await mailbox_row(h, waiting_reply)
    assert row.receiver_org_id == JC
    assert row.collected_at is None
    mine = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
    assert waiting_reply in [i["message_id"] for i in mine]  # the owner still sees it


async def reply_waiting_in_inbox(h: Harness) -> tuple[str, str]:
    """A request answered by psychiatry whose reply waits, unacknowledged, in jc-koebenhavn's
    inbox: (conversation id, reply message id)."""
    accepted, request, _ = await new_request(h)
    reply = reply_from(request)
    response = await post(h, PSY, reply)
    assert response.status_code == 202, response.text

    async def arrived() -> dict[str, Any] | None:
        items = (await h.get_json("/jobcenter/v1/inbox", JC, params={"limit": 500}))["items"]
        return next((i for i in items if i["conversation_id"] == accepted["conversation_id"]), None)

    item = await wait_for(arrived)
    return accepted["conversation_id"], item["message_id"]


async def psy_ack_id(h: Harness, conversation_id: str) -> str:
    """The message id of psychiatry's acknowledgement of the request (in the job centre's
    mailbox table, not a reply)."""

    async def find() -> str | None:
        async with h.gw.engine.connect() as conn:
            row = (
                await conn.execute(
                    tables.mailbox.select().where(
                        tables.mailbox.c.conversation_id == conversation_id,
                        tables.mailbox.c.receiver_org_id == JC,
                        tables.mailbox.c.message_type == "acknowledgement",
                    )
                )
            ).first()
        return str(row.message_id) if row is not None else None

    return await wait_for(find)


def ack_from(request: Bundle) -> dict[str, Any]:
    return build_acknowledgement(
        acked=request,
        message_id=random_id(),
        bundle_id=random_id(),
        sent_at=dt.datetime.now(dt.UTC),
        code="ok",
    )


def reply_from(request: Bundle) -> dict[str, Any]:
    return build_attest_reply(
        author=CLINICIAN,
        request=request,
        message_id=random_id(),
        bundle_id=random_id(),
        sent_at=dt.datetime.now(dt.UTC),
        text=ATTEST_TEXT,
        pdf=None,
    )


async def test_other_clinics_mailbox(harness: Harness) -> None:
    h = harness
    accepted, _request, _item = await new_request(h)  # waiting in psychiatry's mailbox
    _cid, reply_id = await reply_waiting_in_inbox(h)  # in jc-koebenhavn's mailbox
    for real, owner in ((accepted["message_id"], PSY), (reply_id, JC)):
        fake = random_id()
        for org in (GP, PSY, JC, MINISTRY, None):
            if org == owner:
                continue
            url = "/medcom/v1/mailbox/{}/collected"
            theirs = await call(h, "POST", url.format(real), org)
            missing = await call(h, "POST", url.format(fake), org)
            assert_same_answer(theirs, missing, real=real, fake=fake)
            expected = 401 if org is None else 404 if org in (GP, PSY) else 403
            assert theirs.status_code == expected, (org, theirs.text)
        row = await mailbox_row(h, real)
        assert row.receiver_org_id == owner
        assert row.collected_at is None

    # The GP's mailbox does not list psychiatry's request.
    gp_items = (await h.get_json("/medcom/v1/mailbox", GP, params={"limit": 500}))["items"]
    assert accepted["message_id"] not in [i["message_id"] for i in gp_items]
    assert accepted["conversation_id"] not in [i["conversation_id"] for i in gp_items]


def as_gp(plaintext: bytes, *, request_id: str, new_id: str | None = None) -> Bundle:
    """Psychiatry's request as if it had been sent to the GP (the GP's identifiers as the
    receiver), optionally under another MessageHeader id: what a GP system needs to build a
    correct acknowledgement or reply of its own to that request."""
    text = plaintext.decode()
    text = text.replace(SOR[PSY], SOR[GP]).replace(Harness.gln(PSY), Harness.gln(GP))
    if new_id is not None:
        assert request_id in text
        text = text.replace(request_id, new_id)
    return parse_bundle(orjson.loads(text))


async def test_answering_someone_elses_request(harness: Harness) -> None:
    """A GP acknowledges or replies to a request that was sent to psychiatry: the answer is
    the one for a request that does not exist, and nothing reaches the job centre."""
    h = harness
    accepted, _request, item = await new_request(h)
    plaintext = opened(SealedEnvelope.model_validate(item["envelope"]), h, PSY)
    mid = accepted["message_id"]
    builders: dict[str, Callable[[Bundle], dict[str, Any]]] = {
        "acknowledgement": ack_from,
        "attest reply": reply_from,
    }
    for kind, build in builders.items():
        theirs = await post(h, GP, build(as_gp(plaintext, request_id=mid)))
        missing = await post(h, GP, build(as_gp(plaintext, request_id=mid, new_id=random_id())))
        assert theirs.status_code == 404, (kind, theirs.text)
        assert theirs.json()["code"] == "unknown-request"
        assert theirs.content == missing.content, kind
    status = await h.get_json(f"/jobcenter/v1/attest-requests/{accepted['conversation_id']}", JC)
    assert not {"acknowledged", "replied"} & set(status["stages"])
    row = await mailbox_row(h, accepted["message_id"])
    assert row.collected_at is None  # the GP's acknowledgement did not take it off the list


async def test_ministry_sees_only_aggregates(harness: Harness) -> None:
    h = harness
    done = await round_trip(h)
    caseworker_ref = attest_request_body(jobcenter_gln=h.gln(JC))["caseworker_ref"]
    secrets = [done.conversation_id, done.request_message_id, done.reply_message_id, CPR,
               ATTEST_TEXT, caseworker_ref]  # fmt: skip
    ministry_reads = [path for (m, path), a in ROUTES.items() if a is Access.MINISTRY]
    assert ministry_reads
    document = h.app.openapi()
    for path in ministry_reads:
        parameters = {p["name"] for p in document["paths"][path]["get"].get("parameters", [])}
        # An endpoint without `format` refuses it (422 unknown-parameter): it answers JSON.
        for params in [{"format": "json"}, {"format": "csv"}] if "format" in parameters else [{}]:
            response = await h.client.get(path, params=params, headers=h.auth(MINISTRY))
            assert response.status_code == 200, (path, response.text)
            assert response.content
            for secret in secrets:
                assert secret not in response.text, (path, params)

"""The partner client without a gateway: opening checks the signature against the signer's
published keys, webhooks verify as the gateway signs them, error answers become
`GatewayProblem`, and `attest-client open` prints the Bundle or one sentence."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from attest_gateway.client import (
    Client,
    GatewayProblem,
    NotOpened,
    OrgKeys,
    WebhookInvalid,
    cli,
    open_envelope,
    verify_webhook,
)
from attest_gateway.contracts.directory import OrganisationKeys, PublicKey
from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.crypto.sealing import seal
from attest_gateway.crypto.webhooks import signed_headers

SUITE: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
NOW = dt.datetime(2026, 10, 29, 9, 30, tzinfo=dt.UTC)
BUNDLE = {"resourceType": "Bundle", "type": "message", "id": "b-1"}


def _published(keys: OrgKeys, *, revoked: bool = False) -> OrganisationKeys:
    signing = keys.current_signing
    return OrganisationKeys(
        org_id=keys.org_id,
        keys=[
            PublicKey(
                key_id=signing.key_id,
                purpose="signing",
                algorithm="Ed25519",
                public_key=signing.public_encoded,
                valid_from=NOW - dt.timedelta(days=1),
                revoked_at=NOW if revoked else None,
                usable=not revoked,
            )
        ],
    )


def _sealed(sender: OrgKeys, receiver: OrgKeys) -> SealedEnvelope:
    header = EnvelopeHeader(
        message_id="m-1",
        bundle_id="b-1",
        conversation_id="c-1",
        message_type=MessageType.ATTEST_REQUEST,
        sender=sender.org_id,
        receiver=receiver.org_id,
        suite=SUITE,
        recipient_key_id=receiver.current_hpke.key_id,
        signer=sender.org_id,
        signer_key_id=sender.current_signing.key_id,
        created_at=NOW,
    )
    return seal(
        orjson.dumps(BUNDLE), header, receiver.current_hpke.public(), sender.current_signing
    )


@pytest.fixture(scope="module")
def parties() -> tuple[OrgKeys, OrgKeys]:
    return OrgKeys.generate("jc-x", SUITE), OrgKeys.generate("psyk-x", SUITE)


def test_open_checks_the_signature_first(parties: tuple[OrgKeys, OrgKeys]) -> None:
    sender, receiver = parties
    sealed = _sealed(sender, receiver)
    assert open_envelope(sealed, receiver, _published(sender)) == BUNDLE
    # a mailbox item opens as its envelope does
    item = {"message_id": "m-1", "envelope": sealed.model_dump(mode="json")}
    assert open_envelope(item, receiver, _published(sender)) == BUNDLE

    flipped = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
    tampered = sealed.model_copy(update={"signature": flipped})
    with pytest.raises(NotOpened) as bad:
        open_envelope(tampered, receiver, _published(sender))
    assert bad.value.code == "signature-invalid"
    with pytest.raises(NotOpened) as revoked:
        open_envelope(sealed, receiver, _published(sender, revoked=True))
    assert revoked.value.code == "key-not-valid"
    with pytest.raises(NotOpened) as someone_else:
        open_envelope(sealed, receiver, _published(receiver))
    assert someone_else.value.code == "unknown-key"
    with pytest.raises(NotOpened) as not_ours:
        open_envelope(sealed, sender, None)
    assert not_ours.value.code == "unknown-key"


def test_a_webhook_verifies_with_the_secret_it_was_signed_with() -> None:
    secret, other = "whsec_" + "A" * 32, "whsec_" + "B" * 32
    body = b'{"type":"message.waiting","data":{"message_id":"m-1"}}'
    headers = signed_headers("msg_1", dt.datetime.now(dt.UTC), body, [secret])
    assert verify_webhook(headers, body, secret)["type"] == "message.waiting"
    with pytest.raises(WebhookInvalid):
        verify_webhook(headers, body, other)
    with pytest.raises(WebhookInvalid):
        verify_webhook(headers, body.replace(b"m-1", b"m-2"), secret)
    stale = signed_headers("msg_1", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), body, [secret])
    with pytest.raises(WebhookInvalid):
        verify_webhook(stale, body, secret)
    # during a rotation either secret verifies
    both = signed_headers("msg_1", dt.datetime.now(dt.UTC), body, [secret, other])
    assert verify_webhook(both, body, other)["data"]["message_id"] == "m-1"


def test_an_error_answer_is_a_gateway_problem_and_a_call_carries_the_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        problem = {
            "type": "https://attest-gateway.dk/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": "this organisation's role may not use this endpoint",
            "code": "forbidden",
            "retryable": False,
        }
        return httpx.Response(403, json=problem)

    with (
        Client("http://gw", api_key="k-1", transport=httpx.MockTransport(answer)) as gw,
        pytest.raises(GatewayProblem) as refused,
    ):
        gw.mailbox(limit=5)
    assert (refused.value.status, refused.value.code, refused.value.retryable) == (
        403,
        "forbidden",
        False,
    )
    assert seen[0].headers["Authorization"] == "Bearer k-1"
    assert seen[0].url.path == "/medcom/v1/mailbox"
    assert seen[0].url.params["limit"] == "5"


def test_a_client_needs_credentials() -> None:
    with pytest.raises(ValueError, match="API key"):
        Client("http://gw")


def test_the_cli_opens_or_says_why_not(
    parties: tuple[OrgKeys, OrgKeys], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sender, receiver = parties
    keyfile, signer, envelope = tmp_path / "k.json", tmp_path / "s.json", tmp_path / "e.json"
    receiver.save(keyfile)
    signer.write_text(_published(sender).model_dump_json())
    envelope.write_bytes(_sealed(sender, receiver).to_json())
    args = ["open", str(envelope), "--keys", str(keyfile)]
    assert cli.main([*args, "--signer-keys", str(signer)]) == 0
    assert json.loads(capsys.readouterr().out) == BUNDLE

    signer.write_text(_published(receiver).model_dump_json())
    assert cli.main([*args, "--signer-keys", str(signer)]) == 1
    out: Any = capsys.readouterr()
    assert (out.out, out.err) == (
        "",
        "error: not opened: the keys given are not the signer's (unknown-key)\n",
    )
    assert cli.main(args) == 1
    assert "--no-verify" in capsys.readouterr().err


def test_a_long_poll_asks_whole_seconds_within_the_gateways_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": []})

    with Client("http://gw", api_key="k-1", transport=httpx.MockTransport(answer)) as gw:
        gw.mailbox(wait=2.5)
        gw.inbox(limit=7)
        with pytest.raises(ValueError, match="0 to 30"):
            gw.mailbox(wait=31)
    assert [dict(r.url.params) for r in seen] == [
        {"limit": "100", "wait": "3"},
        {"limit": "7"},  # no wait asked: the gateway's default, none
    ]
    with pytest.raises(SystemExit):
        cli.main(["fetch", "--wait", "45", "--gateway", "http://gw", "--api-key", "k"])
    assert "0 to 30 seconds, not 45" in capsys.readouterr().err

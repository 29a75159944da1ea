"""Receivers can check what they get: the directory's public keys per organisation (any
authenticated organisation), and `client open` that checks the signer's signature against
them before it opens anything (refusing a tampered envelope), unless told `--no-verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from attest_gateway.contracts.directory import OrganisationKeys
from attest_gateway.contracts.envelope import SealedEnvelope
from attest_gateway.entrypoints.cli import main as cli
from tests.integration.conftest import Harness
from tests.support.flows import JC, PSY
from tests.support.harness import attest_request_body, wait_for


async def test_an_organisations_public_keys_with_ids_and_validity(harness: Harness) -> None:
    h = harness
    response = await h.client.get("/directory/v1/organisations/psyk-kbh/keys", headers=h.auth(JC))
    assert response.status_code == 200, response.text
    keys = OrganisationKeys.model_validate(response.json())
    assert keys.org_id == PSY
    assert {k.purpose for k in keys.keys} == {"hpke", "signing"}
    assert all(k.key_id and k.public_key and k.valid_from for k in keys.keys)
    usable = [k for k in keys.keys if k.usable]
    assert usable
    assert all(k.revoked_at is None for k in usable)
    # the HPKE key it lists is the one the client's key file holds
    held = {k.key_id for k in h.client_keys(PSY).hpke_keys}
    assert held & {k.key_id for k in keys.keys if k.purpose == "hpke"}
    unknown = await h.client.get("/directory/v1/organisations/nobody/keys", headers=h.auth(JC))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not-found")
    anonymous = await h.client.get("/directory/v1/organisations/psyk-kbh/keys")
    assert anonymous.status_code == 401


async def _mailbox_item(h: Harness) -> dict[str, Any]:
    body = attest_request_body(jobcenter_gln=h.gln(JC))
    response = await h.client.post("/jobcenter/v1/attest-requests", json=body, headers=h.auth(JC))
    assert response.status_code == 202, response.text
    message_id = response.json()["message_id"]

    async def in_mailbox() -> dict[str, Any] | None:
        items = (await h.get_json("/medcom/v1/mailbox", PSY, params={"limit": 500}))["items"]
        return next((i for i in items if i["message_id"] == message_id), None)

    return await wait_for(in_mailbox)


def _open(*args: str) -> Any:
    return CliRunner().invoke(cli.app, ["client", "open", *args], env={"COLUMNS": "200"})


async def test_client_open_checks_the_signature_and_refuses_a_tampered_envelope(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    item = await _mailbox_item(h)
    sealed = SealedEnvelope.model_validate(item["envelope"])
    signer = sealed.header.signer  # the gateway signs for the custodial job centre
    answer = await h.client.get(f"/directory/v1/organisations/{signer}/keys", headers=h.auth(PSY))
    assert answer.status_code == 200, answer.text
    signer_keys = tmp_path / "signer-keys.json"
    signer_keys.write_bytes(answer.content)
    keys = h.creds[PSY]["private_keys"]

    good = tmp_path / "item.json"
    good.write_text(json.dumps(item))
    opened = _open(str(good), "--keys", keys, "--signer-keys", str(signer_keys))
    assert opened.exit_code == 0, opened.output
    assert json.loads(opened.stdout)["resourceType"] == "Bundle"

    # The same envelope with another signature: its ciphertext still opens, but not by default.
    flipped = bytes([sealed.signature[0] ^ 1]) + sealed.signature[1:]
    tampered = tmp_path / "tampered.json"
    tampered.write_text(sealed.model_copy(update={"signature": flipped}).model_dump_json())
    refused = _open(str(tampered), "--keys", keys, "--signer-keys", str(signer_keys))
    assert refused.exit_code == 1
    assert "signature-invalid" in refused.output
    assert "resourceType" not in refused.stdout
    unchecked = _open(str(tampered), "--keys", keys, "--no-verify")
    assert unchecked.exit_code == 0, unchecked.output

    # Signed with a key the signer does not have (another organisation's keys given).
    theirs = await h.client.get(f"/directory/v1/organisations/{PSY}/keys", headers=h.auth(PSY))
    other = tmp_path / "other-keys.json"
    other.write_bytes(theirs.content)
    wrong = _open(str(good), "--keys", keys, "--signer-keys", str(other))
    assert wrong.exit_code == 1
    assert "unknown-key" in wrong.output

    # Nothing to check against and no --no-verify: not opened.
    unverified = _open(str(good), "--keys", keys)
    assert unverified.exit_code == 1
    assert "--no-verify" in unverified.output

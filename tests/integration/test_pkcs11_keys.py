"""The PKCS#11 key store against a real SoftHSM2 token (tests/support/softhsm.py): signing
inside the token, HPKE keys and the pseudonym key wrapped by its key-encryption key, a
sealed round trip, rotation, retirement, revocation, the re-key, `keys protect`, and
production refusing clear key files. Nothing private in clear on disk is checked on the
files' bytes themselves."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from pkcs11 import Attribute, KeyType, ObjectClass
from typer.testing import CliRunner, Result

from attest_gateway.bootstrap import load_pseudonym_key
from attest_gateway.config import custodial_keys_dir, load_settings, pseudonym_key_file
from attest_gateway.contracts.envelope import EnvelopeHeader, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.crypto import pseudonyms
from attest_gateway.crypto.sealing import (
    CLEAR_FILES,
    KeyRing,
    KeyStoreError,
    OrgKeys,
    PrivateHpkeKey,
    SigningKey,
    open_envelope,
    seal,
    verify,
)
from attest_gateway.entrypoints.cli import main as cli
from attest_gateway.infra.keys import open_key_store
from attest_gateway.infra.keys.pkcs11 import TokenKeyStore, open_token
from attest_gateway.production import clear_key_records, inspect_settings
from tests.integration.conftest import running_gateway
from tests.support.cli import run_cli
from tests.support.flows import round_trip
from tests.support.kafka import TestKafka
from tests.support.leaks import json_logs
from tests.support.softhsm import OTHER_TOKEN_LABEL, SoftHsm

HYBRID: Suite = "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM"
CLASSIC: Suite = "X25519/HKDF_SHA256/AES_256_GCM"


def _kek() -> str:
    return f"kek-{secrets.token_hex(4)}"


def _store(softhsm: SoftHsm, kek: str | None = None) -> TokenKeyStore:
    return open_token(softhsm.module, softhsm.token_label, softhsm.pin, kek or _kek())


def _secret_bytes(keys: OrgKeys) -> list[bytes]:
    """Every private key's bytes, as they would appear in a clear key file (base64)."""
    out = []
    for h in keys.hpke_keys:
        out.append(h.x25519_key.private_bytes_raw())
        if h.mlkem_key is not None:
            out.append(h.mlkem_key.private_bytes_raw())
    for s in keys.signing_keys:
        if isinstance(s.key, ed25519.Ed25519PrivateKey):
            out.append(s.key.private_bytes_raw())
    return out


def _nothing_in_clear(path: Path, secrets_: list[bytes]) -> None:
    text = path.read_text(encoding="utf-8")
    for secret in secrets_:
        assert base64.b64encode(secret).decode() not in text
        assert secret.hex() not in text
    assert clear_key_records(path) == []


def _header(recipient: PrivateHpkeKey, signer: SigningKey) -> EnvelopeHeader:
    return EnvelopeHeader(
        message_id="m-1",
        bundle_id="b-1",
        conversation_id="c-1",
        message_type=MessageType.ATTEST_REQUEST,
        sender="gateway",
        receiver="gateway",
        suite=recipient.suite,
        recipient_key_id=recipient.key_id,
        signer="gateway",
        signer_key_id=signer.key_id,
        created_at=dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC),
    )


# --- signing inside the token -----------------------------------------------------------------


def test_a_signing_key_made_in_the_token_signs_there_and_never_leaves_it(
    softhsm: SoftHsm,
) -> None:
    store = _store(softhsm)
    key = store.new_signing_key()
    assert not key.in_memory
    signature = key.key.sign(b"the signed bytes")
    key.key.public_key().verify(signature, b"the signed bytes")  # raises if wrong
    private = store.session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC_EDWARDS, label=key.key_id)
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.TOKEN] is True
    # found again by its key id, as a key file names it, and refused under another public key
    again = store.token_signing_key(key.key_id, key.public_encoded)
    again.key.public_key().verify(again.key.sign(b"x"), b"x")
    other = SigningKey.generate().public_encoded
    with pytest.raises(KeyStoreError, match="not the one the key file names"):
        store.token_signing_key(key.key_id, other)


def test_a_forgotten_signing_key_is_gone_from_the_token(softhsm: SoftHsm) -> None:
    store = _store(softhsm)
    key = store.new_signing_key()
    store.forget_signing_key(key.key_id)
    with pytest.raises(KeyStoreError, match="holds no signing key"):
        store.token_signing_key(key.key_id, key.public_encoded)


def test_a_token_without_ed25519_gets_the_signing_keys_wrapped(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Where a token cannot sign Ed25519 (SoftHSM2 can: this store is told it cannot), the
    signing key is made in memory and wrapped in the key file like the HPKE keys."""
    token = _store(softhsm)
    store = TokenKeyStore(token.session, token.lock, token.token_label, _kek(), eddsa=False)
    keys = OrgKeys("jc-test", [PrivateHpkeKey.generate(CLASSIC)], [store.new_signing_key()])
    assert keys.current_signing.in_memory
    path = tmp_path / "jc-test.json"
    keys.save(path, store)
    _nothing_in_clear(path, _secret_bytes(keys))
    assert "wrapped" in _records(path)[1]
    loaded = OrgKeys.load(path, store)
    assert loaded.current_signing.public_encoded == keys.current_signing.public_encoded
    with pytest.raises(KeyStoreError, match="PKCS11_MODULE"):
        OrgKeys.load(path)


# --- HPKE keys wrapped by the key-encryption key ---------------------------------------------


def test_hpke_keys_are_wrapped_in_the_key_file_and_open_only_with_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    store = _store(softhsm)
    keys = OrgKeys(
        "jc-test",
        [PrivateHpkeKey.generate(HYBRID), PrivateHpkeKey.generate(CLASSIC)],
        [store.new_signing_key()],
    )
    path = tmp_path / "jc-test.json"
    keys.save(path, store)
    _nothing_in_clear(path, _secret_bytes(keys))
    records = json.loads(path.read_text())["keys"]
    assert all(r["wrapped"].startswith(f"pkcs11-aes-gcm:{store.kek_label}:") for r in records[:2])
    assert records[2] == {
        "purpose": "signing",
        "key_id": keys.signing_keys[0].key_id,
        "in_token": keys.signing_keys[0].key_id,
        "ed25519_public": keys.signing_keys[0].public_encoded,
    }

    loaded = OrgKeys.load(path, store)
    assert [(h.key_id, h.public_encoded) for h in loaded.hpke_keys] == [
        (h.key_id, h.public_encoded) for h in keys.hpke_keys
    ]
    assert loaded.current_signing.public_encoded == keys.current_signing.public_encoded
    with pytest.raises(KeyStoreError, match="PKCS11_MODULE"):
        OrgKeys.load(path, CLEAR_FILES)


def test_a_wrapped_key_passed_off_as_another_does_not_open(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """The wrap is bound to the organisation, key id and suite: a blob copied into another
    organisation's file, or under another key id, does not open; nor one made with another
    key-encryption key."""
    store = _store(softhsm)
    path = tmp_path / "jc-a.json"
    OrgKeys("jc-a", [PrivateHpkeKey.generate(CLASSIC)], []).save(path, store)
    data = json.loads(path.read_text())
    moved = {**data, "org_id": "jc-b"}
    with pytest.raises(KeyStoreError, match="does not open"):
        OrgKeys.from_json(json.dumps(moved), store)
    renamed = {**data, "keys": [{**data["keys"][0], "key_id": "hpke-other"}]}
    with pytest.raises(KeyStoreError, match="does not open"):
        OrgKeys.from_json(json.dumps(renamed), store)
    with pytest.raises(KeyStoreError, match="no key-encryption key"):
        OrgKeys.from_json(json.dumps(data).replace(store.kek_label, "kek-absent"), store)


def test_a_round_trip_with_the_keys_in_the_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    """Sealed to a key whose file holds it wrapped, signed inside the token: the key ring
    (loaded as the gateway loads it) opens it, and the signature verifies."""
    store = _store(softhsm)
    directory = tmp_path / "custodial"
    keys = OrgKeys("gateway", [PrivateHpkeKey.generate(HYBRID)], [store.new_signing_key()])
    keys.save(directory / "gateway.json", store)
    ring = KeyRing.load_dir(directory, store)
    recipient = ring.hpke_key(keys.current_hpke.key_id)
    assert recipient is not None
    signer = ring.signing("gateway")
    header = _header(recipient, signer)
    envelope = seal(b'{"resourceType":"Bundle"}', header, recipient.public(), signer)
    verify(envelope, signer.key.public_key())
    assert open_envelope(envelope, recipient) == b'{"resourceType":"Bundle"}'
    forged = envelope.model_copy(update={"signature": bytes(64)})
    with pytest.raises(EnvelopeRejected):
        verify(forged, signer.key.public_key())


def test_the_pseudonym_key_file_is_wrapped_and_stays_the_same_key(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    settings = load_settings(
        var_dir=tmp_path / "var",
        pkcs11_module=softhsm.module,
        pkcs11_token_label=softhsm.token_label,
        pkcs11_pin=softhsm.pin,
        pkcs11_kek_label=_kek(),
    )
    key = load_pseudonym_key(settings)
    text = pseudonym_key_file(settings).read_text()
    assert text.startswith("pkcs11-aes-gcm:")
    assert key.decode() not in text
    assert load_pseudonym_key(settings) == key
    assert len(key) == 64


def test_a_wrong_pin_or_label_is_one_sentence_naming_the_setting(softhsm: SoftHsm) -> None:
    with pytest.raises(KeyStoreError, match="PKCS11_PIN: the token 'attest-other' refused"):
        open_token(softhsm.module, OTHER_TOKEN_LABEL, "0000", _kek())
    with pytest.raises(KeyStoreError, match="PKCS11_TOKEN_LABEL"):
        open_token(softhsm.module, "no-such-token", softhsm.pin, _kek())
    with pytest.raises(KeyStoreError, match="PKCS11_MODULE names"):
        open_token(softhsm.module.with_name("absent.so"), "x", softhsm.pin, _kek())


# --- the operator's commands with the token: setup, rotate, retire, revoke, rekey, protect ---


def _env(softhsm: SoftHsm, var: Path) -> dict[str, str]:
    return {
        "ENVIRONMENT": "development",
        "VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite+aiosqlite:///{(var / 'gateway.db').as_posix()}",
        "KEYS_DIR": str(var / "keys"),
        "COLUMNS": "200",
        **softhsm.env(kek_label=_kek()),
    }


def _ok(env: dict[str, str], *args: str) -> Result:
    result = CliRunner().invoke(cli.app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def _records(path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(path.read_text())["keys"]
    return records


def _settings(env: dict[str, str]) -> Any:
    return load_settings(
        var_dir=Path(env["VAR_DIR"]),
        database_url=env["DATABASE_URL"],
        keys_dir=Path(env["KEYS_DIR"]),
        pkcs11_module=Path(env["PKCS11_MODULE"]),
        pkcs11_token_label=env["PKCS11_TOKEN_LABEL"],
        pkcs11_pin=env["PKCS11_PIN"],
        pkcs11_kek_label=env["PKCS11_KEK_LABEL"],
    )


def test_rotation_retirement_and_revocation_keep_working_with_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    env = _env(softhsm, tmp_path / "var")
    _ok(env, "setup")
    settings = _settings(env)
    store = open_key_store(settings)
    path = custodial_keys_dir(settings) / "gateway.json"
    first = _records(path)
    assert {r["purpose"] for r in first} == {"hpke", "signing"}
    assert all("wrapped" in r or "in_token" in r for r in first)
    old_signing = next(r["key_id"] for r in first if r["purpose"] == "signing")

    _ok(env, "keys", "rotate", "--org", "gateway", "--purpose", "signing")
    ring = KeyRing.load_dir(custodial_keys_dir(settings), store)
    new_signing = ring.orgs["gateway"].current_signing
    assert new_signing.key_id != old_signing
    assert not new_signing.in_memory
    assert clear_key_records(path) == []

    _ok(env, "keys", "revoke", old_signing, "--reason", "test")
    assert old_signing not in {r["key_id"] for r in _records(path)}
    with pytest.raises(KeyStoreError, match="holds no signing key"):
        store.token_signing_key(old_signing, new_signing.public_encoded)
    # the gateway's own HPKE key rotates too; the old one stays (it opens the stored copies)
    _ok(env, "keys", "rotate", "--org", "gateway", "--purpose", "hpke")
    ring = KeyRing.load_dir(custodial_keys_dir(settings), store)
    assert len(ring.orgs["gateway"].hpke_keys) == 2
    assert clear_key_records(path) == []

    # a rotation by the operator's command in another process: the running ring sees the new
    # signing key (made in the token by that process) and signs with it
    result = run_cli(["keys", "rotate", "--org", "gateway", "--purpose", "signing"], env=env)
    assert result.returncode == 0, result.stderr
    assert ring.refresh(force=True)
    rotated = ring.signing("gateway")
    assert rotated.key_id not in {old_signing, new_signing.key_id}
    rotated.key.public_key().verify(rotated.key.sign(b"x"), b"x")


def test_the_rekey_writes_the_new_pseudonym_key_wrapped(softhsm: SoftHsm, tmp_path: Path) -> None:
    env = _env(softhsm, tmp_path / "var")
    _ok(env, "setup")
    settings = _settings(env)
    old = load_pseudonym_key(settings)
    _ok(env, "pseudonyms", "status")
    _ok(env, "pseudonyms", "rekey")
    new = load_pseudonym_key(settings)
    assert new != old
    text = pseudonym_key_file(settings).read_text()
    assert text.startswith("pkcs11-aes-gcm:")
    assert new.decode() not in text
    status = _ok(env, "pseudonyms", "status").stdout
    assert f"configured key id: {pseudonyms.key_id(new)} (key file)" in status
    assert f"store's key id:    {pseudonyms.key_id(new)}" in status


def test_keys_protect_moves_clear_key_files_into_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """Key files written before the token was configured: production refuses them; `keys
    protect` imports the signing keys into the token and wraps the rest; then the same keys
    open with the token and production accepts the files."""
    var = tmp_path / "var"
    env = _env(softhsm, var)
    clear_env = {k: v for k, v in env.items() if not k.startswith("PKCS11_")}
    _ok(clear_env, "setup")
    settings = _settings(env)
    custodial = custodial_keys_dir(settings) / "gateway.json"
    load_pseudonym_key(settings.model_copy(update={"pkcs11_module": None}))  # clear, as before
    clear = OrgKeys.load(custodial)
    clear_pseudonym = pseudonym_key_file(settings).read_text().strip()
    production = settings.model_copy(update={"environment": "production"})
    refused = " ".join(inspect_settings(production).problems)
    assert f"KEYS_DIR holds private keys in clear in {custodial}" in refused
    assert "attest-gateway keys protect" in refused
    assert str(pseudonym_key_file(settings)) in refused

    out = _ok(env, "keys", "protect").output
    assert "protected" in out

    _nothing_in_clear(custodial, _secret_bytes(clear))
    assert clear_pseudonym not in pseudonym_key_file(settings).read_text()
    store = open_key_store(settings)
    ring = KeyRing.load_dir(custodial_keys_dir(settings), store)
    signing = ring.signing("gateway")
    assert not signing.in_memory
    assert signing.public_encoded == clear.current_signing.public_encoded
    held = ring.hpke_key(clear.current_hpke.key_id)
    assert held is not None
    assert held.public_encoded == clear.current_hpke.public_encoded
    assert load_pseudonym_key(settings, store) == clear_pseudonym.encode()
    refused = " ".join(inspect_settings(production).problems)
    assert "in clear" not in refused
    assert "PKCS11_MODULE" not in refused
    assert "nothing to do" in _ok(env, "keys", "protect").output


# --- the whole gateway with its keys in the token ---------------------------------------------


async def test_a_conversation_through_a_gateway_whose_keys_are_in_the_token(
    softhsm: SoftHsm, broker: TestKafka, tmp_path: Path
) -> None:
    """The in-process gateway (real broker, SQLite) with the token: the demo organisations'
    custodial keys are made in it, the request the clinic reads is signed inside the token,
    the reply sealed to the job centre is opened with its wrapped key, and nothing private
    is in clear in KEYS_DIR."""
    async with running_gateway(
        "sqlite",
        tmp_path,
        broker.bootstrap,
        pkcs11_module=softhsm.module,
        pkcs11_token_label=softhsm.token_label,
        pkcs11_pin=softhsm.pin,
        pkcs11_kek_label=_kek(),
    ) as h:
        conversation = await round_trip(h)
        gateway_keys = h.gw.keyring.orgs[h.settings.gateway_org_id]
        signer = next(
            k
            for k in gateway_keys.signing_keys
            if k.key_id == conversation.envelope.header.signer_key_id
        )
        assert not signer.in_memory
        verify(conversation.envelope, signer.key.public_key())
        custodial = custodial_keys_dir(h.settings)
        for path in [*custodial.glob("*.json"), pseudonym_key_file(h.settings)]:
            assert clear_key_records(path) == [], path


def test_serve_refuses_a_token_it_cannot_open_in_one_sentence(
    softhsm: SoftHsm, broker: TestKafka, tmp_path: Path
) -> None:
    env = {
        **_env(softhsm, tmp_path / "var"),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "PKCS11_TOKEN_LABEL": OTHER_TOKEN_LABEL,
        "PKCS11_PIN": "0000",
    }
    with json_logs():  # serve configures logging: its set-up must not outlive this test
        result = CliRunner().invoke(cli.app, ["serve"], env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]  # after the migrations' log lines
    assert last == f"error: PKCS11_PIN: the token '{OTHER_TOKEN_LABEL}' refused the PIN"

"""The key store port: key files as clear files (development) and as a token writes them
(a fake token at the port; the real one is tests/integration/test_pkcs11_keys.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attest_gateway.contracts.envelope import Suite
from attest_gateway.crypto.sealing import (
    CLEAR_FILES,
    KeyRing,
    KeyStoreError,
    OrgKeys,
    PrivateHpkeKey,
    read_secret_file,
    secret_file_text,
)
from attest_gateway.production import clear_key_records
from tests.support.keystore import FakeToken

SUITE: Suite = "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM"


def test_clear_files_keep_the_key_file_format_of_development(tmp_path: Path) -> None:
    keys = OrgKeys.generate("jc-test", SUITE)
    path = tmp_path / "jc-test.json"
    keys.save(path)
    records = json.loads(path.read_text())["keys"]
    assert set(records[0]) == {"purpose", "key_id", "suite", "x25519", "mlkem768_seed"}
    assert set(records[1]) == {"purpose", "key_id", "ed25519"}
    assert clear_key_records(path) == [keys.current_hpke.key_id, keys.current_signing.key_id]
    again = OrgKeys.load(path, CLEAR_FILES)
    assert again.current_hpke.public_encoded == keys.current_hpke.public_encoded
    assert again.current_signing.in_memory


def test_a_token_written_key_file_holds_nothing_in_clear_and_needs_the_token(
    tmp_path: Path,
) -> None:
    token = FakeToken()
    keys = OrgKeys("jc-test", [PrivateHpkeKey.generate(SUITE)], [token.new_signing_key()])
    path = tmp_path / "jc-test.json"
    keys.save(path, token)
    assert clear_key_records(path) == []
    loaded = OrgKeys.load(path, token)
    assert loaded.current_hpke.public_encoded == keys.current_hpke.public_encoded
    assert not loaded.current_signing.in_memory
    with pytest.raises(KeyStoreError, match="PKCS11_MODULE"):
        OrgKeys.load(path)


def test_the_key_ring_keeps_its_keys_when_a_changed_file_does_not_open(tmp_path: Path) -> None:
    token = FakeToken()
    keys = OrgKeys("gateway", [PrivateHpkeKey.generate(SUITE)], [token.new_signing_key()])
    path = tmp_path / "gateway.json"
    keys.save(path, token)
    ring = KeyRing.load_dir(tmp_path, token)
    data = json.loads(path.read_text())
    data["keys"][0]["key_id"] = "hpke-renamed"  # the wrap is bound to the key id
    path.write_text(json.dumps(data))
    os.utime(path, ns=(1, 1))
    assert ring.refresh(force=True) is False
    assert ring.hpke_key(keys.current_hpke.key_id) is not None


def test_a_secret_file_is_wrapped_by_a_token_and_clear_without(tmp_path: Path) -> None:
    path = tmp_path / "pseudonym.key"
    token = FakeToken()
    path.write_text(secret_file_text(b"ab" * 32, token, context="c"))
    assert clear_key_records(path) == []
    assert read_secret_file(path, token, context="c") == b"ab" * 32
    with pytest.raises(KeyStoreError):
        read_secret_file(path, token, context="other")
    path.write_text(secret_file_text(b"ab" * 32, CLEAR_FILES, context="c"))
    assert clear_key_records(path) == ["pseudonym.key"]
    assert read_secret_file(path, CLEAR_FILES, context="c") == b"ab" * 32

"""The partner client as a partner runs it, in a fresh interpreter: importing it (and its
command line) loads none of the gateway's server stack, and `attest-client open` prints the
Bundle. (How long it takes is measured in bench/client_start.py, not asserted here.)"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from attest_gateway.contracts.directory import OrganisationKeys, PublicKey
from attest_gateway.contracts.envelope import EnvelopeHeader, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.crypto.sealing import OrgKeys, seal

pytestmark = pytest.mark.slow

SERVER_STACK = ("sqlalchemy", "aiokafka", "alembic", "fastapi", "starlette", "uvicorn", "typer")
SERVER_MODULES = ("attest_gateway.config", "attest_gateway.infra", "attest_gateway.bootstrap")


def _loaded_after(statement: str) -> set[str]:
    probe = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_the_probe_sees_the_server_stack_where_it_is_loaded() -> None:
    loaded = _loaded_after("import attest_gateway.entrypoints.cli.main")
    assert {"sqlalchemy", "fastapi", "aiokafka"} <= loaded


@pytest.mark.parametrize(
    "statement", ["import attest_gateway.client", "import attest_gateway.client.cli"]
)
def test_the_client_loads_none_of_the_server_stack(statement: str) -> None:
    loaded = _loaded_after(statement)
    found = sorted(
        m for m in loaded if m.split(".")[0] in SERVER_STACK or m.startswith(SERVER_MODULES)
    )
    assert found == []


def test_attest_client_open_prints_the_bundle(tmp_path: Path) -> None:
    suite: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
    sender, receiver = OrgKeys.generate("jc-x", suite), OrgKeys.generate("psyk-x", suite)
    at = dt.datetime(2026, 10, 29, 9, 30, tzinfo=dt.UTC)
    header = EnvelopeHeader(
        message_id="m-1", bundle_id="b-1", conversation_id="c-1",
        message_type=MessageType.ATTEST_REQUEST, sender="jc-x", receiver="psyk-x", suite=suite,
        recipient_key_id=receiver.current_hpke.key_id, signer="jc-x",
        signer_key_id=sender.current_signing.key_id, created_at=at,
    )  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "message"}
    sealed = seal(
        orjson.dumps(bundle), header, receiver.current_hpke.public(), sender.current_signing
    )
    signing = sender.current_signing
    published = OrganisationKeys(
        org_id="jc-x",
        keys=[
            PublicKey(
                key_id=signing.key_id, purpose="signing", algorithm="Ed25519",
                public_key=signing.public_encoded, valid_from=at, usable=True,
            )
        ],
    )  # fmt: skip
    (tmp_path / "item.json").write_text(
        json.dumps({"message_id": "m-1", "envelope": sealed.model_dump(mode="json")})
    )
    (tmp_path / "signer.json").write_text(published.model_dump_json())
    receiver.save(tmp_path / "keys.json")
    result = subprocess.run(
        [sys.executable, "-m", "attest_gateway.client.cli", "open", "item.json",
         "--keys", "keys.json", "--signer-keys", "signer.json"],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == bundle

"""End to end: `attest-gateway serve --dev-tls` (what `make run` starts) speaks HTTPS only, and
authenticates organisations by their pinned client certificates (mutual TLS) as well as by
API keys. Every way a certificate can be wrong is refused."""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from attest_gateway.core.directory import client_cert_key_id
from attest_gateway.devtools import devca
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.infra.kafka.embedded import free_port
from tests.support.harness import attest_request_body, wait_for
from tests.support.processes import CLI, Proc, base_env, wait_until_listening

pytestmark = pytest.mark.slow

JC, OTHER_JC, PSY = "jc-koebenhavn", "jc-aarhus", "psyk-kbh"


@dataclass
class TlsServer:
    proc: Proc
    base_url: str
    var_dir: Path

    @property
    def ca(self) -> Path:
        return self.var_dir / "tls" / "ca.crt"

    def creds(self) -> dict[str, dict[str, str]]:
        data: dict[str, dict[str, str]] = json.loads(
            (self.var_dir / "demo-credentials.json").read_text("utf-8")
        )
        return data

    def context(self, org_id: str | None = None, *, ca: Path | None = None) -> ssl.SSLContext:
        """A client TLS context trusting the development CA, with an org's certificate."""
        context = ssl.create_default_context(cafile=str(ca or self.ca))
        if org_id is not None:
            entry = self.creds()[org_id]
            context.load_cert_chain(entry["client_cert"], entry["client_key"])
        return context

    def client(self, org_id: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=self.context(org_id), timeout=10)


@pytest_asyncio.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[TlsServer]:
    port = free_port()
    var_dir = tmp_path / "var"
    env = base_env(VAR_DIR=str(var_dir), API_PORT=str(port))
    env.pop("DATABASE_URL", None)
    proc = Proc("api", ["serve", "--dev-tls"], env, tmp_path, tmp_path / "serve.log").start()
    server = TlsServer(proc, f"https://localhost:{port}", var_dir)
    try:
        await wait_until_listening(port, proc, within=60)

        async def healthy() -> bool:
            try:
                async with server.client() as client:
                    return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(healthy, within=60, interval=0.2)
        yield server
    finally:
        proc.terminate()


async def test_client_certificates_authenticate_organisations(tls_server: TlsServer) -> None:
    s = tls_server
    body = attest_request_body(jobcenter_gln=_gln(s, JC))
    async with s.client(JC) as jc:  # no Authorization header: the certificate is the identity
        accepted = await jc.post("/jobcenter/v1/attest-requests", json=body)
        assert accepted.status_code == 202, accepted.text
        message_id = accepted.json()["message_id"]
        conversation = accepted.json()["conversation_id"]
        assert (await jc.get(f"/jobcenter/v1/attest-requests/{conversation}")).status_code == 200

    async with s.client(PSY) as psy:

        async def in_mailbox() -> bool:
            response = await psy.get("/medcom/v1/mailbox")
            assert response.status_code == 200, response.text
            return any(item["message_id"] == message_id for item in response.json()["items"])

        await wait_for(in_mailbox, within=60)

    # The other job centre, by its own certificate, does not see the conversation.
    async with s.client(OTHER_JC) as other:
        response = await other.get(f"/jobcenter/v1/attest-requests/{conversation}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"


async def test_api_keys_work_beside_certificates(tls_server: TlsServer) -> None:
    s = tls_server
    key = s.creds()[JC]["api_key"]
    async with s.client() as anonymous:
        assert (await anonymous.get("/jobcenter/v1/inbox")).status_code == 401
        with_key = await anonymous.get(
            "/jobcenter/v1/inbox", headers={"Authorization": f"Bearer {key}"}
        )
        assert with_key.status_code == 200, with_key.text
    async with s.client(PSY) as psy:  # a certificate of one org and the API key of another
        response = await psy.get("/jobcenter/v1/inbox", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
        assert response.json()["code"] == "credentials-disagree"


async def test_certificates_the_gateway_must_refuse(tls_server: TlsServer, tmp_path: Path) -> None:
    s = tls_server
    # 1. Not chained to the configured client CA: the handshake itself fails.
    stranger_ca = devca.ensure_ca(tmp_path / "other-ca")
    foreign = devca.issue_client_certificate(stranger_ca, JC)
    context = s.context()
    context.load_cert_chain(foreign.cert, foreign.key)
    async with httpx.AsyncClient(base_url=s.base_url, verify=context, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/jobcenter/v1/inbox")

    # 2. Chained to the CA but pinned to no organisation: 401 with its own code.
    unpinned = devca.issue_client_certificate(devca.DevCA(s.ca.parent), "stranger")
    context = s.context()
    context.load_cert_chain(unpinned.cert, unpinned.key)
    async with httpx.AsyncClient(base_url=s.base_url, verify=context, timeout=10) as client:
        response = await client.get("/jobcenter/v1/inbox")
        assert response.status_code == 401
        assert response.json()["code"] == "unknown-client-certificate"

    # 3. A pinned certificate that is revoked stops working at once.
    async with s.client(OTHER_JC) as other:
        assert (await other.get("/jobcenter/v1/inbox")).status_code == 200
        _revoke_client_certificate(s, OTHER_JC)
        response = await other.get("/jobcenter/v1/inbox")
        assert response.status_code == 401
        assert response.json()["code"] == "unknown-client-certificate"


async def test_only_https_with_the_right_trust(tls_server: TlsServer) -> None:
    s = tls_server
    # A client that does not trust the development CA refuses the server.
    async with httpx.AsyncClient(base_url=s.base_url, timeout=10) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
    # Plain HTTP to the port gets no HTTP answer.
    plain = s.base_url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain, timeout=10) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/healthz")


def _revoke_client_certificate(s: TlsServer, org_id: str) -> None:
    """The operator's way: `keys revoke <key id>` in another process, on the same store."""
    pem = Path(s.creds()[org_id]["client_cert"]).read_bytes()
    key_id = client_cert_key_id(devca.certificate_fingerprint(pem))
    result = subprocess.run(
        [CLI, "keys", "revoke", key_id, "--reason", "test"],
        env=s.proc.env,
        cwd=s.proc.cwd,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    with sqlite3.connect(s.var_dir / "gateway.db") as db:
        revoked = db.execute("SELECT revoked_at FROM org_keys WHERE key_id = ?", (key_id,))
        assert revoked.fetchone()[0] is not None


def _gln(s: TlsServer, org_id: str) -> str:
    gln = next(o.gln for o in DEMO_ORGS if o.id == org_id)
    assert gln is not None
    return gln

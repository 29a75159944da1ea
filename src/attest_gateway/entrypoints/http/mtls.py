"""Mutual TLS on the API: uvicorn asks for a client certificate, and the app learns which one.

uvicorn verifies the client's chain against `API_TLS_CLIENT_CAFILE` during the handshake but
does not pass the certificate to the app. `ClientCertHttpToolsProtocol` (and the h11 twin)
read it from the connection's `ssl_object` once per connection and add it to every request's
scope as the ASGI TLS extension (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM).
`auth.authenticated` then finds the organisation whose pinned certificate it is.

Certificates are optional at the TLS layer (`CERT_OPTIONAL`), so systems that cannot do mTLS
still connect and authenticate with an API key; a certificate that does not chain to the
configured CA ends the handshake.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.protocols.http.h11_impl import H11Protocol

from attest_gateway.config import Settings
from attest_gateway.core.directory import client_cert_key_id
from attest_gateway.devtools import devca
from attest_gateway.devtools.devca import certificate_fingerprint
from attest_gateway.services import admin

try:  # httptools is the faster parser; it comes with uvicorn[standard]
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    HttpToolsProtocol = None  # type: ignore[misc,assignment]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _peer_certificate_pem(transport: asyncio.BaseTransport) -> str | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der) if der else None


def _with_client_certificate(app: ASGIApp, pem: str) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        extensions = dict(scope.get("extensions") or {})
        extensions["tls"] = {**extensions.get("tls", {}), "client_cert_chain": [pem]}
        scope["extensions"] = extensions
        await app(scope, receive, send)

    return wrapped


class ClientCertH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        pem = _peer_certificate_pem(transport)
        if pem is not None:
            self.app = _with_client_certificate(self.app, pem)


if HttpToolsProtocol is not None:

    class ClientCertHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            pem = _peer_certificate_pem(transport)
            if pem is not None:
                self.app = _with_client_certificate(self.app, pem)

    PROTOCOL: type[asyncio.Protocol] = ClientCertHttpToolsProtocol
else:  # pragma: no cover
    PROTOCOL = ClientCertH11Protocol


def client_certificate(scope: Scope) -> str | None:
    """The PEM client certificate of the connection, if the client presented one."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain")
    return chain[0] if chain else None


@lru_cache(maxsize=1024)
def fingerprint_of(pem: str) -> str:
    """SHA-256 fingerprint of a PEM certificate (cached: a connection sends it every request)."""
    return certificate_fingerprint(pem.encode("ascii"))


# --- `serve --dev-tls`: HTTPS and client certificates out of the box ------------------------


async def ensure_development_tls(engine: AsyncEngine, settings: Settings) -> dict[str, Path]:
    """Development only: a local CA under VAR_DIR/tls, a server certificate for localhost,
    and a client certificate for each demo organisation, pinned in the directory (audited, as
    `keys add-cert` does) and listed in the demo credentials file. Returns the API_TLS_*
    settings to serve with."""
    if settings.environment == "production":
        raise RuntimeError("development certificates are for development only")
    ca = devca.ensure_ca(settings.var_dir / "tls")
    server = devca.ensure_server_certificate(ca)
    creds_path = settings.var_dir / "demo-credentials.json"
    creds: dict[str, dict[str, str]] = (
        json.loads(creds_path.read_text("utf-8")) if creds_path.exists() else {}
    )
    async with engine.begin() as conn:
        pinned = {k.key_id for org in await admin.list_orgs(conn) for k in org.keys}
        for org_id, entry in creds.items():
            pair = devca.ensure_client_certificate(ca, org_id)
            pem = pair.cert.read_bytes()
            if client_cert_key_id(certificate_fingerprint(pem)) not in pinned:
                await admin.pin_client_certificate(
                    conn, settings, org_id, pem, actor="setup", source="cli"
                )
            entry["client_cert"], entry["client_key"] = str(pair.cert), str(pair.key)
    if creds:
        devca.write_private(creds_path, json.dumps(creds, indent=2, ensure_ascii=False).encode())
    return {
        "api_tls_certfile": server.cert,
        "api_tls_keyfile": server.key,
        "api_tls_client_cafile": ca.cert,
    }

"""The webhook poster (ports/webhooks.py `Poster`) on httpx: one POST, no redirects followed,
timeouts on connect and read, TLS verified (the system's CAs or WEBHOOK_CA_FILE), optionally
the gateway's client certificate (mutual TLS); the answer's body is never read.

Against server-side request forgery the host name is resolved here, every address checked
(core/webhooks.py `blocked_address`: private, loopback, link-local …) unless private
addresses are allowed (development only), and the connection made to a checked address,
with the name kept for the `Host` header, SNI and the certificate check: a name that
resolves to something else a moment later (DNS rebinding) is not asked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

import httpx

from attest_gateway import __version__
from attest_gateway.core.webhooks import blocked_address
from attest_gateway.ports.webhooks import PostResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def tls_context(
    ca_file: Path | None, client_cert: Path | None, client_key: Path | None
) -> ssl.SSLContext:
    """The context deliveries are sent with: the CA to trust (default: the system's) and the
    client certificate, when given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    if client_cert is not None:
        context.load_cert_chain(str(client_cert), str(client_key) if client_key else None)
    return context


def _error_of(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect-timeout"
    if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return "read-timeout"
    if isinstance(exc, httpx.ConnectError):
        return "tls-failed" if "SSL" in str(exc) or "certificate" in str(exc) else "connect-failed"
    return "transport-error"


class HttpxPoster:
    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext,
        allow_private_addresses: bool,
    ) -> None:
        self._allow_private = allow_private_addresses
        self._client = httpx.AsyncClient(
            verify=tls,
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the address check must hold
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in found:
                found.append(address)
        return found

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> PostResult:
        target = httpx.URL(url)
        host = target.host
        port = target.port or 443
        try:
            addresses = await self._addresses(host, port)
        except OSError:
            return PostResult(None, "dns-failed")
        if not addresses:
            return PostResult(None, "dns-failed")
        if not self._allow_private and any(blocked_address(a) for a in addresses):
            return PostResult(None, "blocked-address")
        sent = {
            **headers,
            "content-type": "application/json",
            "user-agent": f"attest-gateway/{__version__}",
            "host": target.netloc.decode("ascii"),
        }
        error = "connect-failed"
        for address in addresses:  # the first that takes the connection
            pinned = target.copy_with(host=str(address))
            try:
                async with self._client.stream(
                    "POST", pinned, content=body, headers=sent, extensions={"sni_hostname": host}
                ) as response:
                    code = response.status_code  # the body is never read
            except httpx.ConnectError as exc:
                error = _error_of(exc)
                continue
            except httpx.HTTPError as exc:
                return PostResult(None, _error_of(exc))
            if 300 <= code < 400:
                return PostResult(code, "redirect-not-followed")
            return PostResult(code, None if 200 <= code < 300 else f"http-{code}")
        return PostResult(None, error)

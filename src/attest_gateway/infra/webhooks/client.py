"""The webhook poster (ports/webhooks.py `Poster`) on httpx: one POST, no redirects followed,
timeouts on connect and read, TLS verified (the system's CAs or WEBHOOK_CA_FILE), optionally
the gateway's client certificate (mutual TLS); the answer's body is never stored.

Against server-side request forgery the host name is resolved here, every address checked
(core/webhooks.py `blocked_address`: private, loopback, link-local …) unless private
addresses are allowed (development only), and the connection made to a checked address,
with the name kept for the `Host` header, SNI and the certificate check: a name that
resolves to something else a moment later (DNS rebinding) is not asked again.

Connections are kept alive, in one pool per endpoint host (name and port). A connection is
kept only once the answer's body was read to its end, so a short body (up to DRAIN_BYTES,
within the read timeout) is read and dropped; a longer or slower one is not read further
and its connection is closed. A connection was
made with its name's SNI and certificate check, so it carries that name's deliveries only.
One pool for all would key connections by the checked address alone and hand one opened
for a name to another name at the same address, unchecked.
"""

from __future__ import annotations

import asyncio
import contextlib
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

DRAIN_BYTES = 64 * 1024  # of an answer's body read (and dropped) to keep its connection


async def _drain(response: httpx.Response) -> None:
    """Read the body to its end and drop it, unless it is longer than DRAIN_BYTES."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > DRAIN_BYTES:
            return


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
        self._tls = tls
        self._timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        self._read_timeout = read_timeout
        self._clients: dict[tuple[str, int], httpx.AsyncClient] = {}

    def _client(self, host: str, port: int) -> httpx.AsyncClient:
        """The client (a pool of kept-alive connections) of one endpoint host."""
        found = self._clients.get((host, port))
        if found is None:
            found = httpx.AsyncClient(
                verify=self._tls,
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: the address check must hold
                timeout=self._timeout,
            )
            self._clients[(host, port)] = found
        return found

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

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
        client = self._client(host, port)
        for address in addresses:  # the first that takes the connection
            pinned = target.copy_with(host=str(address))
            try:
                async with client.stream(
                    "POST", pinned, content=body, headers=sent, extensions={"sni_hostname": host}
                ) as response:
                    code = response.status_code
                    # read and dropped, so that the connection carries the next delivery
                    with contextlib.suppress(httpx.HTTPError, TimeoutError):
                        async with asyncio.timeout(self._read_timeout):
                            await _drain(response)
            except httpx.ConnectError as exc:
                error = _error_of(exc)
                continue
            except httpx.HTTPError as exc:
                return PostResult(None, _error_of(exc))
            if 300 <= code < 400:
                return PostResult(code, "redirect-not-followed")
            return PostResult(code, None if 200 <= code < 300 else f"http-{code}")
        return PostResult(None, error)

"""The PROXY protocol (v1 and v2, haproxy.org/download/3.0/doc/proxy-protocol.txt) in front
of uvicorn: the client's address when a load balancer passes TLS through (HAProxy in `mode
tcp` with `send-proxy-v2`), where no HTTP header can carry it.

uvicorn has no PROXY protocol support, so `serve` with PROXY_PROTOCOL=true listens itself
(`ProxyProtocolServer.startup`): it accepts each connection, and when the peer is one of
TRUSTED_PROXIES and the connection starts with a PROXY header, reads exactly that header from
the socket (before TLS, which the header precedes), then hands the socket to uvicorn's HTTP
protocol (`loop.connect_accepted_socket`, with the API's TLS context) with the header's
source address as the client. A connection from any other peer, or one from a trusted proxy
without a header (a health check, Prometheus), is served as it is, its TCP peer the client;
a malformed header ends the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn

from attest_gateway.entrypoints.http.middleware import Network, is_trusted

log = structlog.get_logger(__name__)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_MAX_PAYLOAD = 4096  # addresses and TLVs; HAProxy's are far smaller
HEADER_TIMEOUT_SECONDS = 5.0
STARTUP_FAILURE = 3  # uvicorn's exit code when the server cannot start
Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY protocol header the gateway reads."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header: `source` is the client, None for a LOCAL (health check) or UNKNOWN
    connection (the TCP peer is the client then)."""

    source: Address | None


def _ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError("the address is not of the family named")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError("not a port")
    return int(text)


def parse_v1(line: bytes) -> ProxyHeader:
    """`PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n` or `PROXY UNKNOWN …\\r\\n`."""
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n") or len(line) > V1_MAX:
        raise ProxyHeaderError("not a PROXY v1 line")
    parts = line[:-2].decode("ascii", "replace").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("a PROXY v1 line names TCP4, TCP6 or UNKNOWN and four fields")
    version = 4 if parts[1] == "TCP4" else 6
    _ip(parts[3], version)
    _port(parts[5])
    return ProxyHeader((_ip(parts[2], version), _port(parts[4])))


def parse_v2(header: bytes) -> ProxyHeader:
    """The 16-byte v2 header and its payload (addresses, then TLVs the gateway skips)."""
    if len(header) < 16 or header[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("not a PROXY v2 header")
    version, command = header[12] >> 4, header[12] & 0x0F
    family = header[13]
    (length,) = struct.unpack("!H", header[14:16])
    payload = header[16:]
    if version != 2 or command not in (0, 1):
        raise ProxyHeaderError("PROXY v2 with an unknown version or command")
    if len(payload) != length:
        raise ProxyHeaderError("the PROXY v2 payload is not of its stated length")
    if command == 0:  # LOCAL: the proxy's own connection (health checks)
        return ProxyHeader(None)
    if family in (0x11, 0x12):  # TCP or UDP over IPv4
        if length < 12:
            raise ProxyHeaderError("the PROXY v2 IPv4 addresses are cut short")
        source = str(ipaddress.IPv4Address(payload[0:4]))
        (port,) = struct.unpack("!H", payload[8:10])
        return ProxyHeader((source, port))
    if family in (0x21, 0x22):  # TCP or UDP over IPv6
        if length < 36:
            raise ProxyHeaderError("the PROXY v2 IPv6 addresses are cut short")
        source = str(ipaddress.IPv6Address(payload[0:16]))
        (port,) = struct.unpack("!H", payload[32:34])
        return ProxyHeader((source, port))
    return ProxyHeader(None)  # UNSPEC or a UNIX socket: no IP address to name


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Up to `n` bytes of what waits on the socket, left there; at least one (b"" at EOF)."""
    await _readable(loop, sock)
    return sock.recv(n, socket.MSG_PEEK)


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProxyHeaderError("the connection ended inside the PROXY header")
        data += chunk
    return data


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket
) -> ProxyHeader | None:
    """The PROXY header the connection starts with, read off the socket to its last byte and
    no further; None (nothing read) when it starts with anything else."""
    head = b""
    while True:
        head = await _peek(loop, sock, 16)
        if not head:
            raise ProxyHeaderError("the connection ended before its first bytes")
        v1, v2 = V1_PREFIX.startswith(head[:6]), V2_SIGNATURE.startswith(head[:12])
        if not v1 and not v2:
            return None  # TLS or HTTP straight away
        if (v1 and len(head) >= len(V1_PREFIX)) or (v2 and len(head) >= 16):
            break
        await asyncio.sleep(0.01)  # a few bytes so far: wait for the rest of the start
    if head.startswith(V1_PREFIX):
        line = b""
        while not line.endswith(b"\r\n"):
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("the PROXY v1 line is too long")
            line += await _read_exactly(loop, sock, 1)
        return parse_v1(line)
    fixed = await _read_exactly(loop, sock, 16)
    (length,) = struct.unpack("!H", fixed[14:16])
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("the PROXY v2 payload is too long")
    return parse_v2(fixed + await _read_exactly(loop, sock, length))


def _proxied_protocol_class(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class, with the client set from the PROXY header (the
    `proxied_client` attribute the factory gives each connection) once it is connected."""

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        base.connection_made(self, transport)
        if self.proxied_client is not None:
            self.client = self.proxied_client

    return type(
        "Proxied" + base.__name__,
        (base,),
        {"connection_made": connection_made, "proxied_client": None},
    )


class _Listener:
    """What uvicorn's shutdown closes (`Server.servers`): the accept loop and its socket."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        return None


class ProxyProtocolServer(uvicorn.Server):
    """uvicorn's server, listening itself to read PROXY headers from `proxies`."""

    def __init__(self, config: uvicorn.Config, proxies: tuple[Network, ...]) -> None:
        super().__init__(config)
        self.proxies = proxies
        self._connections: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config
        loop = asyncio.get_running_loop()
        protocol_class = _proxied_protocol_class(config.http_protocol_class)
        try:
            infos = await loop.getaddrinfo(
                config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(config.backlog)
            sock.setblocking(False)
        except OSError as exc:
            log.error("http.listen_failed", error=str(exc))
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)

        def create_protocol(client: Address | None) -> Callable[[], asyncio.Protocol]:
            def factory() -> asyncio.Protocol:
                protocol = protocol_class(  # type: ignore[call-arg]
                    config=config,
                    server_state=self.server_state,
                    app_state=self.lifespan.state,
                    _loop=loop,
                )
                protocol.proxied_client = client  # type: ignore[attr-defined]
                return protocol

            return factory

        async def serve_connection(conn: socket.socket, peer: Any) -> None:
            client: Address | None = None
            if is_trusted(str(peer[0]), self.proxies):
                try:
                    async with asyncio.timeout(HEADER_TIMEOUT_SECONDS):
                        header = await read_proxy_header(loop, conn)
                except (ProxyHeaderError, TimeoutError, OSError) as exc:
                    log.warning("http.proxy_header_refused", peer=str(peer[0]), error=str(exc))
                    conn.close()
                    return
                client = header.source if header is not None else None
            try:
                await loop.connect_accepted_socket(create_protocol(client), conn, ssl=config.ssl)
            except (OSError, ssl.SSLError, TimeoutError):
                conn.close()  # the handshake failed or the peer left: nothing to serve

        async def accept() -> None:
            while True:
                try:
                    conn, peer = await loop.sock_accept(sock)
                except OSError as exc:  # out of file descriptors, say: try again shortly
                    log.warning("http.accept_failed", error=str(exc))
                    await asyncio.sleep(0.1)
                    continue
                conn.setblocking(False)
                task = loop.create_task(serve_connection(conn, peer))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)

        self.servers = [_Listener(sock, loop.create_task(accept()))]  # type: ignore[list-item]
        self.started = True

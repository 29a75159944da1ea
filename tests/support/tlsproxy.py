"""A small TLS-terminating TCP proxy for tests: TLS (optionally mutual) on its port, plain TCP
to one upstream (the embedded broker, which has no working TLS of its own).

It runs its own event loop in a background thread, so in-process aiokafka clients and gateway
subprocesses can both use it. It counts what crosses it (TLS connections forwarded, bytes each
way, client certificates seen, handshakes refused and why) and remembers the local ports of its
upstream connections, so a test can show that nothing but the proxy talked to the upstream
(`established_clients_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from attest_gateway.infra.kafka.embedded import free_port

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    """What crossed the proxy so far (a copy: see `TlsProxy.stats()`)."""

    connections: int = 0  # TLS handshakes that succeeded and were forwarded upstream
    bytes_to_upstream: int = 0  # decrypted client bytes written to the upstream
    bytes_to_clients: int = 0  # upstream bytes sent back encrypted
    client_subjects: list[str] = field(default_factory=list)  # CN of each client certificate
    refused: list[str] = field(default_factory=list)  # why each refused handshake failed
    upstream_ports: set[int] = field(default_factory=set)  # local ports of upstream sockets


def _common_name(peercert: object) -> str:
    if not isinstance(peercert, dict):
        return ""
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class TlsProxy:
    """`start()` (or a `with` block), then clients connect to `bootstrap`.

    `client_ca` set: clients must present a certificate signed by it (mutual TLS)."""

    def __init__(
        self,
        upstream_port: int,
        *,
        certfile: Path,
        keyfile: Path,
        client_ca: Path | None = None,
        port: int | None = None,
        upstream_host: str = "127.0.0.1",
        handshake_timeout: float = 10.0,
    ) -> None:
        self.port = port or free_port()
        self.upstream = (upstream_host, upstream_port)
        self.handshake_timeout = handshake_timeout
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(certfile), str(keyfile))
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
        self._context = context
        self._stats = ProxyStats()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> ProxyStats:
        with self._lock:
            return dataclasses.replace(
                self._stats,
                client_subjects=list(self._stats.client_subjects),
                refused=list(self._stats.refused),
                upstream_ports=set(self._stats.upstream_ports),
            )

    def start(self, timeout: float = 10.0) -> TlsProxy:
        self._thread = threading.Thread(target=self._main, name="tls-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the TLS proxy did not start in time")
        if self._error is not None:
            raise RuntimeError("the TLS proxy failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by start(), or lost at shutdown
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        listener = socket.create_server(("127.0.0.1", self.port), backlog=64)
        listener.setblocking(False)
        acceptor = asyncio.create_task(self._accept_loop(listener))
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
            listener.close()
            for task in list(self._handlers):
                task.cancel()
            if self._handlers:
                await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._handle(sock))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, sock: socket.socket) -> None:
        # The handshake is awaited here (not inside a server), so a refused one is counted.
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=self._context,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError, ConnectionError) as exc:
            with self._lock:
                self._stats.refused.append(f"{type(exc).__name__}: {exc}")
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        subject = _common_name(writer.get_extra_info("peercert"))
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        with self._lock:
            self._stats.connections += 1
            self._stats.client_subjects.append(subject)
            self._stats.upstream_ports.add(up_writer.get_extra_info("sockname")[1])
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, to_upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, to_upstream=False)),
        ]
        try:
            # Kafka never half-closes: when one side ends, the connection is over.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (up_writer, writer):
                w.close()
            for w in (up_writer, writer):
                with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
                    await asyncio.wait_for(w.wait_closed(), 2.0)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, to_upstream: bool
    ) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await src.read(_CHUNK):
                dst.write(data)
                await dst.drain()
                with self._lock:
                    if to_upstream:
                        self._stats.bytes_to_upstream += len(data)
                    else:
                        self._stats.bytes_to_clients += len(data)


def established_clients_of(port: int, host: str = "127.0.0.1") -> set[int]:
    """The local ports of this machine's established TCP connections to `host:port`
    (Linux, from /proc/net/tcp): who is connected to the upstream right now."""
    wanted_ip = "".join(f"{int(octet):02X}" for octet in reversed(host.split(".")))
    wanted = f"{wanted_ip}:{port:04X}"
    clients: set[int] = set()
    for line in Path("/proc/net/tcp").read_text("ascii").splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if remote == wanted and state == "01":  # TCP_ESTABLISHED
            clients.add(int(local.rsplit(":", 1)[1], 16))
    return clients

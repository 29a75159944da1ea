"""A real HTTPS webhook receiver for the tests: uvicorn on 127.0.0.1 with a certificate of
the development CA, demanding the gateway's client certificate (mutual TLS), verifying every
delivery with the `standardwebhooks` library exactly as the README shows, and answering as
the test says (per path: a status code, a delay, a redirect). Verified deliveries are put on
a queue per path, so a test awaits them instead of polling."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from attest_gateway.devtools.devca import DevCA, issue_server_certificate

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]


@dataclass
class Behaviour:
    """How a path answers its next requests: each call pops the first of `script` (a status
    code, or ("slow", seconds), or ("redirect", location)); when empty, `default`."""

    script: list[Any] = field(default_factory=list)
    default: Any = 204


class Receiver:
    def __init__(self, ca: DevCA) -> None:
        self._ca = ca
        self.secrets: dict[str, list[str]] = {}  # path → the secrets it verifies with
        self.behaviour: dict[str, Behaviour] = {}
        self.queues: dict[str, asyncio.Queue[Delivery]] = {}
        self.seen: list[tuple[str, str]] = []  # (path, webhook-id) of every request, verified
        self.delivered: list[Delivery] = []  # every verified request answered 2xx
        self.refused = 0  # requests whose signature did not verify
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def queue(self, path: str) -> asyncio.Queue[Delivery]:
        return self.queues.setdefault(path, asyncio.Queue())

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"

    async def next(self, path: str) -> Delivery:
        """The path's next verified delivery (awaited, not polled; a minute at most)."""
        return await asyncio.wait_for(self.queue(path).get(), 60)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        payload: dict[str, Any] | None = None
        for secret in self.secrets.get(path, []):
            with contextlib.suppress(WebhookVerificationError):
                payload = Webhook(secret).verify(body, headers)
                break
        if payload is None:
            self.refused += 1
            await _answer(send, 400)
            return
        self.seen.append((path, headers["webhook-id"]))
        behaviour = self.behaviour.setdefault(path, Behaviour())
        action = behaviour.script.pop(0) if behaviour.script else behaviour.default
        if isinstance(action, tuple) and action[0] == "slow":
            await asyncio.sleep(action[1])
            action = 204
        if isinstance(action, tuple) and action[0] == "redirect":
            await _answer(send, 302, [(b"location", action[1].encode())])
            return
        if 200 <= action < 300:
            got = Delivery(path, headers, body, payload)
            self.delivered.append(got)
            self.queue(path).put_nowait(got)
        await _answer(send, action)

    async def start(self, port: int = 0) -> None:
        server_pair = issue_server_certificate(self._ca, "webhook-receiver")
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(server_pair.cert),
            ssl_keyfile=str(server_pair.key),
            ssl_ca_certs=str(self._ca.cert),
            ssl_cert_reqs=ssl.CERT_REQUIRED,  # the gateway's client certificate (mutual TLS)
            log_level="warning",
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:  # a few milliseconds; a failed start raises here
            if self._task.done():
                self._task.result()
                raise RuntimeError("the receiver did not start")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            # The gateway keeps its connections alive between deliveries; an idle one does not
            # answer the TLS close, which uvicorn's graceful shutdown would wait 30 s for.
            self._server.force_exit = True
            await self._task
            self._server = None


async def _answer(
    send: Send, status: int, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    body = b"" if status == 204 else orjson.dumps({"ok": status < 300})  # never read
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def receiving(ca: DevCA) -> AsyncIterator[Receiver]:
    receiver = Receiver(ca)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()

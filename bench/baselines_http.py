"""The HTTP limit of this machine: the least a service can do per accepted request.

A minimal FastAPI app (``python -m bench.baselines_http --port P --bootstrap B --topic T``)
served by uvicorn in its own process with the gateway's uvicorn settings (entrypoints/cli/main.py:
uvloop and httptools when installed, no access log, lifespan on), with one endpoint,
``POST /produce``: read the body, produce one record of the size of the gateway's record
(the sealed envelope; the body padded to ``--record-bytes``) to Kafka with aiokafka
(acks="all", ``send_and_wait``, the gateway's producer settings), answer 202 with a
conversation id. No database, no validation, no crypto.

The load generator (bench/loadgen.py) runs in a third process and sends the same
gateway-shaped bodies it sends to the gateway.

Figures:

- ``http.minimal.max``: requests/s, closed loop (C concurrent workers).
- ``http.minimal.p50@R``, ``http.minimal.p99@R``: ms from the scheduled send time to the
  answer, open loop at R requests/s (R = 100, 500, and 1000 unless --quick).
- ``http.minimal.max_httpx``: the closed-loop maximum again with the load generator's httpx
  client instead of its raw asyncio client: how much the client itself costs.

Timed: only the load generator's offered-load window (from its first scheduled request to
the last answer). Not timed: starting the server and the producer, creating the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.common import BenchContext, Figure, console, percentile, repeat
from bench.loadgen import LoadResult, free_port, run_loadgen, stop_process, wait_http

# The record the gateway produces per request is its sealed envelope (MLKEM768+X25519 HPKE,
# the FHIR Bundle inside, signature): about this many bytes for the loadgen's bodies
# (measured from the gateway's outbox values in bench/gateway_ingest.py).
RECORD_BYTES = 7_730
CONCURRENCY = 32
RATES_FULL = (100, 500, 1000)
RATES_QUICK = (100, 500)


# --- the minimal server (its own process) ----------------------------------------------------


def create_app(bootstrap: str, topic: str, record_bytes: int) -> FastAPI:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            if topic not in await admin.list_topics():
                with suppress(TopicAlreadyExistsError):
                    await admin.create_topics([NewTopic(topic, 6, 1)])
        finally:
            await admin.close()
        # the gateway's producer settings (infra/kafka/connection.py make_producer)
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=2, request_timeout_ms=15_000
        )
        await producer.start()
        state["producer"] = producer
        try:
            yield
        finally:
            await producer.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/produce", status_code=202)
    async def produce(request: Request) -> JSONResponse:
        body = await request.body()
        conversation_id = str(uuid.uuid4())
        value = body + b" " * max(0, record_bytes - len(body))
        await state["producer"].send_and_wait(
            topic, value=value, key=conversation_id.encode("ascii")
        )
        return JSONResponse({"conversation_id": conversation_id}, status_code=202)

    return app


def serve(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--record-bytes", type=int, default=RECORD_BYTES)
    args = p.parse_args(argv)
    # the same uvicorn settings as `attest-gateway serve` (entrypoints/cli/main.py)
    uvicorn.Server(
        uvicorn.Config(
            create_app(args.bootstrap, args.topic, args.record_bytes),
            host="127.0.0.1",
            port=args.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    ).run()


# --- the suite -------------------------------------------------------------------------------


def _statuses_note(results: list[LoadResult]) -> str:
    bad = sum(r.non_accepted() for r in results)
    if not bad:
        return ""
    merged: dict[str, int] = {}
    for r in results:
        for k, v in r.statuses().items():
            merged[k] = merged.get(k, 0) + v
    return f"non-202 answers: {bad} ({merged})"


async def run(ctx: BenchContext) -> list[Figure]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out_dir = ctx.workdir / "http"
    out_dir.mkdir(parents=True, exist_ok=True)
    topic = f"bench-http-{uuid.uuid4().hex[:8]}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.baselines_http",
        "--port", str(port), "--bootstrap", ctx.bootstrap, "--topic", topic,
    )  # fmt: skip
    figures: list[Figure] = []
    duration_max = 3.0 if ctx.quick else 10.0
    try:
        await wait_http(f"{base}/readyz", proc)
        url = f"{base}/produce"

        for client, name, label in (
            ("raw", "http.minimal.max", "HTTP minimal (produce acks=all), max"),
            ("httpx", "http.minimal.max_httpx", "HTTP minimal, max with the httpx loadgen"),
        ):
            results: list[LoadResult] = []

            async def closed(
                i: int, client: str = client, into: list[LoadResult] = results
            ) -> float:
                res = await run_loadgen(
                    out_dir / f"max-{client}-{i}.json", url=url, mode="closed",
                    duration=duration_max, concurrency=CONCURRENCY, client=client,
                )  # fmt: skip
                into.append(res)
                return res.throughput()

            values = await repeat(ctx, name, closed)
            last = results[-1]
            cpu_per_req = last.meta["cpu_seconds"] / max(1, len(last.records)) * 1e6
            figures.append(
                Figure(
                    name=name,
                    label=label,
                    unit="requests/s",
                    runs=values,
                    notes=_statuses_note(results[-len(values) :]),
                    extra={
                        "concurrency": CONCURRENCY,
                        "duration_s": duration_max,
                        "loadgen_client": client,
                        "loadgen_cpu_us_per_request": round(cpu_per_req, 1),
                        "record_bytes": RECORD_BYTES,
                    },
                )
            )

        duration = 3.0 if ctx.quick else 15.0
        for rate in RATES_QUICK if ctx.quick else RATES_FULL:
            p99s: list[float] = []
            opens: list[LoadResult] = []

            async def open_loop(
                i: int, rate: int = rate, p99s: list[float] = p99s, opens: list[LoadResult] = opens
            ) -> float:
                res = await run_loadgen(
                    out_dir / f"open-{rate}-{i}.json", url=url, mode="open",
                    duration=duration, rate=rate,
                )  # fmt: skip
                lat = res.http_latencies_ms() or [float("nan")]
                opens.append(res)
                p99s.append(percentile(lat, 99))
                return percentile(lat, 50)

            p50s = await repeat(ctx, f"http.minimal.p50@{rate}", open_loop)
            recorded = opens[ctx.warmup :]
            p99s = p99s[ctx.warmup :]
            extra = {
                "rate": rate,
                "duration_s": duration,
                "achieved_per_s": [round(r.throughput(), 1) for r in recorded],
                "loadgen_send_lag_p99_ms": [round(r.send_lag_p99_ms(), 2) for r in recorded],
            }
            note = _statuses_note(recorded)
            figures += [
                Figure(
                    name=f"http.minimal.p50@{rate}",
                    label=f"HTTP minimal p50 at {rate}/s",
                    unit="ms",
                    runs=p50s,
                    higher_is_better=False,
                    notes=note,
                    extra=extra,
                ),
                Figure(
                    name=f"http.minimal.p99@{rate}",
                    label=f"HTTP minimal p99 at {rate}/s",
                    unit="ms",
                    runs=p99s,
                    higher_is_better=False,
                    notes=note,
                    extra=extra,
                ),
            ]
    finally:
        await stop_process(proc)
    console.print(f"  minimal server stopped (exit {proc.returncode})")
    return figures


if __name__ == "__main__":
    serve(sys.argv[1:])

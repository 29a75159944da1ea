"""A probe of the embedded broker's fetch, not a benchmark: how long after a record is sent
does an idle consumer have it, and what does a shorter `fetch_max_wait_ms` cost an idle
gateway?

1. Latency: a raw aiokafka producer (acks=all) and consumer on a fresh embedded broker; the
   consumer idles (its fetch waiting at the broker), then one record is sent at a random
   moment (0.1–0.4 s after the last), 30 times per wait: the time from the send to the
   consumer's `getmany` returning it, and the producer's acknowledgement.
2. Idle CPU: one `attest-gateway serve` (SQLite, bench/gateway_ingest.py's `gateway`) per
   `KAFKA_FETCH_MAX_WAIT_MS`, settled 10 s, then 30 s of nothing: the gateway process's and
   the broker's CPU, the waits interleaved, `--rounds` times.

    .venv/bin/python -m bench.fetch_wait --waits 500,50,25,10 [--idle-waits 50,25,10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from attest_gateway.infra.kafka.embedded import EmbeddedBroker
from bench.common import BenchContext, cpu_seconds
from bench.gateway_ingest import gateway

RECORDS = 30


async def latency(bootstrap: str, wait_ms: int) -> tuple[list[float], list[float]]:
    """(send → consumed ms, send → acknowledged ms) of RECORDS records on a fresh topic."""
    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=wait_ms,
    )
    await producer.start()
    await consumer.start()
    consumed: list[float] = []
    acked: list[float] = []
    try:
        await producer.send_and_wait(topic, b"warm-up")
        while not await consumer.getmany(timeout_ms=1000):
            pass
        for _ in range(RECORDS):
            await asyncio.sleep(random.uniform(0.1, 0.4))
            sent = time.perf_counter()
            await producer.send_and_wait(topic, b"x")
            acked.append((time.perf_counter() - sent) * 1000)
            while not await consumer.getmany(timeout_ms=1000):
                pass
            consumed.append((time.perf_counter() - sent) * 1000)
    finally:
        await consumer.stop()
        await producer.stop()
    return consumed, acked


async def idle_cpu(ctx: BenchContext, wait_ms: int) -> tuple[float, float]:
    """(gateway, broker) % of a core over 30 idle seconds."""
    assert ctx.broker_pid is not None
    settings = {"KAFKA_FETCH_MAX_WAIT_MS": str(wait_ms)}
    async with gateway(ctx, "sqlite", f"idle-{wait_ms}", settings=settings) as gw:
        await asyncio.sleep(10)
        g0, b0 = cpu_seconds(gw.proc.pid), cpu_seconds(ctx.broker_pid)
        await asyncio.sleep(30)
        g1, b1 = cpu_seconds(gw.proc.pid), cpu_seconds(ctx.broker_pid)
    return 100 * (g1 - g0) / 30, 100 * (b1 - b0) / 30


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered):.1f} ms (min {ordered[0]:.1f}, max {ordered[-1]:.1f})"


async def main(workdir: Path, waits: list[int], idle_waits: list[int], rounds: int) -> None:
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        for wait in waits:
            consumed, acked = await latency(broker.bootstrap, wait)
            print(
                f"fetch_max_wait_ms={wait}: send → consumed {_ms(consumed)}; "
                f"acknowledged {_ms(acked)}",
                flush=True,
            )
        ctx = BenchContext(bootstrap=broker.bootstrap, broker_pid=broker.pid, workdir=workdir)
        for i in range(rounds):
            for wait in idle_waits:
                gw, br = await idle_cpu(ctx, wait)
                print(
                    f"round {i + 1} KAFKA_FETCH_MAX_WAIT_MS={wait}: idle gateway {gw:.1f} % "
                    f"of a core, broker {br:.1f} %",
                    flush=True,
                )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waits", type=_ints, default=[500, 50, 25, 10])
    parser.add_argument("--idle-waits", type=_ints, default=[])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path("var/fetch-wait")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    asyncio.run(main(work, args.waits, args.idle_waits, args.rounds))

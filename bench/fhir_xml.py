"""What FHIR XML costs: ``python -m bench.fhir_xml``.

Times, in one process, the gateway's request Bundle (as the job-centre API builds it) and the
largest stored certified-system message (Epic's reply, 57 kB of XML) through the converter
(medcom/fhir_xml.py): JSON → XML (what sealing for an organisation that takes XML adds) and
XML → JSON (what an XML submission adds before the usual parse), against ``orjson`` reading the
same JSON and the gateway's own ``parse_bundle``. CPU time of the process (steadier than wall
time on a shared machine), medians of ``--runs`` rounds of ``--number`` calls each; the first
call (the element table's load) is timed apart, in wall time. Not a test: the figures go to
bench/RESULTS.md.

    python -m bench.fhir_xml --runs 7 --number 200
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from tests.unit.test_medcom_profiles import KINDS

from attest_gateway.medcom import fhir_xml
from attest_gateway.medcom.parse import parse_bundle

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "medcom"


def _request_bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = KINDS["request"]()  # the gateway's own request, as tested
    return bundle


def _median_us(call: Callable[[], object], runs: int, number: int) -> float:
    rounds = timeit.repeat(call, repeat=runs, number=number, timer=time.process_time)
    return statistics.median(rounds) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--number", type=int, default=200)
    args = parser.parse_args()

    started = time.perf_counter()
    fhir_xml.json_to_xml({"resourceType": "Basic", "code": {"text": "x"}})
    table_ms = (time.perf_counter() - started) * 1e3

    epic_xml = (FIXTURES / "verified" / "EPIC_Sundhedsplatformen.xml").read_bytes()
    cases = {
        "the gateway's request": _request_bundle(),
        "Epic's reply (certified)": fhir_xml.xml_to_json(epic_xml),
    }
    print(
        f"- When: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; Python "
        f"{platform.python_version()}; {args.runs} rounds of {args.number} calls, CPU time"
    )
    print(f"- first call (loads the element table), wall: {table_ms:.1f} ms\n")
    print(
        "| Bundle | JSON bytes | XML bytes | JSON → XML | XML → JSON | orjson.loads | "
        "parse_bundle |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, bundle in cases.items():
        as_json = orjson.dumps(bundle)
        as_xml = fhir_xml.json_to_xml(bundle)
        to_xml = _median_us(partial(fhir_xml.json_to_xml, bundle), args.runs, args.number)
        to_json = _median_us(partial(fhir_xml.xml_to_json, as_xml), args.runs, args.number)
        loads = _median_us(partial(orjson.loads, as_json), args.runs, args.number)
        parse = _median_us(partial(parse_bundle, bundle), args.runs, args.number)
        print(
            f"| {name} | {len(as_json):,} | {len(as_xml):,} | {to_xml:,.0f} µs | "
            f"{to_json:,.0f} µs | {loads:,.0f} µs | {parse:,.0f} µs |"
        )


if __name__ == "__main__":
    main()

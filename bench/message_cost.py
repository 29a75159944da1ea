"""The pure cost of one message: ``python -m bench.message_cost``.

Builds the attest request Bundle (with the citizen's consent where the builder takes it),
serialises, parses and reads it back; the same for a text reply to it. Printed: the median
and the spread of 5 repeats of 2,000 messages each, in µs of CPU time per message (CPU time,
not wall time: the machine is shared and its load moves wall times by half). Run it on two
checkouts (``PYTHONPATH=<checkout>/src``), interleaved, to compare them. Not a test: the
figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from attest_gateway.medcom.build import (
    PersonName,
    SegmentAuthor,
    build_attest_reply,
    build_attest_request,
)
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import OrgIdentifiers, read_message

JOBCENTRE = OrgIdentifiers(name="Jobcenter", sor="123456789012345", gln="5790000123456")
CLINIC = OrgIdentifiers(name="Psykiatri", sor="987654321000016", gln="5790001348120")
CASEWORKER = SegmentAuthor(
    name=PersonName("Nielsen", ("Lars",)), phone="+4587131313", role="Sagsbehandler"
)
CLINICIAN = SegmentAuthor(
    name=PersonName("Holm", ("Mette",)),
    phone="+4578470000",
    role="Læge",
    role_code="laege",
    authorisation_id="0C4B1",
)
SENT = dt.datetime(2026, 3, 4, tzinfo=dt.UTC)
REPEATS, MESSAGES = 5, 2000


def _request(i: int) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if "consent_date" in inspect.signature(build_attest_request).parameters:
        extra = {"consent_date": dt.date(2026, 3, 1), "request_form": "LÆ 151"}
    return build_attest_request(
        message_id=f"m{i}", bundle_id=f"b{i}", sent_at=SENT, sender=JOBCENTRE,
        receiver=CLINIC, cpr="0101901234", patient_name=PersonName("Jensen", ("Anne",)),
        author=CASEWORKER, attest_type="LÆ 155", attest_title="Speciallægeattest",
        case_kind="sygedagpenge", questions="Hvad er borgerens aktuelle funktionsevne?",
        reply_deadline=dt.date(2026, 5, 4), conversation_id="c", **extra,
    )  # fmt: skip


def _round_trip(bundle: dict[str, Any]) -> None:
    read_message(parse_bundle(orjson.loads(orjson.dumps(bundle))))


def main() -> None:
    request = parse_bundle(_request(0))

    def reply(i: int) -> dict[str, Any]:
        return build_attest_reply(
            request=request, message_id=f"r{i}", bundle_id=f"rb{i}",
            sent_at=SENT + dt.timedelta(days=2), author=CLINICIAN, text="Se attesten.", pdf=None,
        )  # fmt: skip

    kinds: dict[str, Callable[[int], dict[str, Any]]] = {"request": _request, "reply": reply}
    for name, make in kinds.items():
        runs = []
        for _ in range(REPEATS):
            start = time.process_time()
            for i in range(MESSAGES):
                _round_trip(make(i))
            runs.append((time.process_time() - start) / MESSAGES * 1e6)
        spread = f"{min(runs):.0f}–{max(runs):.0f}"
        print(f"{name}: median {statistics.median(runs):.0f} µs CPU (spread {spread})")


if __name__ == "__main__":
    main()

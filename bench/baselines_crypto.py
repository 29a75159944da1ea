"""The crypto limit: sealing, signing, verifying and opening one request Bundle, in a tight loop.

Uses the gateway's own functions (`crypto/sealing.py`: `seal`, `verify`, `open_envelope`)
with the configured HPKE suite (`Settings.hpke_suite`, ML-KEM-768 + X25519 by default) on a
plaintext built exactly as `submit_attest_request` builds it (the job centre's request
translated to a MedCom Bundle, `orjson.dumps`). One header is reused for every message (HPKE
is randomised per call anyway); building the header and (de)serialising the envelope are
outside the loop, so the figures are the cryptography alone.

Figures: `crypto.seal_sign` (the sender side: HPKE seal + Ed25519 sign) and
`crypto.seal_sign_verify_open` (the whole way: also the receiver's verify + open).

Also home of the helpers the other suites use to build realistic request data
(`request_body`, `request_plaintext`, `sealed_request_envelope`).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric import ed25519

from attest_gateway.config import load_settings
from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite
from attest_gateway.contracts.jobcenter import AttestRequestIn
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.crypto.sealing import PrivateHpkeKey, SigningKey, open_envelope, seal, verify
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.medcom.read import OrgIdentifiers
from attest_gateway.medcom.translate import request_bundle
from bench.common import BenchContext, Figure, progress, repeat

# The demo job centre asks the demo psychiatry unit for an LÆ 155: the request the other
# suites send too. The questions are of a typical length (a few sentences).
JOBCENTER_ID = "jc-koebenhavn"
RECEIVER_ID = "psyk-kbh"
ATTEST_TYPE = "LÆ 155"
QUESTIONS = (
    "Hvad er borgerens aktuelle funktionsevne, og hvilken behandling er planlagt? "
    "Borgeren har været sygemeldt siden foråret med angst og depression. "
    "Vi beder om en vurdering af prognosen og af, om borgeren kan deltage i tilbud "
    "efter lov om aktiv beskæftigelsesindsats, herunder eventuelle skånehensyn."
)


def _org(org_id: str) -> Any:
    return next(o for o in DEMO_ORGS if o.id == org_id)


def request_body(cpr: str = "0101901234", *, today: dt.date | None = None) -> AttestRequestIn:
    """A job centre's request body (`POST /jobcenter/v1/attest-requests`)."""
    jc = _org(JOBCENTER_ID)
    receiver = _org(RECEIVER_ID)
    today = today or dt.date.today()
    return AttestRequestIn.model_validate(
        {
            "municipality": jc.kommunekode,
            "jobcenter_gln": jc.gln,
            "caseworker_ref": "sag-2026-0042",
            "citizen_cpr": cpr,
            "citizen_name": {"given": ["Anne"], "family": "Jensen"},
            "caseworker": {"given": ["Lars"], "family": "Nielsen", "phone": "+4587131313"},
            "attest_type": ATTEST_TYPE,
            "receiver": {"sor": receiver.sor},
            "case_kind": "sygedagpenge",
            "first_day_of_absence": (today - dt.timedelta(days=30)).isoformat(),
            "psychiatric_course": True,
            "questions": QUESTIONS,
            "consent": {"given": True, "date": "2026-01-02"},
        }
    )


def request_plaintext() -> bytes:
    """The plaintext of a request envelope, built as `submit_attest_request` builds it."""
    jc, receiver = _org(JOBCENTER_ID), _org(RECEIVER_ID)
    kind = DEFAULT_CATALOGUE[ATTEST_TYPE]
    now = dt.datetime.now(dt.UTC)
    bundle = request_bundle(
        request_body(today=now.date()),
        kind=kind,
        reply_deadline=kind.reply_deadline.due(now.date()),
        sender=OrgIdentifiers(name=jc.name, sor=jc.sor, gln=jc.gln),
        receiver=OrgIdentifiers(name=receiver.name, sor=receiver.sor, gln=receiver.gln),
        conversation_id=str(uuid.uuid4()),
        message_id=str(uuid.uuid4()),
        bundle_id=str(uuid.uuid4()),
        sent_at=now,
    )
    return orjson.dumps(bundle)


def configured_suite() -> Suite:
    return load_settings().hpke_suite


class Parties:
    """A receiver's HPKE key pair and a signer's Ed25519 key pair, with a request header."""

    def __init__(self, suite: Suite) -> None:
        self.private = PrivateHpkeKey.generate(suite)
        self.public = self.private.public()
        self.signer = SigningKey.generate()
        self.verify_key: ed25519.Ed25519PublicKey = self.signer.key.public_key()
        self.header = EnvelopeHeader(
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            conversation_id=str(uuid.uuid4()),
            message_type=MessageType.ATTEST_REQUEST,
            sender=JOBCENTER_ID,
            receiver=RECEIVER_ID,
            suite=suite,
            recipient_key_id=self.public.key_id,
            signer="gateway",
            signer_key_id=self.signer.key_id,
            created_at=dt.datetime.now(dt.UTC),
        )

    def seal(self, plaintext: bytes) -> SealedEnvelope:
        return seal(plaintext, self.header, self.public, self.signer)


def sealed_request_envelope() -> SealedEnvelope:
    """One real sealed request envelope (configured suite): its JSON is a medcom record."""
    return Parties(configured_suite()).seal(request_plaintext())


def _loop(n: int, description: str, step: Callable[[], None]) -> float:
    """Call `step` n times; returns calls per second. The progress bar is updated every
    twentieth of the loop (inside the clock, but negligible)."""
    every = max(1, n // 20)
    with progress() as bar:
        task = bar.add_task(description, total=n)
        t0 = time.perf_counter()
        for i in range(n):
            step()
            if (i + 1) % every == 0:
                bar.update(task, completed=i + 1)
        elapsed = time.perf_counter() - t0
    return n / elapsed


async def run(ctx: BenchContext) -> list[Figure]:
    suite = configured_suite()
    plaintext = request_plaintext()
    parties = Parties(suite)
    n = ctx.size(5_000, 300)

    def sender() -> None:
        parties.seal(plaintext)

    def round_trip() -> None:
        envelope = parties.seal(plaintext)
        verify(envelope, parties.verify_key)
        if len(open_envelope(envelope, parties.private)) != len(plaintext):
            raise RuntimeError("opened plaintext differs")

    async def once_sender(_i: int) -> float:
        return _loop(n, "seal + sign", sender)

    async def once_round_trip(_i: int) -> float:
        return _loop(n, "seal + sign + verify + open", round_trip)

    envelope_bytes = len(parties.seal(plaintext).to_json())
    notes = (
        f"{suite}; plaintext {len(plaintext):,} B (a request Bundle), sealed envelope JSON "
        f"{envelope_bytes:,} B; {n:,} messages per run, one thread (the event loop's)"
    )
    extra = {
        "suite": suite,
        "plaintext_bytes": len(plaintext),
        "envelope_bytes": envelope_bytes,
        "messages": n,
    }
    return [
        Figure(
            name="crypto.seal_sign",
            label="Crypto: seal + sign (sender side)",
            unit="messages/s",
            runs=await repeat(ctx, "crypto.seal_sign", once_sender),
            notes=notes,
            extra=extra,
        ),
        Figure(
            name="crypto.seal_sign_verify_open",
            label="Crypto: seal + sign + verify + open",
            unit="messages/s",
            runs=await repeat(ctx, "crypto.seal_sign_verify_open", once_round_trip),
            notes=notes,
            extra=extra,
        ),
    ]

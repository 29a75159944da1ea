"""A small world for the use cases' unit tests: the demo organisations with fresh keys, the
gateway's key ring (its own keys and the custodial job centres'), a manual clock, and the
fake ports (tests/support/fakes.py); with the calls of each use case spelt once."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite
from attest_gateway.contracts.jobcenter import AttestRequestAccepted, AttestRequestIn
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.clock import ManualClock
from attest_gateway.core.directory import Organisation, Role
from attest_gateway.crypto.sealing import KeyRing, OrgKeys, open_envelope, seal
from attest_gateway.devtools.demo import DEMO_ORGS
from attest_gateway.medcom.build import build_acknowledgement, build_attest_reply
from attest_gateway.medcom.model import Bundle
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.services import contacts, health, jobcenter
from tests.support.fakes import FakeDirectory, FakeRelay, FakeStore
from tests.support.harness import ATTEST_TEXT, CPR, attest_request_body
from tests.support.people import CLINICIAN

GATEWAY, JC, PSY, GP = "gateway", "jc-koebenhavn", "psyk-kbh", "gp-noerrebro"
SUITE: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
START = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PSEUDONYM_KEY = b"0" * 32


@functools.cache
def _keys(org_id: str) -> OrgKeys:
    """One key set per organisation for the whole test run (making keys costs time)."""
    return OrgKeys.generate(org_id, SUITE)


@dataclass
class World:
    store: FakeStore
    relay: FakeRelay
    keyring: KeyRing
    clock: ManualClock
    orgs: dict[str, Organisation]
    gateway_org_id: str = GATEWAY
    pseudonym_key: bytes = PSEUDONYM_KEY
    catalogue: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CATALOGUE))

    @property
    def directory(self) -> FakeDirectory:
        return self.store.directory

    def keys(self, org_id: str) -> OrgKeys:
        return _keys(org_id)

    # --- the job centre's use cases -----------------------------------------------------

    async def request_attest(
        self, *, idempotency_key: str | None = None, org: str = JC, **overrides: Any
    ) -> tuple[AttestRequestAccepted, bool]:
        first_day = self.clock.now().date() - dt.timedelta(days=30)
        body = attest_request_body(jobcenter_gln=self.orgs[JC].gln or "")
        body["first_day_of_absence"] = first_day.isoformat()
        body.update(overrides)
        return await jobcenter.submit_attest_request(
            self.store,
            self.relay,
            self.keyring,
            self.clock,
            self.orgs[org],
            AttestRequestIn.model_validate(body),
            idempotency_key=idempotency_key,
            catalogue=self.catalogue,
            gateway_org_id=self.gateway_org_id,
            pseudonym_key=self.pseudonym_key,
        )

    async def read_inbox(self, org: str = JC, limit: int = 50) -> Any:
        return await jobcenter.read_inbox(
            self.store, self.keyring, self.clock, self.orgs[org],
            limit=limit, source="127.0.0.1", gateway_org_id=self.gateway_org_id,
        )  # fmt: skip

    async def acknowledge(self, message_id: str, org: str = JC) -> bool:
        return await jobcenter.acknowledge_reply(
            self.store, self.relay, self.keyring, self.clock, self.orgs[org], message_id,
            source="127.0.0.1", gateway_org_id=self.gateway_org_id,
        )  # fmt: skip

    async def register_contact(
        self, body: contacts.ContactIn, *, idempotency_key: str | None = None, org: str = JC
    ) -> tuple[contacts.ContactAccepted, bool]:
        return await contacts.register_contact(
            self.store, self.relay, self.keyring, self.clock, self.orgs[org], body,
            idempotency_key=idempotency_key, gateway_org_id=self.gateway_org_id,
            pseudonym_key=self.pseudonym_key,
        )  # fmt: skip

    # --- the health side's ----------------------------------------------------------------

    async def read_mailbox(self, org: str = PSY, limit: int = 100) -> list[dict[str, Any]]:
        return await health.read_mailbox(
            self.store, self.clock, self.orgs[org], limit=limit, source="127.0.0.1"
        )

    async def submit(self, data: object, org: str = PSY) -> tuple[dict[str, Any], bool]:
        return await health.submit_message(
            self.store, self.relay, self.keyring, self.clock, self.orgs[org], data,
            gateway_org_id=self.gateway_org_id, pseudonym_key=self.pseudonym_key,
        )  # fmt: skip

    # --- what the parties hold ------------------------------------------------------------

    def opened(self, envelope: SealedEnvelope | bytes, org: str = PSY) -> Bundle:
        """A message for `org`, opened with its own key."""
        if isinstance(envelope, bytes):
            envelope = SealedEnvelope.from_json(envelope)
        key = next(
            k for k in self.keys(org).hpke_keys if k.key_id == envelope.header.recipient_key_id
        )
        return parse_bundle(orjson.loads(open_envelope(envelope, key)))

    def request_in_outbox(self, conversation_id: str) -> SealedEnvelope:
        return next(
            e
            for e in self.store.state.envelopes()
            if e.header.conversation_id == conversation_id
            and e.header.message_type is MessageType.ATTEST_REQUEST
        )

    def reply(self, request: Bundle, **kwargs: Any) -> dict[str, Any]:
        return build_attest_reply(
            author=CLINICIAN,
            request=request,
            message_id=kwargs.pop("message_id", str(uuid.uuid4())),
            bundle_id=kwargs.pop("bundle_id", str(uuid.uuid4())),
            sent_at=self.clock.now(),
            text=kwargs.pop("text", ATTEST_TEXT),
            pdf=kwargs.pop("pdf", None),
            **kwargs,
        )

    def ack(self, acked: Bundle) -> dict[str, Any]:
        return build_acknowledgement(
            acked=acked,
            message_id=str(uuid.uuid4()),
            bundle_id=str(uuid.uuid4()),
            sent_at=self.clock.now(),
            code="ok",
        )

    def sealed(
        self, plaintext: bytes, *, to: str, by: str, signer_org: str | None = None, **header: Any
    ) -> SealedEnvelope:
        """An envelope sealed to `to`'s current key and signed by `by`'s (as `signer_org`)."""
        fields = {
            "created_at": self.clock.now(),
            "receiver": to,
            **header,
            "recipient_key_id": self.keys(to).current_hpke.key_id,
            "suite": SUITE,
            "signer": signer_org or by,
            "signer_key_id": self.keys(by).current_signing.key_id,
        }
        recipient = self.keys(to).current_hpke.public()
        return seal(
            plaintext,
            EnvelopeHeader.model_validate(fields),
            recipient,
            self.keys(by).current_signing,
        )


def make_world() -> World:
    """The demo organisations and the gateway, each with keys, in a fake directory; the key
    ring holds the gateway's keys and the custodial job centres'."""
    gateway = Organisation(
        GATEWAY, "attest gateway", Role.OPERATOR, None, None, None, None, None, True, True
    )
    orgs = {o.id: o for o in (gateway, *DEMO_ORGS)}
    directory = FakeDirectory()
    for org in orgs.values():
        directory.add(org, _keys(org.id))
    ring = KeyRing({o.id: _keys(o.id) for o in orgs.values() if o.custodial})
    return World(FakeStore(directory), FakeRelay(), ring, ManualClock(START), orgs)


__all__ = ["CPR", "GATEWAY", "GP", "JC", "PSY", "World", "make_world"]

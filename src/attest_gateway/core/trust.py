"""The envelope trust policy: when the gateway believes a sealed envelope's header.

One chain, used by both ways an envelope reaches the gateway:

- relayed (the delivery consumer, `services/delivery.py`): an envelope between two
  organisations, on its way to the receiver's mailbox. The gateway never opens it.
- submitted (`POST /medcom/v1/messages`, `services/health.py`): an envelope the
  authenticated caller sealed for the gateway itself, which opens it.

The checks, in this order; the first that fails raises, with the code named:

    1. addressed    relayed: the receiver is a known, enabled organisation
                      → unknown-receiver
                    submitted: the receiver is the gateway → not-addressed-to-gateway
    2. caller       submitted: the sender and the signer are the caller → sender-mismatch
    3. sealed to    the recipient key is the receiver's → not-addressed-to-receiver
                    (submitted: the gateway's, in its key ring → not-addressed-to-gateway)
    4. signing key  known to the directory, and the signer's → unknown-key
    5. signer       the sender itself or the gateway → signer-not-sender
    6. usable       the signing key is not revoked or expired at `now` → key-not-valid
    7. enabled      the signing organisation is enabled (the gateway and the
                    authenticated caller are: not looked up) → key-not-valid
    8. signature    the signature verifies with that key (`verify`) → signature-invalid

Every refusal is an `EnvelopeRejected`, but for the caller check (2), which is about who may
submit, not about the envelope: `NotPermitted`. The policy is pure: it reads the directory
through `TrustDirectory` (a small port; the database answers it in infra/db/directory.py)
and verifies through the function it is given, so it needs no database and no cryptography
of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from attest_gateway.core.directory import Organisation, VerifyKey
from attest_gateway.core.errors import EnvelopeRejected, ErrorCode, NotPermitted


class SealedHeader(Protocol):
    """The routing fields of an envelope's header the policy reads
    (contracts/envelope.py `EnvelopeHeader` has them)."""

    @property
    def sender(self) -> str: ...
    @property
    def receiver(self) -> str: ...
    @property
    def recipient_key_id(self) -> str: ...
    @property
    def signer(self) -> str: ...
    @property
    def signer_key_id(self) -> str: ...


class TrustDirectory(Protocol):
    """The directory lookups the policy makes (only those its checks reach)."""

    async def org_by_id(self, org_id: str) -> Organisation | None: ...
    async def hpke_key_owner(self, key_id: str) -> str | None: ...
    async def signing_key(self, key_id: str) -> VerifyKey | None: ...


@dataclass(frozen=True, slots=True)
class Submission:
    """An envelope submitted to the gateway by an authenticated caller: it must come from
    the caller and be sealed to a key the gateway holds (the key ring also holds custodial
    job centres' keys, which the directory says are theirs)."""

    caller: str
    gateway_holds: Callable[[str], bool]  # whether the gateway's key ring has this HPKE key


async def check_envelope(
    header: SealedHeader,
    directory: TrustDirectory,
    *,
    gateway_org_id: str,
    now: dt.datetime,
    verify: Callable[[VerifyKey], None],
    submission: Submission | None = None,
) -> VerifyKey:
    """Raise unless the envelope may be trusted (the module docstring has the chain);
    return the signing key it verified with. `verify` checks the envelope's signature with
    a key and raises `EnvelopeRejected` (signature-invalid) when it does not verify.
    `submission`: the envelope was submitted over HTTP for the gateway (None: relayed)."""
    h = header
    # 1. addressed
    if submission is not None:
        if h.receiver != gateway_org_id:
            raise EnvelopeRejected(
                ErrorCode.NOT_ADDRESSED_TO_GATEWAY, "the envelope is for someone else"
            )
    else:
        receiver = await directory.org_by_id(h.receiver)
        if receiver is None or not receiver.enabled:
            raise EnvelopeRejected(
                ErrorCode.UNKNOWN_RECEIVER, "the envelope's receiver is not in the directory"
            )
    # 2. caller
    if submission is not None and (h.sender != submission.caller or h.signer != submission.caller):
        raise NotPermitted(ErrorCode.SENDER_MISMATCH, "the envelope's sender is not the caller")
    # 3. sealed to the receiver's key
    owner = await directory.hpke_key_owner(h.recipient_key_id)
    if submission is not None:
        if owner != gateway_org_id or not submission.gateway_holds(h.recipient_key_id):
            raise EnvelopeRejected(
                ErrorCode.NOT_ADDRESSED_TO_GATEWAY, "sealed to a key the gateway lacks"
            )
    elif owner != h.receiver:
        raise EnvelopeRejected(
            ErrorCode.NOT_ADDRESSED_TO_RECEIVER, "sealed to a key the receiver lacks"
        )
    # 4. signing key
    key = await directory.signing_key(h.signer_key_id)
    if key is None or key.org_id != h.signer:
        raise EnvelopeRejected(ErrorCode.UNKNOWN_KEY, "the envelope names a key that is not usable")
    # 5. signer
    if h.signer not in (h.sender, gateway_org_id):
        raise EnvelopeRejected(
            ErrorCode.SIGNER_NOT_SENDER, "only the sender or the gateway may sign"
        )
    # 6. usable
    if not key.usable(now):
        raise EnvelopeRejected(ErrorCode.KEY_NOT_VALID, "the signing key is revoked or expired")
    # 7. enabled: no lookup for the gateway, nor for the caller (authenticated, so enabled)
    if h.signer not in (gateway_org_id, submission.caller if submission else None):
        signer = await directory.org_by_id(h.signer)
        if signer is None or not signer.enabled:
            raise EnvelopeRejected(ErrorCode.KEY_NOT_VALID, "the signing organisation is disabled")
    # 8. signature
    verify(key)
    return key

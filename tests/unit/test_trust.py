"""The envelope trust policy (core/trust.py) on an in-memory directory: every refusal, for
a relayed envelope (the delivery consumer) and a submitted one (POST /medcom/v1/messages),
with the code each way answers with today."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from attest_gateway.core.directory import Organisation, Role, VerifyKey
from attest_gateway.core.errors import EnvelopeRejected, ErrorCode, GatewayError, NotPermitted
from attest_gateway.core.trust import Submission, check_envelope

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
GATEWAY = "gateway"


@dataclasses.dataclass(frozen=True)
class Header:
    sender: str = "kbh"
    receiver: str = "psyk"
    recipient_key_id: str = "psyk-hpke"
    signer: str = "kbh"
    signer_key_id: str = "kbh-sign"


def _org(org_id: str, *, enabled: bool = True) -> Organisation:
    return Organisation(org_id, org_id, Role.GP, None, None, None, None, None, False, enabled)


def _key(key_id: str, org_id: str, **times: dt.datetime) -> VerifyKey:
    return VerifyKey(
        key_id, org_id, f"public-{key_id}", times.get("revoked_at"), times.get("not_after")
    )


class FakeDirectory:
    """The directory as dictionaries; it records the lookups made."""

    def __init__(self) -> None:
        self.orgs = {o.id: o for o in (_org("kbh"), _org("psyk"), _org("other"), _org(GATEWAY))}
        self.hpke_owners = {"psyk-hpke": "psyk", "gw-hpke": GATEWAY, "other-hpke": "other"}
        self.signing = {
            k.key_id: k
            for k in (_key("kbh-sign", "kbh"), _key("gw-sign", GATEWAY), _key("psyk-sign", "psyk"))
        }
        self.lookups: list[str] = []

    async def org_by_id(self, org_id: str) -> Organisation | None:
        self.lookups.append(f"org:{org_id}")
        return self.orgs.get(org_id)

    async def hpke_key_owner(self, key_id: str) -> str | None:
        self.lookups.append(f"hpke:{key_id}")
        return self.hpke_owners.get(key_id)

    async def signing_key(self, key_id: str) -> VerifyKey | None:
        self.lookups.append(f"signing:{key_id}")
        return self.signing.get(key_id)


class Verifier:
    """`verify` for the policy: accepts, or refuses like crypto/sealing.py `verify`."""

    def __init__(self, *, valid: bool = True) -> None:
        self.valid = valid
        self.keys: list[str] = []

    def __call__(self, key: VerifyKey) -> None:
        self.keys.append(key.key_id)
        if not self.valid:
            raise EnvelopeRejected(ErrorCode.SIGNATURE_INVALID, "the signature does not verify")


SUBMITTED = Header(
    sender="psyk",
    receiver=GATEWAY,
    recipient_key_id="gw-hpke",
    signer="psyk",
    signer_key_id="psyk-sign",
)


def _submission(caller: str = "psyk", held: frozenset[str] = frozenset({"gw-hpke"})) -> Submission:
    return Submission(caller, held.__contains__)


async def _relay(
    header: Header, directory: FakeDirectory | None = None, verify: Verifier | None = None
) -> VerifyKey:
    return await check_envelope(
        header,
        directory or FakeDirectory(),
        gateway_org_id=GATEWAY,
        now=NOW,
        verify=verify or Verifier(),
    )


async def _submit(
    header: Header = SUBMITTED,
    directory: FakeDirectory | None = None,
    verify: Verifier | None = None,
    submission: Submission | None = None,
) -> VerifyKey:
    return await check_envelope(
        header,
        directory or FakeDirectory(),
        gateway_org_id=GATEWAY,
        now=NOW,
        verify=verify or Verifier(),
        submission=submission or _submission(),
    )


async def _refused(call: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        await call  # type: ignore[misc]
    return caught.value


# --- relayed: the delivery consumer ---------------------------------------------------------


async def test_a_relayed_envelope_that_holds_is_verified_with_the_signers_key() -> None:
    directory, verifier = FakeDirectory(), Verifier()
    key = await _relay(Header(), directory, verifier)
    assert key.key_id == "kbh-sign"
    assert verifier.keys == ["kbh-sign"]
    assert directory.lookups == ["org:psyk", "hpke:psyk-hpke", "signing:kbh-sign", "org:kbh"]


async def test_the_gateway_may_sign_for_a_sender_and_is_not_looked_up() -> None:
    directory = FakeDirectory()
    await _relay(Header(signer=GATEWAY, signer_key_id="gw-sign"), directory)
    assert f"org:{GATEWAY}" not in directory.lookups


@pytest.mark.parametrize(
    ("header", "change", "code"),
    [
        (Header(receiver="nobody"), None, ErrorCode.UNKNOWN_RECEIVER),
        (
            Header(),
            lambda d: d.orgs.update(psyk=_org("psyk", enabled=False)),
            ErrorCode.UNKNOWN_RECEIVER,
        ),
        (Header(recipient_key_id="other-hpke"), None, ErrorCode.NOT_ADDRESSED_TO_RECEIVER),
        (Header(recipient_key_id="unknown"), None, ErrorCode.NOT_ADDRESSED_TO_RECEIVER),
        (Header(signer_key_id="unknown"), None, ErrorCode.UNKNOWN_KEY),
        (Header(signer_key_id="psyk-sign"), None, ErrorCode.UNKNOWN_KEY),  # not the signer's
        (Header(signer="psyk", signer_key_id="psyk-sign"), None, ErrorCode.SIGNER_NOT_SENDER),
        (
            Header(),
            lambda d: d.signing.update({"kbh-sign": _key("kbh-sign", "kbh", revoked_at=NOW)}),
            ErrorCode.KEY_NOT_VALID,
        ),
        (
            Header(),
            lambda d: d.signing.update({"kbh-sign": _key("kbh-sign", "kbh", not_after=NOW)}),
            ErrorCode.KEY_NOT_VALID,
        ),
        (
            Header(),
            lambda d: d.orgs.update(kbh=_org("kbh", enabled=False)),
            ErrorCode.KEY_NOT_VALID,
        ),
        (Header(), lambda d: d.orgs.pop("kbh"), ErrorCode.KEY_NOT_VALID),
    ],
)
async def test_every_refusal_of_a_relayed_envelope(
    header: Header, change: object, code: ErrorCode
) -> None:
    directory, verifier = FakeDirectory(), Verifier()
    if change is not None:
        change(directory)  # type: ignore[operator]
    error = await _refused(_relay(header, directory, verifier))
    assert type(error) is EnvelopeRejected
    assert error.code == code
    assert verifier.keys == []  # refused before the signature is checked


async def test_a_relayed_envelope_whose_signature_does_not_verify() -> None:
    error = await _refused(_relay(Header(), verify=Verifier(valid=False)))
    assert (type(error), error.code) == (EnvelopeRejected, ErrorCode.SIGNATURE_INVALID)


async def test_a_key_revoked_later_is_still_usable_now() -> None:
    directory = FakeDirectory()
    later = NOW + dt.timedelta(seconds=1)
    directory.signing["kbh-sign"] = _key("kbh-sign", "kbh", revoked_at=later, not_after=later)
    assert (await _relay(Header(), directory)).key_id == "kbh-sign"


async def test_the_first_check_that_fails_names_the_refusal() -> None:
    """Unknown receiver and unknown key at once: the receiver is checked first, and the
    directory is not asked further."""
    directory = FakeDirectory()
    error = await _refused(_relay(Header(receiver="nobody", signer_key_id="unknown"), directory))
    assert error.code == ErrorCode.UNKNOWN_RECEIVER
    assert directory.lookups == ["org:nobody"]


# --- submitted: POST /medcom/v1/messages ------------------------------------------------------


async def test_a_submitted_envelope_that_holds_needs_no_lookup_of_the_caller() -> None:
    directory, verifier = FakeDirectory(), Verifier()
    key = await _submit(directory=directory, verify=verifier)
    assert key.key_id == "psyk-sign"
    assert verifier.keys == ["psyk-sign"]
    assert directory.lookups == ["hpke:gw-hpke", "signing:psyk-sign"]


@pytest.mark.parametrize(
    ("header", "submission", "change", "kind", "code"),
    [
        (
            dataclasses.replace(SUBMITTED, receiver="kbh"),
            None,
            None,
            EnvelopeRejected,
            ErrorCode.NOT_ADDRESSED_TO_GATEWAY,
        ),
        (
            dataclasses.replace(SUBMITTED, sender="kbh"),
            None,
            None,
            NotPermitted,
            ErrorCode.SENDER_MISMATCH,
        ),
        (
            dataclasses.replace(SUBMITTED, signer="kbh", signer_key_id="kbh-sign"),
            None,
            None,
            NotPermitted,
            ErrorCode.SENDER_MISMATCH,
        ),
        (SUBMITTED, _submission(caller="kbh"), None, NotPermitted, ErrorCode.SENDER_MISMATCH),
        (
            dataclasses.replace(SUBMITTED, recipient_key_id="psyk-hpke"),  # someone else's key
            _submission(held=frozenset({"gw-hpke", "psyk-hpke"})),
            None,
            EnvelopeRejected,
            ErrorCode.NOT_ADDRESSED_TO_GATEWAY,
        ),
        (  # the gateway's by the directory, but not in its key ring
            SUBMITTED,
            _submission(held=frozenset()),
            None,
            EnvelopeRejected,
            ErrorCode.NOT_ADDRESSED_TO_GATEWAY,
        ),
        (
            dataclasses.replace(SUBMITTED, signer_key_id="unknown"),
            None,
            None,
            EnvelopeRejected,
            ErrorCode.UNKNOWN_KEY,
        ),
        (
            dataclasses.replace(SUBMITTED, signer_key_id="kbh-sign"),
            None,
            None,
            EnvelopeRejected,
            ErrorCode.UNKNOWN_KEY,
        ),
        (
            SUBMITTED,
            None,
            lambda d: d.signing.update({"psyk-sign": _key("psyk-sign", "psyk", not_after=NOW)}),
            EnvelopeRejected,
            ErrorCode.KEY_NOT_VALID,
        ),
    ],
)
async def test_every_refusal_of_a_submitted_envelope(
    header: Header,
    submission: Submission | None,
    change: object,
    kind: type[GatewayError],
    code: ErrorCode,
) -> None:
    directory, verifier = FakeDirectory(), Verifier()
    if change is not None:
        change(directory)  # type: ignore[operator]
    error = await _refused(_submit(header, directory, verifier, submission))
    assert (type(error), error.code) == (kind, code)
    assert verifier.keys == []


async def test_a_submitted_envelope_whose_signature_does_not_verify() -> None:
    error = await _refused(_submit(verify=Verifier(valid=False)))
    assert (type(error), error.code) == (EnvelopeRejected, ErrorCode.SIGNATURE_INVALID)


async def test_a_submission_for_someone_else_is_refused_before_the_caller_is_checked() -> None:
    directory = FakeDirectory()
    header = dataclasses.replace(SUBMITTED, receiver="kbh", sender="kbh")
    error = await _refused(_submit(header, directory))
    assert error.code == ErrorCode.NOT_ADDRESSED_TO_GATEWAY
    assert directory.lookups == []


async def test_a_submission_by_someone_else_is_refused_before_any_lookup() -> None:
    directory = FakeDirectory()
    header = dataclasses.replace(SUBMITTED, sender="kbh", recipient_key_id="unknown")
    error = await _refused(_submit(header, directory))
    assert error.code == ErrorCode.SENDER_MISMATCH
    assert directory.lookups == []

"""Fuzzing the parsers that face the outside: the Bundle parser and envelope opening.
Random and mutated real input gives typed errors only, never a crash or a hang."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.clock import SystemClock
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.crypto.sealing import OrgKeys, open_envelope, seal, verify
from attest_gateway.medcom.errors import BundleError
from attest_gateway.medcom.parse import parse_bundle
from attest_gateway.medcom.read import read_message

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "medcom").glob("*.json"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=40,
)


def _parse_and_read(data: Any) -> None:
    """Either a message or a BundleError with a code; any other exception fails the test."""
    error: BundleError | None = None
    try:
        read_message(parse_bundle(data))
    except BundleError as exc:
        error = exc
    if error is not None:
        assert error.code
        assert error.detail


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_json_gives_bundle_errors_only(data: Any) -> None:
    _parse_and_read(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_real_examples_give_bundle_errors_only(path: Path, data: st.DataObject) -> None:
    bundle = json.loads(path.read_text("utf-8"))

    def mutate(node: Any) -> Any:
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            action = data.draw(st.sampled_from(["drop", "replace", "descend"]))
            if action == "drop":
                return {k: v for k, v in node.items() if k != key}
            if action == "replace":
                return {**node, key: data.draw(json_values)}
            return {**node, key: mutate(node[key])}
        if isinstance(node, list) and node:
            i = data.draw(st.integers(0, len(node) - 1))
            return [*node[:i], mutate(node[i]), *node[i + 1 :]]
        return data.draw(json_values)

    for _ in range(data.draw(st.integers(1, 4))):
        bundle = mutate(bundle)
    _parse_and_read(bundle)


@pytest.mark.parametrize("depth", [100, 10_000])
def test_deeply_nested_input_is_refused(depth: int) -> None:
    nested: Any = "x"
    for _ in range(depth):
        nested = {"entry": [nested]}
    with pytest.raises(BundleError):
        parse_bundle(nested)


KEYS = OrgKeys.generate("receiver", "X25519/HKDF_SHA256/AES_256_GCM")
SIGNER = OrgKeys.generate("sender", "X25519/HKDF_SHA256/AES_256_GCM")


def _sealed() -> SealedEnvelope:
    header = EnvelopeHeader(
        message_id="m-1", bundle_id="b-1", conversation_id="c-1",
        message_type=MessageType.ATTEST_REQUEST, sender="sender", receiver="receiver",
        suite="X25519/HKDF_SHA256/AES_256_GCM", recipient_key_id=KEYS.current_hpke.key_id,
        signer="sender", signer_key_id=SIGNER.current_signing.key_id,
        created_at=SystemClock().now(),
    )  # fmt: skip
    return seal(
        b'{"resourceType": "Bundle"}', header, KEYS.current_hpke.public(), SIGNER.current_signing
    )


GOOD = _sealed().to_json()


def _verifies_and_opens(envelope: SealedEnvelope) -> bool:
    """True if it verifies and opens; False on EnvelopeRejected; anything else propagates."""
    try:
        verify(envelope, SIGNER.current_signing.key.public_key())
        open_envelope(envelope, KEYS.current_hpke)
    except EnvelopeRejected:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda b: GOOD[: len(b)], st.binary(max_size=len(GOOD))))
def test_random_and_truncated_envelopes_are_typed_errors(raw: bytes) -> None:
    try:
        envelope = SealedEnvelope.from_json(raw)
    except pydantic.ValidationError:
        return
    assert not _verifies_and_opens(envelope) or raw == GOOD


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(1, 255))
def test_any_changed_byte_of_the_wire_form_is_a_typed_error(position: int, flip: int) -> None:
    raw = bytearray(GOOD)
    raw[position] ^= flip
    try:
        envelope = SealedEnvelope.from_json(bytes(raw))
    except (pydantic.ValidationError, UnicodeDecodeError):
        return
    if envelope == SealedEnvelope.from_json(GOOD):
        return  # e.g. base64 padding or JSON whitespace: the same envelope
    assert not _verifies_and_opens(envelope)


def test_the_valid_envelope_opens() -> None:
    envelope = SealedEnvelope.from_json(GOOD)
    assert _verifies_and_opens(envelope)
    assert orjson.loads(open_envelope(envelope, KEYS.current_hpke)) == {"resourceType": "Bundle"}

"""Sealed envelopes: HPKE sealing/opening, Ed25519 signatures, JSON form, key files, pseudonyms."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
from functools import cache
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from attest_gateway.contracts.envelope import EnvelopeHeader, SealedEnvelope, Suite
from attest_gateway.contracts.stages import MessageType
from attest_gateway.core.errors import EnvelopeRejected
from attest_gateway.crypto.pseudonyms import bare_ref
from attest_gateway.crypto.sealing import (
    OrgKeys,
    PrivateHpkeKey,
    SigningKey,
    decode_verify_key,
    fingerprint,
    open_envelope,
    seal,
    verify,
)

HYBRID: Suite = "MLKEM768_X25519/HKDF_SHA256/AES_256_GCM"
CLASSIC: Suite = "X25519/HKDF_SHA256/AES_256_GCM"
SUITES: tuple[Suite, ...] = (HYBRID, CLASSIC)
CREATED_AT = dt.datetime(2026, 1, 31, 9, 30, tzinfo=dt.UTC)
PLAINTEXT = b'{"resourceType":"Bundle","id":"b-1","note":"0101901234 has a health text"}'


@cache
def _hpke(suite: Suite) -> PrivateHpkeKey:
    return PrivateHpkeKey.generate(suite)


@cache
def _signer(name: str = "sender") -> SigningKey:
    return SigningKey.generate(f"sig-{name}")


def _header(recipient: PrivateHpkeKey, signer: SigningKey, **overrides: Any) -> EnvelopeHeader:
    values: dict[str, Any] = {
        "message_id": "2d0c6d51-8a51-4f0e-a5b3-0c9c1b0d8f01",
        "bundle_id": "9b1f0a4c-6b53-4b3e-8f0e-7f3b1a2c9d02",
        "conversation_id": "6f1c2a8e-3b7d-4c1e-9a0f-2d5e8b7c4a11",
        "message_type": "attest-request",
        "sender": "jobcenter-101",
        "receiver": "clinic-715381000016006",
        "suite": recipient.suite,
        "recipient_key_id": recipient.key_id,
        "signer": "jobcenter-101",
        "signer_key_id": signer.key_id,
        "created_at": CREATED_AT,
    }
    values.update(overrides)
    return EnvelopeHeader.model_validate(values)


def _sealed(suite: Suite, plaintext: bytes = PLAINTEXT) -> SealedEnvelope:
    recipient, signer = _hpke(suite), _signer()
    return seal(plaintext, _header(recipient, signer), recipient.public(), signer)


def _rejected_code(exc: pytest.ExceptionInfo[EnvelopeRejected]) -> str:
    return exc.value.code


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_seal_verify_open_round_trip(suite: Suite) -> None:
    envelope = _sealed(suite)
    assert envelope.header.suite == suite
    assert PLAINTEXT not in envelope.ciphertext
    assert len(envelope.signature) == 64
    verify(envelope, _signer().key.public_key())
    assert open_envelope(envelope, _hpke(suite)) == PLAINTEXT


@pytest.mark.parametrize("suite", SUITES)
def test_sealing_twice_gives_different_ciphertexts(suite: Suite) -> None:
    first, second = _sealed(suite), _sealed(suite)
    assert first.ciphertext != second.ciphertext
    assert open_envelope(first, _hpke(suite)) == open_envelope(second, _hpke(suite)) == PLAINTEXT


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=4096))
def test_open_seal_property_classic(plaintext: bytes) -> None:
    envelope = _sealed(CLASSIC, plaintext)
    verify(envelope, _signer().key.public_key())
    assert open_envelope(envelope, _hpke(CLASSIC)) == plaintext


@settings(max_examples=8, deadline=None)
@given(plaintext=st.binary(max_size=1024))
def test_open_seal_property_hybrid(plaintext: bytes) -> None:
    envelope = _sealed(HYBRID, plaintext)
    verify(envelope, _signer().key.public_key())
    assert open_envelope(envelope, _hpke(HYBRID)) == plaintext


@pytest.mark.parametrize("suite", SUITES)
def test_seal_refuses_mismatched_keys(suite: Suite) -> None:
    recipient, signer, other = _hpke(suite), _signer(), _signer("other")
    header = _header(recipient, signer)
    with pytest.raises(ValueError, match="key ids"):
        seal(PLAINTEXT, header, recipient.public(), other)
    with pytest.raises(ValueError, match="key ids"):
        seal(
            PLAINTEXT,
            _header(recipient, signer, recipient_key_id="hpke-x"),
            recipient.public(),
            signer,
        )
    other_suite = CLASSIC if suite == HYBRID else HYBRID
    with pytest.raises(ValueError, match="suite"):
        seal(PLAINTEXT, _header(recipient, signer, suite=other_suite), recipient.public(), signer)


# --- tampering --------------------------------------------------------------------------------


def _changed(header: EnvelopeHeader, name: str) -> object:
    """A different value for one header field."""
    current = getattr(header, name)
    if name == "v":
        return 2
    if name == "message_type":
        return next(t for t in MessageType if t != current)
    if name == "suite":
        return next(s for s in get_args(Suite) if s != current)
    if name == "created_at":
        return current + dt.timedelta(seconds=1)
    if isinstance(current, str):
        return current + "x"
    raise AssertionError(f"no change rule for header field {name!r}")


_HEADER_FIELDS = sorted(EnvelopeHeader.model_fields)


def test_tamper_fields_cover_the_whole_header() -> None:
    assert set(_HEADER_FIELDS) == {
        "v",
        "message_id",
        "bundle_id",
        "conversation_id",
        "message_type",
        "sender",
        "receiver",
        "suite",
        "recipient_key_id",
        "signer",
        "signer_key_id",
        "created_at",
    }


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("name", _HEADER_FIELDS)
def test_changing_any_header_field_breaks_open_and_verify(suite: Suite, name: str) -> None:
    envelope = _sealed(suite)
    header = envelope.header.model_copy(update={name: _changed(envelope.header, name)})
    assert getattr(header, name) != getattr(envelope.header, name)
    assert header.info() != envelope.header.info()
    tampered = envelope.model_copy(update={"header": header})

    with pytest.raises(EnvelopeRejected) as opened:
        open_envelope(tampered, _hpke(suite))
    expected = "unknown-key" if name in {"recipient_key_id", "suite"} else "open-failed"
    assert _rejected_code(opened) == expected

    with pytest.raises(EnvelopeRejected) as verified:
        verify(tampered, _signer().key.public_key())
    assert _rejected_code(verified) == "signature-invalid"

    # the untouched envelope still passes both
    verify(envelope, _signer().key.public_key())
    assert open_envelope(envelope, _hpke(suite)) == PLAINTEXT


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("position", [0, 31, 40, -17, -1])
def test_flipped_ciphertext_byte_breaks_open_and_verify(suite: Suite, position: int) -> None:
    envelope = _sealed(suite)
    data = bytearray(envelope.ciphertext)
    data[position] ^= 0x01
    tampered = envelope.model_copy(update={"ciphertext": bytes(data)})
    with pytest.raises(EnvelopeRejected) as opened:
        open_envelope(tampered, _hpke(suite))
    assert _rejected_code(opened) == "open-failed"
    with pytest.raises(EnvelopeRejected) as verified:
        verify(tampered, _signer().key.public_key())
    assert _rejected_code(verified) == "signature-invalid"


@pytest.mark.parametrize("suite", SUITES)
def test_truncated_ciphertext_fails_to_open(suite: Suite) -> None:
    envelope = _sealed(suite)
    for cut in (envelope.ciphertext[:10], envelope.ciphertext[:-1], b""):
        with pytest.raises(EnvelopeRejected) as opened:
            open_envelope(envelope.model_copy(update={"ciphertext": cut}), _hpke(suite))
        assert _rejected_code(opened) == "open-failed"


@pytest.mark.parametrize("suite", SUITES)
def test_signature_from_another_key_fails(suite: Suite) -> None:
    envelope = _sealed(suite)
    other = _signer("other")
    with pytest.raises(EnvelopeRejected) as wrong_public:
        verify(envelope, other.key.public_key())
    assert _rejected_code(wrong_public) == "signature-invalid"

    forged = envelope.model_copy(update={"signature": other.key.sign(envelope.signed_bytes())})
    verify(forged, other.key.public_key())  # a valid signature, just by the wrong key
    with pytest.raises(EnvelopeRejected) as wrong_signer:
        verify(forged, _signer().key.public_key())
    assert _rejected_code(wrong_signer) == "signature-invalid"


@pytest.mark.parametrize("suite", SUITES)
def test_open_with_another_key_fails(suite: Suite) -> None:
    envelope = _sealed(suite)
    stranger = PrivateHpkeKey.generate(suite)
    with pytest.raises(EnvelopeRejected) as unknown:
        open_envelope(envelope, stranger)
    assert _rejected_code(unknown) == "unknown-key"
    # same key id, different key material: the HPKE decryption itself fails
    impostor = PrivateHpkeKey(_hpke(suite).key_id, suite, stranger.x25519_key, stranger.mlkem_key)
    with pytest.raises(EnvelopeRejected) as failed:
        open_envelope(envelope, impostor)
    assert _rejected_code(failed) == "open-failed"


def test_unknown_suite_is_rejected() -> None:
    envelope = _sealed(CLASSIC)
    header = envelope.header.model_copy(update={"suite": "X448/HKDF_SHA512/CHACHA20"})
    with pytest.raises(EnvelopeRejected) as info:
        open_envelope(envelope.model_copy(update={"header": header}), _hpke(CLASSIC))
    assert _rejected_code(info) == "unsupported-suite"


# --- JSON form and header rules ---------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_json_round_trip(suite: Suite) -> None:
    envelope = _sealed(suite)
    raw = envelope.to_json()
    doc = json.loads(raw)
    assert set(doc) == {"header", "ciphertext", "signature"}
    assert base64.b64decode(doc["ciphertext"]) == envelope.ciphertext
    assert base64.b64decode(doc["signature"]) == envelope.signature
    assert doc["header"]["created_at"] == "2026-01-31T09:30:00Z"
    assert doc["header"]["suite"] == suite

    for source in (raw, raw.decode("utf-8")):
        back = SealedEnvelope.from_json(source)
        assert back == envelope
        assert back.header.info() == envelope.header.info()
        assert back.signed_bytes() == envelope.signed_bytes()
        verify(back, _signer().key.public_key())
        assert open_envelope(back, _hpke(suite)) == PLAINTEXT


def test_from_json_rejects_bad_base64_and_extra_fields() -> None:
    doc = json.loads(_sealed(CLASSIC).to_json())
    with pytest.raises(ValidationError):
        SealedEnvelope.from_json(json.dumps({**doc, "ciphertext": "not base64!"}))
    with pytest.raises(ValidationError):
        SealedEnvelope.from_json(json.dumps({**doc, "extra": 1}))
    with pytest.raises(ValidationError):
        SealedEnvelope.from_json(json.dumps({**doc, "header": {**doc["header"], "v": 2}}))


def test_naive_created_at_is_rejected() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        _header(_hpke(CLASSIC), _signer(), created_at=dt.datetime(2026, 1, 31, 9, 30))


def test_created_at_is_normalised_to_utc() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    header = _header(
        _hpke(CLASSIC), _signer(), created_at=dt.datetime(2026, 1, 31, 10, 30, tzinfo=cet)
    )
    assert header.created_at == CREATED_AT
    assert header.created_at.utcoffset() == dt.timedelta(0)
    assert header.info() == _header(_hpke(CLASSIC), _signer()).info()


def test_header_info_is_canonical_json() -> None:
    info = _header(_hpke(CLASSIC), _signer()).info()
    doc = json.loads(info)
    assert list(doc) == sorted(doc)
    assert b" " not in info
    assert doc["v"] == 1
    assert doc["message_type"] == "attest-request"


# --- key files --------------------------------------------------------------------------------


def _secrets_of(keys: OrgKeys) -> list[str]:
    doc = json.loads(keys.to_json())
    found = [
        rec[field]
        for rec in doc["keys"]
        for field in ("x25519", "mlkem768_seed", "ed25519")
        if field in rec
    ]
    assert found
    return found


@pytest.mark.parametrize("suite", SUITES)
def test_org_keys_json_round_trip_opens_envelopes(suite: Suite) -> None:
    keys = OrgKeys.generate("clinic-1", suite)
    hpke_key, signer = keys.current_hpke, keys.current_signing
    envelope = seal(PLAINTEXT, _header(hpke_key, signer), hpke_key.public(), signer)

    loaded = OrgKeys.from_json(keys.to_json())
    assert loaded.org_id == "clinic-1"
    assert [k.key_id for k in loaded.hpke_keys] == [hpke_key.key_id]
    assert [k.key_id for k in loaded.signing_keys] == [signer.key_id]
    assert loaded.current_hpke.public_encoded == hpke_key.public_encoded
    assert loaded.current_signing.public_encoded == signer.public_encoded
    assert open_envelope(envelope, loaded.current_hpke) == PLAINTEXT
    verify(envelope, decode_verify_key(loaded.current_signing.public_encoded))

    # and the loaded signing key signs what the original public key verifies
    again = seal(PLAINTEXT, envelope.header, hpke_key.public(), loaded.current_signing)
    verify(again, decode_verify_key(signer.public_encoded))


@pytest.mark.parametrize("suite", SUITES)
def test_org_keys_save_and_load(tmp_path: Path, suite: Suite) -> None:
    keys = OrgKeys.generate("clinic-2", suite)
    hpke_key, signer = keys.current_hpke, keys.current_signing
    envelope = seal(PLAINTEXT, _header(hpke_key, signer), hpke_key.public(), signer)

    path = tmp_path / "keys" / "clinic-2.json"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["clinic-2.json"]

    loaded = OrgKeys.load(path)
    assert loaded.org_id == "clinic-2"
    assert open_envelope(envelope, loaded.current_hpke) == PLAINTEXT


@pytest.mark.parametrize("suite", SUITES)
def test_reprs_do_not_show_private_keys(suite: Suite) -> None:
    keys = OrgKeys.generate("clinic-3", suite)
    secrets = _secrets_of(keys)
    assert len(secrets) == (3 if suite == HYBRID else 2)
    for text in (repr(keys), repr(keys.current_hpke), str(keys.current_hpke)):
        for secret in secrets:
            assert secret not in text
    assert keys.current_hpke.key_id in repr(keys.current_hpke)


# --- pseudonyms and fingerprints --------------------------------------------------------------

KEY_A = b"a" * 32
KEY_B = b"b" * 32


def test_bare_ref_is_deterministic_per_key() -> None:
    ref = bare_ref("0101901234", KEY_A)
    assert ref == bare_ref("0101901234", KEY_A)
    assert ref != bare_ref("0101901234", KEY_B)
    assert ref != bare_ref("0101901235", KEY_A)
    assert len(ref) == 32
    assert int(ref, 16) >= 0
    assert "0101901234" not in ref


@settings(max_examples=100)
@given(cpr=st.from_regex(r"\A[0-9]{10}\Z"))
def test_bare_ref_never_contains_the_cpr(cpr: str) -> None:
    ref = bare_ref(cpr, KEY_A)
    assert cpr not in ref
    assert ref == bare_ref(cpr, KEY_A)
    assert ref != bare_ref(cpr, KEY_B)


def test_fingerprint() -> None:
    first = fingerprint(b'{"citizen_cpr":"0101901234"}', KEY_A)
    assert first == fingerprint(b'{"citizen_cpr":"0101901234"}', KEY_A)
    assert first != fingerprint(b'{"citizen_cpr":"0101901235"}', KEY_A)
    assert first != fingerprint(b'{"citizen_cpr":"0101901234"}', KEY_B)
    assert len(first) == 64
    assert "0101901234" not in first


@settings(max_examples=100)
@given(a=st.binary(max_size=256), b=st.binary(max_size=256))
def test_fingerprint_differs_for_different_data(a: bytes, b: bytes) -> None:
    if a == b:
        assert fingerprint(a, KEY_A) == fingerprint(b, KEY_A)
    else:
        assert fingerprint(a, KEY_A) != fingerprint(b, KEY_A)

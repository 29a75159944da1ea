"""Pseudonyms: the `<key id>.<hmac>` format, the sealed CPR number, the store key's rule for
tracking events, and the rewriting of a tracking event's case ref."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from attest_gateway.contracts.envelope import Suite
from attest_gateway.core.errors import InvalidInput
from attest_gateway.crypto import pseudonyms as cps
from attest_gateway.crypto.pseudonyms import bare_ref
from attest_gateway.crypto.sealing import KeyRing, OrgKeys
from attest_gateway.infra.db import pseudonyms as ps
from attest_gateway.infra.db.engine import make_engine
from attest_gateway.tracker.consumer import TrackerHandler, TrackerState
from attest_gateway.tracker.rules import TrackerRules
from tests.support.events import contact_event, stage_event

KEY_A = b"a" * 32
KEY_B = b"b" * 32
CPR = "0101901234"
SUITES: list[Suite] = ["MLKEM768_X25519/HKDF_SHA256/AES_256_GCM", "X25519/HKDF_SHA256/AES_256_GCM"]


def expected_ref(cpr: str, key: bytes) -> str:
    """The documented format, computed without the code under test."""
    kid = hashlib.sha256(key).hexdigest()[:6]
    return f"{kid}.{hmac.new(key, cpr.encode(), hashlib.sha256).hexdigest()[:32]}"


def test_a_case_ref_is_the_key_id_and_the_keyed_hmac() -> None:
    ref = cps.case_ref(CPR, KEY_A)
    assert ref == expected_ref(CPR, KEY_A)
    assert re.fullmatch(r"[0-9a-f]{6}\.[0-9a-f]{32}", ref)
    assert len(ref) <= 64  # the case_ref columns are String(64)
    assert cps.key_id_of(ref) == cps.key_id(KEY_A) == hashlib.sha256(KEY_A).hexdigest()[:6]
    assert cps.case_ref(CPR, KEY_B) != ref
    assert cps.key_id_of(cps.case_ref(CPR, KEY_B)) == cps.key_id(KEY_B) != cps.key_id(KEY_A)


def test_a_bare_ref_has_no_key_id() -> None:
    assert cps.key_id_of("0123456789abcdef0123456789abcdef") is None


@settings(max_examples=100)
@given(cpr=st.from_regex(r"\A[0-9]{10}\Z"))
def test_a_case_ref_never_contains_the_cpr(cpr: str) -> None:
    ref = cps.case_ref(cpr, KEY_A)
    assert cpr not in ref
    assert ref == expected_ref(cpr, KEY_A)


def test_an_unlinked_ref_is_under_the_new_key_and_not_the_citizens_pseudonym() -> None:
    old = cps.case_ref(CPR, KEY_A)
    new = cps.unlinked_ref(old, KEY_B)
    assert cps.key_id_of(new) == cps.key_id(KEY_B)
    assert new == cps.unlinked_ref(old, KEY_B)
    assert new != cps.case_ref(CPR, KEY_B)
    assert new != cps.unlinked_ref(cps.case_ref("0101901235", KEY_A), KEY_B)
    assert len(new) <= 64


def test_the_store_key_admits_its_own_refs_and_bare_ones_only_before_a_rekey() -> None:
    mine, other = cps.case_ref(CPR, KEY_A), cps.case_ref(CPR, KEY_B)
    bare = mine.split(".", 1)[1]
    fresh = ps.StoreKey(cps.key_id(KEY_A), legacy=True)
    assert fresh.admit(mine) == mine
    assert fresh.admit(bare) == mine  # a bare ref of this key gets its key id
    assert fresh.admit(other) is None
    rekeyed = ps.StoreKey(cps.key_id(KEY_A), legacy=False)
    assert rekeyed.admit(mine) == mine
    assert rekeyed.admit(bare) is None
    assert rekeyed.admit(other) is None


# --- the sealed CPR number ----------------------------------------------------------------------


def ring(suite: Suite) -> tuple[KeyRing, OrgKeys]:
    keys = OrgKeys.generate("gateway", suite)
    return KeyRing({"gateway": keys}), keys


@pytest.mark.parametrize("suite", SUITES)
def test_a_sealed_cpr_number_opens_only_with_the_gateway_key_and_for_its_row(suite: Suite) -> None:
    keyring, keys = ring(suite)
    sealed = cps.seal_citizen(CPR, keys.current_hpke.public(), context="conversation:1")
    assert CPR not in sealed
    assert json.loads(sealed)["key_id"] == keys.current_hpke.key_id == cps.sealed_key_id(sealed)
    assert cps.open_citizen(sealed, keyring, context="conversation:1") == CPR
    with pytest.raises(cps.CitizenSealError, match="does not open"):
        cps.open_citizen(sealed, keyring, context="conversation:2")  # moved to another row
    with pytest.raises(cps.CitizenSealError, match="holds no HPKE key"):
        cps.open_citizen(sealed, ring(suite)[0], context="conversation:1")  # another holder
    data = json.loads(sealed)
    data["ct"] = data["ct"][:-8] + ("A" * 8 if not data["ct"].endswith("A" * 8) else "B" * 8)
    with pytest.raises(cps.CitizenSealError):
        cps.open_citizen(json.dumps(data), keyring, context="conversation:1")
    with pytest.raises(cps.CitizenSealError, match="not readable"):
        cps.open_citizen("{not json", keyring, context="conversation:1")


def test_a_cpr_number_sealed_to_an_older_key_of_the_ring_still_opens() -> None:
    keyring, keys = ring(SUITES[1])
    older = keys.current_hpke
    keys.hpke_keys.append(OrgKeys.generate("gateway", SUITES[1]).current_hpke)
    sealed = cps.seal_citizen(CPR, older.public(), context="contact:9")
    assert cps.sealed_key_id(sealed) == older.key_id
    assert cps.open_citizen(sealed, keyring, context="contact:9") == CPR


# --- tracking events ----------------------------------------------------------------------------


def test_rewriting_a_tracking_row_replaces_the_ref_and_a_contacts_record_key() -> None:
    old, new = cps.case_ref(CPR, KEY_A), cps.case_ref(CPR, KEY_B)
    renamed: dict[str, str] = {old: new}
    same: dict[str, str] = {old: old}
    nothing: dict[str, str] = {}
    stage = stage_event(old).model_dump_json().encode()
    key, value = ps.rewrite_tracking_row("conv-1", stage, renamed.get) or ("", b"")
    assert key == "conv-1"  # a stage event's record key is its conversation
    assert json.loads(value)["case_ref"] == new
    assert json.loads(value) == json.loads(stage) | {"case_ref": new}
    contact = contact_event(old).model_dump_json().encode()
    key, value = ps.rewrite_tracking_row(old, contact, renamed.get) or ("", b"")
    assert key == new  # a contact event's record key is its case ref
    assert json.loads(value)["case_ref"] == new
    assert ps.rewrite_tracking_row("conv-1", stage, same.get) is None
    with pytest.raises(ValueError, match="cannot be mapped"):
        ps.rewrite_tracking_row("conv-1", stage, nothing.get)
    with pytest.raises(ValueError, match="unreadable"):
        ps.rewrite_tracking_row("conv-1", b"{not json", nothing.get)


def record(value: bytes, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        "t.gateway.tracking", 0, offset, 0, 0, b"k", value, None, 1, len(value), ()
    )


async def test_the_tracker_dead_letters_events_of_another_pseudonym_key() -> None:
    engine = make_engine("sqlite+aiosqlite://")  # never reached: nothing is applied
    try:
        handler = TrackerHandler(
            engine,
            TrackerState(TrackerRules.build({})),
            store_key=ps.StoreKey(cps.key_id(KEY_B)),
        )
        stale = [
            record(stage_event(cps.case_ref(CPR, KEY_A)).model_dump_json().encode(), 1),
            record(contact_event(cps.case_ref(CPR, KEY_A)).model_dump_json().encode(), 2),
            record(stage_event(bare_ref(CPR, KEY_B)).model_dump_json().encode(), 3),
        ]
        for r in stale:
            with pytest.raises(InvalidInput) as caught:
                await handler(r)
            assert caught.value.code == "stale-pseudonym"
        assert await handler.handle_batch(stale) == stale  # left to be dead-lettered one by one
    finally:
        await engine.dispose()

"""The OpenAPI document says what the validators enforce: a value the document's schema
accepts, the gateway accepts, and the other way round, wherever JSON Schema can say it
(schemathesis's positive and negative data checks rely on it: tests/e2e/test_schemathesis.py).

Schemas are checked with jsonschema_rs, which reads patterns as ECMA-262 does (as schemathesis
and most clients' validators do): `$` is the end of the text.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from attest_gateway.contracts.envelope import BASE64_PATTERN, SealedEnvelope
from attest_gateway.contracts.jobcenter import AttestRequestIn, ReceiverRef
from attest_gateway.core.attests import DEFAULT_CATALOGUE
from attest_gateway.core.bounds import control_character_in
from attest_gateway.core.identifiers import (
    GLN_CHECK_DIGIT_WRONG,
    check_cpr,
    check_gln,
    check_kommunekode,
    check_sor,
    check_ydernummer,
)
from attest_gateway.entrypoints.cli.ops import canonical_settings, openapi_document
from attest_gateway.services.contacts import ContactIn
from attest_gateway.tracker import rules


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return openapi_document(canonical_settings())


def accepts(check: Callable[[str], object], value: str) -> bool:
    try:
        check(value)
    except PydanticCustomError:
        return False
    return True


def field_validator(model: type[BaseModel], name: str) -> jsonschema_rs.Validator:
    schema = model.model_json_schema()
    return jsonschema_rs.validator_for({**schema["properties"][name], "$defs": schema["$defs"]})


def test_the_cpr_pattern_is_the_date_check() -> None:
    """Every day and month, every year, every century digit: the pattern and check_cpr agree
    (31 April, 29 February 1900 and 2000 included)."""
    schema = field_validator(AttestRequestIn, "citizen_cpr")
    disagree = [
        cpr
        for day in range(33)
        for month in range(14)
        for year in range(100)
        for seventh in range(10)
        if schema.is_valid(cpr := f"{day:02d}{month:02d}{year:02d}{seventh}123")
        != accepts(check_cpr, cpr)
    ]
    assert disagree == []


@settings(max_examples=400)
@given(st.text(alphabet="0123456789- \t\n", max_size=14))
def test_the_cpr_pattern_is_the_shape_check(value: str) -> None:
    schema = field_validator(AttestRequestIn, "citizen_cpr")
    assert schema.is_valid(value) == accepts(check_cpr, value)


def test_the_cpr_check_allows_spaces_around_only() -> None:
    assert accepts(check_cpr, " 010190-1234 ")
    assert not accepts(check_cpr, "\t0101901234")
    assert not accepts(check_cpr, "0101901234\n")


@settings(max_examples=300)
@given(st.text(alphabet="0123456789 x", max_size=20))
def test_the_identifier_patterns_are_the_checks(value: str) -> None:
    receiver = ReceiverRef.model_json_schema()["properties"]
    sor = jsonschema_rs.validator_for(receiver["sor"]["anyOf"][0])
    ydernummer = jsonschema_rs.validator_for(receiver["ydernummer"]["anyOf"][0])
    kommunekode = field_validator(AttestRequestIn, "municipality")
    assert sor.is_valid(value) == accepts(check_sor, value)
    assert ydernummer.is_valid(value) == accepts(check_ydernummer, value)
    assert kommunekode.is_valid(value) == accepts(check_kommunekode, value)
    assert kommunekode.is_valid("101")
    assert accepts(check_kommunekode, "101")


@settings(max_examples=300)
@given(st.text(alphabet="0123456789 x", max_size=16))
def test_the_gln_pattern_is_the_check_but_its_check_digit(value: str) -> None:
    schema = field_validator(AttestRequestIn, "jobcenter_gln")
    try:
        check_gln(value)
    except PydanticCustomError as error:
        only_the_check_digit = error.message() == GLN_CHECK_DIGIT_WRONG
    else:
        only_the_check_digit = True
    assert schema.is_valid(value) == only_the_check_digit


def test_the_same_identifier_schemas_in_a_contact() -> None:
    for name in ("municipality", "citizen_cpr", "psychiatry_sor"):
        assert field_validator(ContactIn, name).is_valid("0") is False


@pytest.mark.parametrize(
    "receiver",
    [
        {},
        {"sor": "715381000016006"},
        {"ydernummer": "012345"},
        {"sor": "715381000016006", "ydernummer": "012345"},
        {"sor": "715381000016006", "ydernummer": None},
        {"sor": None, "ydernummer": "012345"},
        {"sor": None, "ydernummer": None},
        {"sor": None},
    ],
)
def test_the_receiver_schema_wants_exactly_one(receiver: dict[str, Any]) -> None:
    schema = jsonschema_rs.validator_for(ReceiverRef.model_json_schema())
    try:
        ReceiverRef.model_validate(receiver)
    except ValidationError:
        valid = False
    else:
        valid = True
    assert schema.is_valid(receiver) == valid


def test_the_attest_type_is_one_of_the_catalogue() -> None:
    schema = AttestRequestIn.model_json_schema()["properties"]["attest_type"]
    assert schema["enum"] == sorted(DEFAULT_CATALOGUE)


HEADER = {
    "message_id": "m-1",
    "bundle_id": "b-1",
    "conversation_id": "c-1",
    "message_type": "acknowledgement",
    "sender": "psyk-kbh",
    "receiver": "gateway",
    "suite": "X25519/HKDF_SHA256/AES_256_GCM",
    "recipient_key_id": "hpke-1",
    "signer": "psyk-kbh",
    "signer_key_id": "sig-1",
    "created_at": "2026-10-29T09:30:00+00:00",
}


def envelope_takes(value: str) -> bool:
    try:
        SealedEnvelope.model_validate({"header": HEADER, "ciphertext": value, "signature": "AA=="})
    except ValidationError:
        return False
    return True


@settings(max_examples=500)
@given(st.text(alphabet="AZaz09+/=-_ \n", max_size=13))
@example("AAAA=")  # padding beyond the last group: the old decoding let it through
@example("AA")
@example("AA==\n")
def test_the_base64_pattern_is_what_the_envelope_takes(value: str) -> None:
    pattern = jsonschema_rs.validator_for({"pattern": BASE64_PATTERN})
    assert pattern.is_valid(value) == envelope_takes(value)
    assert envelope_takes(base64.b64encode(value.encode()).decode())


def test_the_envelope_schema_states_base64(openapi: dict[str, Any]) -> None:
    schema = openapi["components"]["schemas"]["SealedEnvelope"]["properties"]
    assert schema["ciphertext"]["pattern"] == schema["signature"]["pattern"] == BASE64_PATTERN
    assert SealedEnvelope.model_json_schema()["properties"]["ciphertext"]["pattern"]


def test_a_fhir_body_is_a_bundle(openapi: dict[str, Any]) -> None:
    body = openapi["paths"]["/medcom/v1/messages"]["post"]["requestBody"]["content"]
    schema = jsonschema_rs.validator_for(
        {**body["application/fhir+json"]["schema"], "components": openapi["components"]}
    )
    assert schema.is_valid(body["application/fhir+json"]["example"])
    assert not schema.is_valid({"resourceType": "Patient"})
    assert not schema.is_valid({})
    # FHIR strings, keys and values at any depth: tab, line feed, carriage return, no other
    # control character (the gateway's control_character_in).
    assert schema.is_valid({"resourceType": "Bundle", "entry": [{"a": "x\ty\r\nz"}]})
    for bad in ({"entry": [{"a": "x\x00"}]}, {"entry": [{"a\x07": 1}]}, {"id\x1f": "b"}):
        assert not schema.is_valid({"resourceType": "Bundle", **bad})
        assert control_character_in(bad)


def test_the_duration_metric_is_one_of_the_metrics(openapi: dict[str, Any]) -> None:
    parameters = openapi["paths"]["/ministry/v1/durations"]["get"]["parameters"]
    metric = next(p for p in parameters if p["name"] == "metric")
    assert metric["schema"]["enum"] == sorted(rules.METRIC_NAMES)


def test_csv_answers_are_documented(openapi: dict[str, Any]) -> None:
    with_format = [
        path
        for path, operations in openapi["paths"].items()
        for operation in operations.values()
        if any(p["name"] == "format" for p in operation.get("parameters", []))
    ]
    assert sorted(with_format) == [
        "/ministry/v1/contacts",
        "/ministry/v1/coverage",
        "/ministry/v1/deadlines",
        "/ministry/v1/durations",
        "/ministry/v1/latency",
        "/ministry/v1/overdue",
        "/ministry/v1/rehabilitation",
        "/ministry/v1/request-timing",
    ]
    for path in with_format:
        assert "text/csv" in openapi["paths"][path]["get"]["responses"]["200"]["content"]

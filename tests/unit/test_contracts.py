"""The published contracts: the OpenAPI document is valid OpenAPI 3.1 with an example for
every answer of every endpoint and every error code the code can raise; the AsyncAPI
document is valid against the AsyncAPI 3.0.0 JSON schema (tests/fixtures/schemas); the
copies in docs/ and the README's configuration table are in sync with the code."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from attest_gateway.config import load_settings
from attest_gateway.contracts.stages import StageEvent
from attest_gateway.core import errors
from attest_gateway.core.errors import ErrorCode
from attest_gateway.entrypoints.cli.ops import (
    canonical_settings,
    openapi_document,
    replace_settings_table,
)
from attest_gateway.entrypoints.http.asyncapi import build_asyncapi, render_markdown
from attest_gateway.entrypoints.http.openapi import ERROR_CATALOGUE
from attest_gateway.entrypoints.http.problems import FIELD_CODES, status_of
from attest_gateway.infra.kafka.reading import KafkaReadTimeout, TopicMissing
from attest_gateway.medcom.errors import BUNDLE_ERROR_CODES, BundleError

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "attest_gateway"
ASYNCAPI_SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "asyncapi-3.0.0.json"
# Dead-letter reasons of the Kafka consumers and the Kafka readers' errors: never answered
# over HTTP (the trust policy raises the first two only for a relayed envelope).
KAFKA_ONLY = {
    ErrorCode.NOT_ADDRESSED_TO_RECEIVER,
    ErrorCode.SIGNER_NOT_SENDER,
    ErrorCode.UNKNOWN_CONVERSATION,
    ErrorCode.INVALID_TRACKING_EVENT,
    ErrorCode.STALE_PSEUDONYM,
    ErrorCode.KAFKA_TIMEOUT,
    ErrorCode.TOPIC_MISSING,
    ErrorCode.HANDLER_CRASHED,
}
# Endpoints whose answers are still taking shape in another issue: their success examples
# belong in entrypoints/http/openapi.py `_SUCCESS_EXAMPLES` once they settle (issue 5, the tracker).
PENDING_EXAMPLES = {
    "POST /jobcenter/v1/contacts",
    "GET /ministry/v1/report",
    "GET /ministry/v1/durations",
    "GET /ministry/v1/deadlines",
    "GET /ministry/v1/contacts",
    "GET /ministry/v1/meta",
}
REGENERATE = "run `make docs` (attest-gateway contracts write docs; config docs --write README.md)"


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return openapi_document(canonical_settings())


def _error_classes() -> dict[str, type[errors.GatewayError]]:
    """The tree's classes by name, and those defined outside core/errors.py."""
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError)
    }
    classes.update(
        BundleError=BundleError, KafkaReadTimeout=KafkaReadTimeout, TopicMissing=TopicMissing
    )
    return classes


def raised_codes() -> dict[str, set[tuple[int, str]]]:
    """Every code given to an error class anywhere in the source (`Class(ErrorCode.X, …)`),
    with the (status, title) the HTTP table gives that class and code, found by reading the
    code (so a new code cannot be forgotten). Codes only a Kafka consumer raises are left
    out: they are dead-letter reasons, never answered over HTTP."""
    classes = _error_classes()
    found: dict[str, set[tuple[int, str]]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            name = node.func.id
            if name not in classes or not node.args:
                continue
            first = node.args[0]
            assert not isinstance(first, ast.Constant), f"{path}:{node.lineno}: a free code"
            if (
                isinstance(first, ast.Attribute)
                and isinstance(first.value, ast.Name)
                and first.value.id == "ErrorCode"
            ):
                code = ErrorCode[first.attr]
                if code not in KAFKA_ONLY:
                    found.setdefault(code, set()).add(status_of(classes[name], code))
    unprocessable = (422, "Unprocessable content")
    for code in BUNDLE_ERROR_CODES:  # the MedCom parser's codes reach the API as 422
        found.setdefault(code, set()).add(unprocessable)
    for code in (*FIELD_CODES.values(), ErrorCode.INVALID_REQUEST):
        found.setdefault(code, set()).add(unprocessable)  # validation errors (problems.py)
    return found


def _responses(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (status, response) of the document: the operations' and the shared ones
    (components.responses: the 405 that any path answers for a method it does not list)."""
    found = [
        (status, response)
        for operations in openapi["paths"].values()
        for operation in operations.values()
        for status, response in operation["responses"].items()
    ]
    shared = openapi["components"].get("responses", {}).values()
    for response in shared:
        statuses = {ex["value"]["status"] for ex in _problem_examples(response).values()}
        found += [(str(status), response) for status in statuses]
    return found


def _problem_examples(response: dict[str, Any]) -> dict[str, Any]:
    media = response.get("content", {}).get("application/problem+json")
    examples: dict[str, Any] = (media or {}).get("examples", {})
    return examples


def test_openapi_document_is_valid_openapi(openapi: dict[str, Any]) -> None:
    validate(openapi)


def test_the_validator_would_catch_a_broken_document(openapi: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(openapi))
    broken["paths"]["/healthz"]["get"]["responses"]["200"]["content"] = "nonsense"
    with pytest.raises(Exception, match=r"nonsense|not of type|is not valid"):
        validate(broken)


def test_every_error_code_in_the_source_is_documented_with_its_status(
    openapi: dict[str, Any],
) -> None:
    documented: dict[str, set[int]] = {}
    for status, response in _responses(openapi):
        for code in _problem_examples(response):
            documented.setdefault(code, set()).add(int(status))
    missing = {}
    for code, answers in raised_codes().items():
        if code not in ERROR_CATALOGUE:
            missing[code] = "not in openapi.ERROR_CATALOGUE"
        elif ERROR_CATALOGUE[code][:2] not in answers:
            missing[code] = f"catalogue says {ERROR_CATALOGUE[code][:2]}, code raises {answers}"
        elif code not in documented:
            missing[code] = "on no endpoint (openapi.ENDPOINT_ERRORS)"
    assert missing == {}


def test_every_error_code_is_documented_or_kafka_only() -> None:
    """One enum: each member is an HTTP problem code in the catalogue, or a dead-letter
    reason only; none is both, and the catalogue holds nothing else."""
    assert set(ERROR_CATALOGUE) == set(ErrorCode) - KAFKA_ONLY


def test_the_raised_codes_are_read_from_the_source() -> None:
    """The walk over the source finds raise sites of every kind of the tree."""
    found = raised_codes()
    assert found[ErrorCode.SENDER_MISMATCH] == {(403, "Forbidden")}
    assert found[ErrorCode.UNKNOWN_KEY] == {
        (422, "Envelope rejected"),
        (422, "Unprocessable content"),
    }
    assert found[ErrorCode.INVALID_BUNDLE] == {(400, "Bad request"), (422, "Unprocessable content")}
    assert found[ErrorCode.PAYLOAD_TOO_LARGE] == {(413, "Payload too large")}


def test_every_answer_of_every_endpoint_has_an_example(openapi: dict[str, Any]) -> None:
    without = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    if media_type.startswith("text/html"):
                        continue  # pages (the ministry dashboard) have no JSON example
                    if f"{method.upper()} {path}" in PENDING_EXAMPLES and status < "400":
                        continue
                    if not (media.get("example") is not None or media.get("examples")):
                        without.append(f"{method.upper()} {path} {status} {media_type}")
            body = operation.get("requestBody", {}).get("content", {})
            for media_type, media in body.items():
                if f"{method.upper()} {path}" in PENDING_EXAMPLES:
                    continue
                if not (media.get("example") is not None or media.get("examples")):
                    without.append(f"{method.upper()} {path} request {media_type}")
    assert without == [], "add examples in entrypoints/http/openapi.py"


def test_problem_examples_match_the_problem_schema(openapi: dict[str, Any]) -> None:
    schema = openapi["components"]["schemas"]["Problem"]
    for status, response in _responses(openapi):
        for example in _problem_examples(response).values():
            jsonschema.validate(example["value"], schema)
            assert example["value"]["status"] == int(status)


def test_partner_endpoints_declare_bearer_and_mutual_tls(openapi: dict[str, Any]) -> None:
    for path, operations in openapi["paths"].items():
        if path.startswith(("/jobcenter/", "/medcom/")):
            for operation in operations.values():
                assert operation["security"] == [{"apiKey": []}, {"mutualTLS": []}]
                assert "401" in operation["responses"]


def _asyncapi_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text("utf-8")))


def test_asyncapi_document_is_valid_against_the_asyncapi_schema() -> None:
    doc = json.loads(json.dumps(build_asyncapi(canonical_settings())))
    errors_found = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _asyncapi_validator().iter_errors(doc)
    ]
    assert errors_found == []


def test_the_asyncapi_check_would_catch_a_mistake() -> None:
    doc = json.loads(json.dumps(build_asyncapi(canonical_settings())))
    doc["channels"]["tracking"]["address"] = 42
    doc["operations"]["publishStageEvent"]["action"] = "publish"  # AsyncAPI 2 wording
    assert len(list(_asyncapi_validator().iter_errors(doc))) >= 2


def test_asyncapi_payloads_come_from_the_models() -> None:
    doc = build_asyncapi(canonical_settings())
    schemas = doc["components"]["schemas"]
    assert set(schemas["StageEvent"]["properties"]) == set(StageEvent.model_fields)
    assert set(schemas["EnvelopeHeader"]["properties"]) >= {"message_id", "signer_key_id"}


def test_asyncapi_addresses_carry_the_topic_prefix() -> None:
    doc = build_asyncapi(load_settings(kafka_topic_prefix="kbh."))
    assert doc["channels"]["medcomMessages"]["address"] == "kbh.medcom.messages"


def test_docs_are_in_sync_with_the_code(openapi: dict[str, Any]) -> None:
    asyncapi = build_asyncapi(canonical_settings())
    docs = ROOT / "docs"
    expected = {
        "openapi.json": json.dumps(openapi, indent=2, ensure_ascii=False) + "\n",
        "asyncapi.json": json.dumps(asyncapi, indent=2, ensure_ascii=False) + "\n",
        "messages.md": render_markdown(asyncapi),
    }
    stale = [
        name
        for name, text in expected.items()
        if not (docs / name).exists() or (docs / name).read_text("utf-8") != text
    ]
    assert stale == [], f"docs/{', docs/'.join(stale)} out of date: {REGENERATE}"


def test_readme_configuration_table_is_in_sync_with_settings() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    assert replace_settings_table(readme) == readme, f"README table out of date: {REGENERATE}"

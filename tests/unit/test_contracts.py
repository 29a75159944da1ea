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
from attest_gateway.entrypoints.cli.ops import (
    canonical_settings,
    openapi_document,
    replace_settings_table,
)
from attest_gateway.entrypoints.http.asyncapi import build_asyncapi, render_markdown
from attest_gateway.entrypoints.http.openapi import ERROR_CATALOGUE
from attest_gateway.entrypoints.http.plumbing import FIELD_CODES
from attest_gateway.medcom.message import BUNDLE_ERROR_CODES

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "attest_gateway"
ASYNCAPI_SCHEMA = ROOT / "tests" / "fixtures" / "schemas" / "asyncapi-3.0.0.json"
KAFKA_ONLY = {"PermanentError", "TransientError"}  # never answered over HTTP
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


def _http_error_classes() -> dict[str, int]:
    return {
        name: cls.status
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError)
    }


def raised_codes() -> dict[str, set[int]]:
    """Every literal code given to an HTTP error class anywhere in the source, with the
    status of the class, found by reading the code (so a new code cannot be forgotten)."""
    classes = _http_error_classes()
    found: dict[str, set[int]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            name = node.func.id
            if name in KAFKA_ONLY or name not in classes or not node.args:
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.setdefault(first.value, set()).add(classes[name])
    for code in BUNDLE_ERROR_CODES:  # the MedCom parser's codes reach the API as 422
        found.setdefault(code, set()).add(422)
    for code in (*FIELD_CODES.values(), "invalid-request"):
        found.setdefault(code, set()).add(422)  # validation errors (entrypoints/http/plumbing.py)
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
    for code, statuses in raised_codes().items():
        if code not in ERROR_CATALOGUE:
            missing[code] = "not in openapi.ERROR_CATALOGUE"
        elif ERROR_CATALOGUE[code][0] not in statuses:
            missing[code] = f"catalogue says {ERROR_CATALOGUE[code][0]}, code raises {statuses}"
        elif code not in documented:
            missing[code] = "on no endpoint (openapi.ENDPOINT_ERRORS)"
    assert missing == {}


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


def test_partner_endpoints_declare_bearer_authentication(openapi: dict[str, Any]) -> None:
    for path, operations in openapi["paths"].items():
        if path.startswith(("/jobcenter/", "/medcom/")):
            for operation in operations.values():
                assert operation["security"] == [{"apiKey": []}]
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

"""A vendor can build from the contracts alone: the generated OpenAPI and AsyncAPI documents
describe every operation, answer, schema, field and message, and give an example of every
answer, every error code and every message. Each check lists everything it finds missing.
The README's table of endpoints names every operation of the OpenAPI document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from attest_gateway.config import load_settings
from attest_gateway.contracts.glossary import missing
from attest_gateway.entrypoints.cli.ops import canonical_settings, openapi_document
from attest_gateway.entrypoints.http.asyncapi import build_asyncapi

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    return openapi_document(canonical_settings())


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    return build_asyncapi(load_settings())


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _has_example(media: dict[str, Any]) -> bool:
    return "example" in media or bool(media.get("examples"))


def test_every_operation_is_described(openapi: dict[str, Any]) -> None:
    lacking = [f"{m.upper()} {p}" for m, p, op in _operations(openapi) if not op.get("description")]
    assert lacking == []


def test_every_answer_is_described_with_an_example(openapi: dict[str, Any]) -> None:
    lacking = []
    for method, path, operation in _operations(openapi):
        for status, response in operation["responses"].items():
            where = f"{method.upper()} {path} {status}"
            if "$ref" in response:
                continue
            if not response.get("description"):
                lacking.append(f"{where}: description")
            for media_type, media in response.get("content", {}).items():
                if not _has_example(media):
                    lacking.append(f"{where} {media_type}: example")
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            if not _has_example(media):
                lacking.append(f"{method.upper()} {path} request {media_type}: example")
    assert lacking == []


def test_every_error_code_of_an_operation_has_its_example(openapi: dict[str, Any]) -> None:
    lacking = []
    for method, path, operation in _operations(openapi):
        for status, response in operation["responses"].items():
            if status.startswith("2") or "$ref" in response:
                continue
            codes = str(response["description"]).split(" | ")
            (media,) = response["content"].values()
            lacking += [
                f"{method.upper()} {path} {status} {code}"
                for code in codes
                if media.get("examples", {}).get(code, {}).get("value", {}).get("code") != code
            ]
    assert lacking == []


def test_every_schema_and_field_is_described(
    openapi: dict[str, Any], asyncapi: dict[str, Any]
) -> None:
    assert missing(openapi["components"]["schemas"]) == []
    assert missing(asyncapi["components"]["schemas"]) == []


def test_the_check_finds_an_undescribed_field() -> None:
    schemas = {"A": {"description": "an A", "properties": {"x": {}, "y": {"description": "y"}}}}
    assert missing({**schemas, "B": {"properties": {}}}) == ["A.x", "B"]


def test_servers_security_and_the_fhir_bundle(openapi: dict[str, Any]) -> None:
    assert openapi["info"]["description"]
    assert [s["url"] for s in openapi["servers"]][-1] == "https://localhost:8000"
    schemes = openapi["components"]["securitySchemes"]
    assert (schemes["apiKey"]["scheme"], schemes["mutualTLS"]["type"]) == ("bearer", "mutualTLS")
    partner = [
        f"{m.upper()} {p}"
        for m, p, op in _operations(openapi)
        if p.split("/")[1] in ("jobcenter", "medcom", "psychiatry", "directory", "webhooks")
        and op.get("security") != [{"apiKey": []}, {"mutualTLS": []}]
    ]
    assert partner == []
    bundle = openapi["components"]["schemas"]["FhirBundle"]
    assert bundle["properties"]["resourceType"] == {
        "const": "Bundle",
        "description": "always Bundle",
    }
    assert "medcom-careCommunication-message" in bundle["description"]
    body = openapi["paths"]["/medcom/v1/messages"]["post"]["requestBody"]["content"]
    assert body["application/fhir+json"]["schema"] == {"$ref": "#/components/schemas/FhirBundle"}


@pytest.mark.parametrize(
    ("method", "path", "schema"),
    [
        ("get", "/medcom/v1/mailbox", "Mailbox"),
        ("post", "/medcom/v1/messages", "MessageAccepted"),
        ("post", "/medcom/v1/mailbox/{message_id}/collected", "Collected"),
        ("post", "/jobcenter/v1/inbox/{message_id}/ack", "ReplyAcknowledged"),
    ],
)
def test_answers_are_typed_and_their_examples_fit(
    openapi: dict[str, Any], method: str, path: str, schema: str
) -> None:
    (success,) = [
        r for s, r in openapi["paths"][path][method]["responses"].items() if s.startswith("2")
    ]
    media = success["content"]["application/json"]
    assert media["schema"] == {"$ref": f"#/components/schemas/{schema}"}
    root = {**media["schema"], "components": openapi["components"]}
    jsonschema.Draft202012Validator(root).validate(media["example"])


def test_every_message_is_described_with_examples_that_fit(asyncapi: dict[str, Any]) -> None:
    components = asyncapi["components"]
    lacking = []
    for name, message in components["messages"].items():
        if not message.get("summary") or not message.get("title"):
            lacking.append(f"{name}: summary")
        if not message.get("examples"):
            lacking.append(f"{name}: example")
        for example in message.get("examples", []):
            root = {**message["payload"], "components": components}
            jsonschema.Draft7Validator(root).validate(example["payload"])
            jsonschema.Draft7Validator(message["headers"]).validate(example["headers"])
    for name, channel in asyncapi["channels"].items():
        if not channel.get("description"):
            lacking.append(f"channel {name}: description")
    assert lacking == []


def test_every_message_type_is_listed_on_its_topic(asyncapi: dict[str, Any]) -> None:
    listed = {name for ch in asyncapi["channels"].values() for name in ch["messages"]}
    assert listed == set(asyncapi["components"]["messages"])
    assert set(asyncapi["channels"]["tracking"]["messages"]) == {"StageEvent", "ContactEvent"}


def readme_endpoints(text: str) -> set[str]:
    """`METHOD /path` of every endpoint the README's table names; path parameters as `{}`.
    A cell may abbreviate: `/durations` after `GET /ministry/v1/report` is
    `/ministry/v1/durations`, and `…/endpoints/{id}` is under the row's `/webhooks/v1`."""
    table = text[text.index("| endpoint | who | what |") :].split("\n\n", 1)[0]
    found: set[str] = set()
    for row in table.splitlines()[2:]:
        method, root = "", ""
        for span in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            head = re.match(r"^(GET|POST|PUT|PATCH|DELETE) (.+)$", span)
            if head:
                method, span = head.group(1), head.group(2)
            if span.startswith("…"):
                span = root + span[1:]
            elif span.startswith("/") and root and not span.startswith(root) and not head:
                span = root + span
            if span.startswith("/"):
                root = root or "/".join(span.split("/")[:3])
                found.add(f"{method} {re.sub(r'{[^}]*}', '{}', span)}")
    return found


def test_the_readme_table_parser_reads_abbreviations() -> None:
    text = (
        "| endpoint | who | what |\n|---|---|---|\n"
        "| `GET /m/v1/report`, `/meta` | x | y |\n"
        "| `POST /w/v1/endpoints`, `DELETE …/endpoints/{id}` | x | y |\n\nafter"
    )
    assert readme_endpoints(text) == {
        "GET /m/v1/report",
        "GET /m/v1/meta",
        "POST /w/v1/endpoints",
        "DELETE /w/v1/endpoints/{}",
    }


def test_the_readme_names_every_endpoint(openapi: dict[str, Any]) -> None:
    named = readme_endpoints((ROOT / "README.md").read_text("utf-8"))
    unnamed = [
        f"{m.upper()} {p}"
        for m, p, _ in _operations(openapi)
        if f"{m.upper()} {re.sub(r'{[^}]*}', '{}', p)}" not in named
    ]
    assert unnamed == []

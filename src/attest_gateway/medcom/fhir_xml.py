"""FHIR XML ↔ FHIR JSON, by the rules of http://hl7.org/fhir/R4/xml.html. Pure: no I/O.

The two formats carry the same content; XML leaves out what a JSON document says by itself
and says what JSON leaves out:

- the resource type is the element's name (namespace ``http://hl7.org/fhir``); a resource
  inside another (``Bundle.entry.resource``, ``contained``, ``Parameters.parameter.resource``)
  is wrapped in an element of the resource type;
- a primitive is an element with a ``value`` attribute; its ``id`` and extensions (JSON's
  ``_name``) are the element's attribute and children; ``id`` of any other element and
  ``url`` of an extension are attributes too, but a resource's ``id`` is an element;
- elements come in the order of their definition, a repeating one as repeated elements;
- the narrative's ``div`` is XHTML (namespace ``http://www.w3.org/1999/xhtml``), a string in
  JSON.

What XML does not say (order, which elements repeat, which primitives are JSON numbers or
booleans) comes from the element table ``attest_gateway/data/fhir-elements.json``, generated
from the R4B models of ``fhir.resources`` (tests/support/fhir_elements.py; the resources of a
MedCom message are the same in R4 and R4B).

Reading XML is the dangerous direction: :func:`xml_to_json` parses with ``defusedxml`` (no
DTD, no entity declarations, no external references, so no entity expansion bomb and no
file or network access), refuses more than :data:`MAX_XML_DEPTH` levels and
:data:`MAX_XML_ELEMENTS` elements, and raises only input errors
whose detail names element paths, never values.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any, Final

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from attest_gateway.core.errors import ErrorCode, Malformed
from attest_gateway.medcom.errors import BundleError

FHIR_NS: Final = "http://hl7.org/fhir"
XHTML_NS: Final = "http://www.w3.org/1999/xhtml"
XML_CONTENT_TYPE: Final = "application/fhir+xml"
JSON_CONTENT_TYPE: Final = "application/fhir+json"

MAX_XML_DEPTH: Final = 64
"""The deepest element nesting a document may have: the JSON limit
(:data:`~attest_gateway.medcom.parse.MAX_JSON_DEPTH`), counted in elements. A FHIR XML
document nests about as deep as its JSON (a primitive's value is an attribute)."""

MAX_XML_ELEMENTS: Final = 200_000
"""The most elements a document may have. The body limit bounds the bytes already; this
bounds the work on a document of tiny elements."""

_F = "{" + FHIR_NS + "}"
_X = "{" + XHTML_NS + "}"


@dataclass(frozen=True, slots=True)
class _Element:
    name: str
    repeats: bool
    kind: str  # "s" string, "b" boolean, "n" number, "x" xhtml, "R" resource, else a type


@dataclass(frozen=True, slots=True)
class _Type:
    """One type's elements: in order, by name, their positions, and the JSON keys it takes."""

    elements: tuple[_Element, ...]
    by_name: dict[str, _Element]
    position: dict[str, int]
    keys: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Table:
    resources: frozenset[str]
    types: dict[str, _Type]

    def elements(self, type_name: str) -> tuple[_Element, ...]:
        return self.types[type_name].elements


@cache
def _table() -> _Table:
    raw = json.loads(
        resources.files("attest_gateway.data").joinpath("fhir-elements.json").read_text("utf-8")
    )
    types: dict[str, _Type] = {}
    for type_name, rows in raw["types"].items():
        elements = []
        for row in rows:
            name, card, kind = row.split(" ")
            elements.append(_Element(name, card == "*", kind))
        types[type_name] = _Type(
            elements=tuple(elements),
            by_name={e.name: e for e in elements},
            position={e.name: i for i, e in enumerate(elements)},
            keys=frozenset(e.name for e in elements) | frozenset("_" + e.name for e in elements),
        )
    return _Table(frozenset(raw["resources"]), types)


def _is_primitive(kind: str) -> bool:
    return kind in ("s", "b", "n")


# ---------------------------------------------------------------- JSON → XML


def json_to_xml(resource: dict[str, Any]) -> bytes:
    """A FHIR resource in JSON (decoded) as a FHIR XML document (UTF-8, with declaration).

    Raises BundleError (``invalid-bundle``) for an element FHIR does not define, so that
    nothing is silently left out."""
    root = _resource_element(resource, "")
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _write(root, out, FHIR_NS)
    return "".join(out).encode("utf-8")


_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTRIBUTE_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\n": "&#10;",
        "\r": "&#13;",
        "\t": "&#9;",
    }
)


def _write(element: ET.Element, out: list[str], default_ns: str) -> None:
    """Serialise with a default namespace per vocabulary (FHIR, and XHTML from the
    narrative's div on), as FHIR XML is written; ElementTree's own writer would give XHTML a
    prefix. Iterative, so that no depth hits Python's recursion limit."""
    stack: list[tuple[ET.Element, str, bool]] = [(element, default_ns, False)]
    while stack:
        node, parent_ns, closing = stack.pop()
        namespace, _, name = str(node.tag)[1:].partition("}")
        if closing:
            out.append(f"</{name}>")
            if node.tail:
                out.append(node.tail.translate(_TEXT_ESCAPES))
            continue
        attributes = "".join(
            f' {_attribute_name(k)}="{v.translate(_ATTRIBUTE_ESCAPES)}"'
            for k, v in node.attrib.items()
        )
        if namespace != parent_ns or node is element:
            attributes = f' xmlns="{namespace}"{attributes}'
        children = list(node)
        if not children and not node.text:
            out.append(f"<{name}{attributes}/>")
            if node.tail and node is not element:
                out.append(node.tail.translate(_TEXT_ESCAPES))
            continue
        out.append(f"<{name}{attributes}>")
        if node.text:
            out.append(node.text.translate(_TEXT_ESCAPES))
        stack.append((node, parent_ns, True))
        stack.extend((child, namespace, False) for child in reversed(children))


def _resource_element(resource: object, where: str) -> ET.Element:
    table = _table()
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or resource_type not in table.resources:
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where or '<root>'}: not a FHIR resource")
    assert isinstance(resource, dict)
    element = ET.Element(_F + resource_type)
    _fill(element, resource, resource_type, where or resource_type, is_resource=True)
    return element


def _fill(
    element: ET.Element, data: dict[str, Any], type_name: str, where: str, *, is_resource: bool
) -> None:
    described = _table().types[type_name]
    present: set[str] = set()
    for key in data:
        if is_resource and key == "resourceType":
            continue
        if key not in described.keys or (key == "_id" and not is_resource):
            raise BundleError(
                ErrorCode.INVALID_BUNDLE, f"{where}.{_safe(key)}: not an element of {type_name}"
            )
        present.add(key.removeprefix("_"))
    for name in sorted(present, key=described.position.__getitem__):
        spec = described.by_name[name]
        value = data.get(spec.name)
        extra = data.get("_" + spec.name)
        if value is None and extra is None:
            continue
        if not is_resource and spec.name == "id":
            element.set("id", _text(value, f"{where}.id"))
            continue
        if type_name == "Extension" and spec.name == "url":
            element.set("url", _text(value, f"{where}.url"))
            continue
        here = f"{where}.{spec.name}"
        if spec.repeats:
            values = value if value is not None else []
            extras = extra if extra is not None else []
            if not isinstance(values, list) or not isinstance(extras, list):
                raise BundleError(ErrorCode.INVALID_BUNDLE, f"{here}: must be an array")
            count = max(len(values), len(extras))
            for i in range(count):
                item = values[i] if i < len(values) else None
                item_extra = extras[i] if i < len(extras) else None
                _child(element, spec, item, item_extra, f"{here}[{i}]")
        else:
            _child(element, spec, value, extra, here)


def _child(parent: ET.Element, spec: _Element, value: object, extra: object, where: str) -> None:
    if value is None and extra is None:
        return
    if spec.kind == "x":
        parent.append(_xhtml(value, where))
        return
    if spec.kind == "R":
        wrapper = ET.SubElement(parent, _F + spec.name)
        wrapper.append(_resource_element(value, where))
        return
    child = ET.SubElement(parent, _F + spec.name)
    if _is_primitive(spec.kind):
        if value is not None:
            child.set("value", _primitive_text(value, spec.kind, where))
        if extra is not None:
            if not isinstance(extra, dict):
                raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: _element must be an object")
            _fill(child, extra, "Element", where, is_resource=False)
        return
    if not isinstance(value, dict):
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must be an object")
    _fill(child, value, spec.kind, where, is_resource=False)


def _primitive_text(value: object, kind: str, where: str) -> str:
    if kind == "b":
        if not isinstance(value, bool):
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must be a boolean")
        return "true" if value else "false"
    if kind == "n":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must be a number")
        return str(value)
    return _text(value, where)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must be a string")
    return value


def _xhtml(value: object, where: str) -> ET.Element:
    text = _text(value, where)
    try:
        div = SafeET.fromstring(text, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: not an XHTML div") from exc
    if div.tag != _X + "div":
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: not an XHTML div")
    return div


# ---------------------------------------------------------------- XML → JSON


def xml_to_json(document: bytes | str) -> dict[str, Any]:
    """A FHIR XML document as FHIR JSON (decoded), safely. Raises Malformed
    ``malformed-xml`` (not well-formed) or ``xml-not-allowed`` (a DTD, an entity, an external
    reference), and BundleError ``too-deeply-nested`` or ``invalid-bundle`` (well-formed but
    not FHIR XML)."""
    try:
        root = SafeET.fromstring(document, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise Malformed(
            ErrorCode.XML_NOT_ALLOWED,
            "the XML declares a DTD or entities, or refers outside the document",
        ) from exc
    except (ET.ParseError, LookupError, ValueError) as exc:  # LookupError: unknown encoding
        raise Malformed(ErrorCode.MALFORMED_XML, "the body is not well-formed XML") from exc
    _check_size(root)
    return _read_resource(root, "")


def _check_size(root: ET.Element) -> None:
    stack: list[tuple[ET.Element, int]] = [(root, 1)]
    count = 0
    while stack:
        element, depth = stack.pop()
        count += 1
        if depth > MAX_XML_DEPTH:
            raise BundleError(
                ErrorCode.TOO_DEEPLY_NESTED,
                f"the document nests more than {MAX_XML_DEPTH} elements deep",
            )
        if count > MAX_XML_ELEMENTS:
            raise BundleError(
                ErrorCode.INVALID_BUNDLE, f"the document has more than {MAX_XML_ELEMENTS} elements"
            )
        stack.extend((child, depth + 1) for child in element)


def _local(element: ET.Element, where: str) -> str:
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith(_F):
        raise BundleError(
            ErrorCode.INVALID_BUNDLE, f"{where or '<root>'}: an element outside the FHIR namespace"
        )
    return tag[len(_F) :]


def _read_resource(element: ET.Element, where: str) -> dict[str, Any]:
    table = _table()
    resource_type = _local(element, where)
    if resource_type not in table.resources:
        raise BundleError(
            ErrorCode.INVALID_BUNDLE, f"{where or '<root>'}: {_safe(resource_type)} is no resource"
        )
    out: dict[str, Any] = {"resourceType": resource_type}
    _read_into(out, element, resource_type, where or resource_type, is_resource=True)
    return out


def _read_into(
    out: dict[str, Any], element: ET.Element, type_name: str, where: str, *, is_resource: bool
) -> None:
    table = _table()
    specs = table.types[type_name].by_name
    for attribute, value in element.attrib.items():
        if attribute == "id" and not is_resource:
            out["id"] = value
        elif attribute == "url" and type_name == "Extension":
            out["url"] = value
        elif attribute == "value" and _is_primitive_context(type_name):
            continue  # the caller reads it
        elif attribute.startswith("{"):
            continue  # xmlns-qualified attributes (xsi:schemaLocation …) carry no content
        else:
            raise BundleError(
                ErrorCode.INVALID_BUNDLE, f"{where}: attribute {_safe(attribute)} is not FHIR"
            )
    if element.text is not None and element.text.strip():
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: text outside a value attribute")
    order = table.types[type_name].position
    collected: dict[str, list[tuple[Any, Any]]] = {}
    last = -1
    for child in element:  # the parser leaves out comments and processing instructions
        if child.tail is not None and child.tail.strip():
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: text outside a value attribute")
        if child.tag == _X + "div" and "div" in specs and specs["div"].kind == "x":
            collected.setdefault("div", []).append((_xhtml_text(child), None))
            continue
        name = _local(child, where)
        spec = specs.get(name)
        if (
            spec is None
            or (name == "id" and not is_resource)
            or (name == "url" and type_name == "Extension")
        ):
            raise BundleError(
                ErrorCode.INVALID_BUNDLE, f"{where}.{_safe(name)}: not an element of {type_name}"
            )
        if order[name] < last:
            raise BundleError(
                ErrorCode.INVALID_BUNDLE, f"{where}.{_safe(name)}: element out of order"
            )
        last = order[name]
        pairs = collected.setdefault(name, [])
        here = f"{where}.{name}[{len(pairs)}]" if spec.repeats else f"{where}.{name}"
        if pairs and not spec.repeats:
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{here}: repeats, but may not")
        pairs.append(_read_child(child, spec, here))
    for name, pairs in collected.items():
        if specs[name].repeats:
            values = [value for value, _ in pairs]
            extras = [extra for _, extra in pairs]
            if any(value is not None for value in values):
                out[name] = values
            if any(extra is not None for extra in extras):
                out["_" + name] = extras
        else:
            value, extra = pairs[0]
            if value is not None:
                out[name] = value
            if extra is not None:
                out["_" + name] = extra


_XML_NS: Final = "{http://www.w3.org/XML/1998/namespace}"


def _attribute_name(key: str) -> str:
    if key.startswith(_XML_NS):
        return "xml:" + key[len(_XML_NS) :]
    return key.rpartition("}")[2]


def _xhtml_text(div: ET.Element) -> str:
    """The narrative's div as JSON carries it: XHTML with its namespace as the default."""
    out: list[str] = []
    tail, div.tail = div.tail, None
    try:
        _write(div, out, XHTML_NS)
    finally:
        div.tail = tail
    return "".join(out)


def _is_primitive_context(type_name: str) -> bool:
    return type_name == "Element"


def _read_child(child: ET.Element, spec: _Element, where: str) -> tuple[Any, Any]:
    """(JSON value, JSON ``_element`` or None) of one child element."""
    if spec.kind == "R":
        inner = [c for c in child if isinstance(c.tag, str)]
        if len(inner) != 1 or child.attrib:
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must hold one resource")
        return _read_resource(inner[0], where), None
    if spec.kind == "x":
        raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: must be an XHTML div")
    if _is_primitive(spec.kind):
        raw = child.attrib.get("value")
        extra: dict[str, Any] = {}
        _read_into(extra, child, "Element", where, is_resource=False)
        value = None if raw is None else _primitive_value(raw, spec.kind, where)
        if value is None and not extra:
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: a primitive without a value")
        return value, (extra or None)
    value_out: dict[str, Any] = {}
    _read_into(value_out, child, spec.kind, where, is_resource=False)
    return value_out, None


_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def _primitive_value(raw: str, kind: str, where: str) -> Any:
    if kind == "b":
        if raw not in ("true", "false"):
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: not a boolean")
        return raw == "true"
    if kind == "n":
        if _INTEGER.fullmatch(raw):
            return int(raw)
        try:
            number = Decimal(raw)
        except InvalidOperation as exc:
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: not a number") from exc
        value = float(number)
        if not number.is_finite() or not math.isfinite(value):  # 1e400 is no JSON number
            raise BundleError(ErrorCode.INVALID_BUNDLE, f"{where}: not a number")
        return value
    return raw


_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _safe(name: str) -> str:
    """An element name for an error detail, or ``?`` if it might be anything else."""
    return name if _SAFE_NAME.fullmatch(name) else "?"

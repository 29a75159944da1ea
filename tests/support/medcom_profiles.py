"""Validate MedCom message Bundles against the packaged MedCom profiles (tests only).

The reference is the conformance resources of the MedCom IG packages copied into
``tests/fixtures/medcom-ig/`` (StructureDefinitions with snapshots, ValueSets, CodeSystems; see
its SOURCES.txt). No maintained Python library validates instances against FHIR profiles, so
the walk over a profile's snapshot is written here; the FHIRPath invariants are evaluated with
``fhirpathpy`` (its R4 model). What is checked, per resource and per element of the snapshot:

- **profile choice**: the Bundle against the message profile its MessageHeader's event code
  calls for (CareCommunication, Acknowledgement, else Messaging) and every profile it claims in
  ``meta.profile``; every entry against the profiles it claims, else against the profiles the
  references to it demand (``targetProfile``), the MessageHeader else against the header
  profile of the event;
- **cardinality** (``min``/``max``) of every element, choice types ``[x]`` included (the type
  suffix must be one the element allows);
- **fixed[x] and pattern[x]** values (a pattern is matched as a subset, arrays element-wise);
- **slicing** by the discriminators MedCom uses (``value``/``pattern`` on a path such as
  ``url``, ``system``, ``role``, ``use``, ``identifier.system`` or
  ``extension('…').value.code``, and ``type``), each slice's cardinality and its own element
  definitions, and ``closed`` slicing;
- **type profiles**: an element whose type names a profile (the MedCom extensions, identifier
  and contact-point profiles) is checked against that profile too;
- **required bindings**: the code must be in the packaged ValueSet, expanded from its
  ``compose`` (includes of whole packaged CodeSystems, of listed concepts, of other ValueSets;
  excludes);
- **reference targets**: a reference resolved in the Bundle must point at a resource of a type
  the element allows, and at one that claims (or is checked against) the ``targetProfile``;
- **invariants**: every ``constraint`` of severity ``error`` (MedCom's and the inherited FHIR
  ones in the snapshots), evaluated with ``fhirpathpy`` on each instance of its element, with
  ``%resource`` and ``%rootResource`` set to the resource. ``resolve()`` (Bundle-internal
  references) and ``conformsTo()`` (against the packaged profiles) are supplied as user
  functions.

**Not checked** (each reported as an issue of severity ``not-checked`` naming what was not
checked, never passed silently):

- a profile, ValueSet or CodeSystem that is referenced but not packaged: the base FHIR R4
  ValueSets (``http://hl7.org/fhir/ValueSet/…``), HL7 terminology, the hl7.fhir.dk.core
  profiles (``http://hl7.dk/fhir/core/…``) and the canonical
  ``http://medcomfhir.dk/fhir/messaging/…`` that MedCom's invariants ``medcom-messaging-1`` and
  ``-3`` name (a URL no package defines): ``not checked: <canonical>``;
- a ValueSet whose compose uses a ``filter`` (not expanded);
- invariants whose FHIRPath uses a function ``fhirpathpy`` lacks (``htmlChecks()``, used by
  ``txt-1``/``txt-2`` on narrative): ``not evaluated: <key>``;
- elements below what a snapshot lists (the inside of a datatype no profile constrains) and
  the base FHIR datatype rules: the structural R4 validation (``fhir.resources``) covers those;
- ValueSet and profile versions: canonicals are matched without their ``|version``;
- bindings of strength other than ``required`` (``extensible``, ``preferred``, ``example``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import fhirpathpy
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

IG_DIR: Final = Path(__file__).resolve().parent.parent / "fixtures" / "medcom-ig"

Severity = Literal["error", "warning", "not-checked"]

CARE_COMMUNICATION_MESSAGE: Final = (
    "http://medcomfhir.dk/ig/carecommunication/StructureDefinition/medcom-careCommunication-message"
)
CARE_COMMUNICATION_HEADER: Final = (
    "http://medcomfhir.dk/ig/carecommunication/StructureDefinition/"
    "medcom-careCommunication-messageHeader"
)
ACKNOWLEDGEMENT_MESSAGE: Final = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/medcom-messaging-acknowledgement"
)
ACKNOWLEDGEMENT_HEADER: Final = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/"
    "medcom-messaging-acknowledgementHeader"
)
MESSAGING_MESSAGE: Final = (
    "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-message"
)
MESSAGING_HEADER: Final = (
    "http://medcomfhir.dk/ig/messaging/StructureDefinition/medcom-messaging-messageHeader"
)
_MESSAGE_PROFILES: Final = {
    "care-communication-message": (CARE_COMMUNICATION_MESSAGE, CARE_COMMUNICATION_HEADER),
    "acknowledgement-message": (ACKNOWLEDGEMENT_MESSAGE, ACKNOWLEDGEMENT_HEADER),
}
_FHIR_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
_PRIMITIVES: Final = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time",
        "unsignedInt", "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip
_R4: Final = fhirpath_models["r4"]

_DK_CORE: Final = "http://hl7.dk/fhir/core/StructureDefinition/"
DK_CORE_IDENTIFIER_SYSTEMS: Final = {
    f"{_DK_CORE}dk-core-gln-identifier": "https://www.gs1.org/gln",
    f"{_DK_CORE}dk-core-sor-identifier": "urn:oid:1.2.208.176.1.1",
    f"{_DK_CORE}dk-core-cpr-identifier": "urn:oid:1.2.208.176.1.2",
}
"""The one thing taken from hl7.fhir.dk.core (not packaged here): the fixed ``system`` of
the identifier profiles MedCom slices Organization.identifier and Patient.identifier by
(hl7.fhir.dk.core 3.x). The other dk-core identifier slices stay ``not checked``."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding: ``rule`` is the invariant key, or ``<kind>:<element id>`` for the
    structural rules (``min``, ``max``, ``type``, ``fixed``, ``pattern``, ``closed``,
    ``binding``, ``target``), or ``not-checked``/``not-evaluated``."""

    severity: Severity
    path: str
    rule: str
    message: str
    profile: str = ""


class NotChecked(Exception):
    """Something the validator cannot decide (an absent canonical, an unknown function)."""


def _canonical(url: str) -> str:
    return url.split("|", 1)[0]


@dataclass
class Conformance:
    """The packaged StructureDefinitions, ValueSets and CodeSystems, by canonical URL."""

    structures: dict[str, dict[str, Any]] = field(default_factory=dict)
    value_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    code_systems: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path = IG_DIR) -> Conformance:
        found = cls()
        for path in sorted(root.glob("*/*.json")):
            resource = json.loads(path.read_text(encoding="utf-8"))
            kind = resource.get("resourceType")
            target = {
                "StructureDefinition": found.structures,
                "ValueSet": found.value_sets,
                "CodeSystem": found.code_systems,
            }.get(kind)
            if target is not None:
                target[resource["url"]] = resource
        return found

    def derives_from(self, profile: str, ancestor: str) -> bool:
        url: str | None = _canonical(profile)
        while url is not None:
            if url == _canonical(ancestor):
                return True
            sd = self.structures.get(url)
            url = _canonical(sd["baseDefinition"]) if sd and "baseDefinition" in sd else None
        return False

    def expand(self, value_set: str) -> frozenset[tuple[str | None, str]]:
        """The (system, code) pairs of a packaged ValueSet; raises NotChecked when the
        ValueSet, or a CodeSystem it includes whole, is not packaged or uses a filter."""
        return _expand(self, _canonical(value_set))


@cache
def conformance() -> Conformance:
    return Conformance.load()


def _expand(conf: Conformance, url: str) -> frozenset[tuple[str | None, str]]:
    vs = conf.value_sets.get(url)
    if vs is None:
        raise NotChecked(f"not checked: {url}")
    compose = vs.get("compose", {})

    def part(include: dict[str, Any]) -> set[tuple[str | None, str]]:
        codes: set[tuple[str | None, str]] | None = None
        for nested in include.get("valueSet", []):
            inner = set(_expand(conf, _canonical(nested)))
            codes = inner if codes is None else codes & inner
        system = include.get("system")
        if include.get("filter"):
            raise NotChecked(f"not checked: {url} (compose filter)")
        if system is not None:
            if "concept" in include:
                listed = {(system, c["code"]) for c in include["concept"]}
            else:
                cs = conf.code_systems.get(_canonical(system))
                if cs is None or cs.get("content") not in ("complete", None):
                    raise NotChecked(f"not checked: {system} (in {url})")
                listed = {(system, code) for code in _concept_codes(cs.get("concept", []))}
            codes = listed if codes is None else codes & listed
        return codes or set()

    included: set[tuple[str | None, str]] = set()
    for include in compose.get("include", []):
        included |= part(include)
    for exclude in compose.get("exclude", []):
        included -= part(exclude)
    return frozenset(included)


def _concept_codes(concepts: Iterable[dict[str, Any]]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


# --- The instance walk -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    """One value of an element: the JSON value and, for a choice element, its type."""

    value: Any
    path: str
    type: str | None = None


def _type_of_suffix(suffix: str) -> str:
    lowered = suffix[:1].lower() + suffix[1:]
    return lowered if lowered in _PRIMITIVES else suffix


def _children(value: Any, name: str, path: str) -> list[_Node]:
    if not isinstance(value, dict):
        return []
    if name.endswith("[x]"):
        prefix = name[:-3]
        found: list[_Node] = []
        for key, item in value.items():
            if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
                found += _as_nodes(item, f"{path}.{key}", _type_of_suffix(key[len(prefix) :]))
        return found
    return _as_nodes(value.get(name), f"{path}.{name}", None)


def _as_nodes(item: Any, path: str, type_: str | None) -> list[_Node]:
    if item is None:
        return []
    if isinstance(item, list):
        return [_Node(v, f"{path}[{i}]", type_) for i, v in enumerate(item)]
    return [_Node(item, path, type_)]


def _matches_pattern(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            _matches_pattern(value.get(k), v) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        values = value if isinstance(value, list) else []
        return all(any(_matches_pattern(v, p) for v in values) for p in pattern)
    return bool(value == pattern)


def _prefixed(element: dict[str, Any], prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix):
            return value
    return None


class _Run:
    """One validation of one Bundle (the worklist of resources and profiles)."""

    def __init__(self, conf: Conformance, bundle: dict[str, Any]) -> None:
        self.conf = conf
        self.bundle = bundle
        self.issues: list[Issue] = []
        self._reported: set[tuple[str, str, str]] = set()
        self.entries: list[dict[str, Any]] = [
            e["resource"]
            for e in bundle.get("entry", [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        self._full_urls: dict[str, dict[str, Any]] = {
            e["fullUrl"]: e["resource"]
            for e in bundle.get("entry", [])
            if isinstance(e, dict) and isinstance(e.get("resource"), dict) and "fullUrl" in e
        }
        self.expected: dict[int, set[str]] = {}
        self.done: set[tuple[int, str]] = set()
        self._compiled: dict[str, Callable[..., Any]] = {}

    # references

    def resolve(self, reference: str | None) -> dict[str, Any] | None:
        if not reference:
            return None
        if reference in self._full_urls:
            return self._full_urls[reference]
        for full_url, resource in self._full_urls.items():
            if full_url.endswith("/" + reference):
                return resource
        parts = reference.split("/")
        if len(parts) >= 2:
            for resource in self.entries:
                if resource.get("resourceType") == parts[-2] and resource.get("id") == parts[-1]:
                    return resource
        return None

    def report(
        self, severity: Severity, path: str, rule: str, message: str, profile: str = ""
    ) -> None:
        key = (path, rule, message)
        if severity == "not-checked":
            key = ("", rule, message)  # say once per Bundle what was not checked
        if key in self._reported:
            return
        self._reported.add(key)
        self.issues.append(Issue(severity, path, rule, message, profile))

    # profiles per resource

    def run(self) -> list[Issue]:
        header = self.entries[0] if self.entries else {}
        event = header.get("eventCoding", {}).get("code") if isinstance(header, dict) else None
        message_profile, header_profile = _MESSAGE_PROFILES.get(
            event or "", (MESSAGING_MESSAGE, MESSAGING_HEADER)
        )
        bundle_profiles = {message_profile, *self._claimed(self.bundle)}
        for profile in sorted(bundle_profiles):
            self.check_resource(self.bundle, profile, "Bundle")
        for index, resource in enumerate(self.entries):
            claimed = self._claimed(resource)
            if claimed:
                self.expected.setdefault(index, set()).update(claimed)
            elif index == 0 and resource.get("resourceType") == "MessageHeader":
                self.expected.setdefault(index, set()).add(header_profile)
        progress = True
        while progress:
            progress = False
            for index, profiles in list(self.expected.items()):
                for profile in sorted(profiles):
                    if (index, profile) in self.done:
                        continue
                    self.done.add((index, profile))
                    progress = True
                    resource = self.entries[index]
                    where = f"Bundle.entry[{index}].resource({resource.get('resourceType')})"
                    self.check_resource(resource, profile, where)
        for index, resource in enumerate(self.entries):
            if index not in self.expected:
                self.report(
                    "warning",
                    f"Bundle.entry[{index}]",
                    "no-profile",
                    f"no profile claimed or demanded for this {resource.get('resourceType')}",
                )
        return self.issues

    def _claimed(self, resource: dict[str, Any]) -> list[str]:
        meta = resource.get("meta")
        profiles = meta.get("profile", []) if isinstance(meta, dict) else []
        return [p for p in profiles if isinstance(p, str)]

    def check_resource(self, resource: dict[str, Any], profile: str, where: str) -> None:
        sd = self.conf.structures.get(_canonical(profile))
        if sd is None:
            self.report("not-checked", where, "not-checked", f"not checked: {profile}")
            return
        if sd["type"] != resource.get("resourceType"):
            self.report(
                "error",
                where,
                "type",
                f"a {resource.get('resourceType')} cannot conform to {profile} ({sd['type']})",
                profile,
            )
            return
        _ProfileWalk(self, sd, resource).element([_Node(resource, where)], sd["type"])

    # FHIRPath

    def fhirpath(
        self, expression: str, node: Any, type_path: str, resource: dict[str, Any]
    ) -> list[Any]:
        compiled = self._compiled.get(expression)
        if compiled is None:
            compiled = fhirpathpy.compile(
                expression,
                _R4,
                {"userInvocationTable": self._functions(), "traceFn": lambda *_: None},
            )
            self._compiled[expression] = compiled
        # A resource types itself (resourceType); a datatype or backbone value needs its type
        # from the model (choice elements such as Extension.value[x]).
        is_resource = isinstance(node, dict) and "resourceType" in node
        data = node if is_resource else ResourceNode.create_node(node, type_path)  # type: ignore[no-untyped-call]
        result: list[Any] = compiled(data, {"resource": resource, "rootResource": resource})
        return result

    def _functions(self) -> dict[str, Any]:
        def resolve(inputs: list[Any]) -> list[Any]:
            found = []
            for item in inputs:
                ref = item.get("reference") if isinstance(item, dict) else item
                target = self.resolve(ref if isinstance(ref, str) else None)
                if target is not None:
                    found.append(target)
            return found

        def conforms_to(inputs: list[Any], url: str) -> list[bool]:
            if _canonical(url) not in self.conf.structures:
                raise NotChecked(f"not checked: {url}")
            return [
                isinstance(item, dict) and not _errors(validate_resource(item, url, self))
                for item in inputs
            ]

        def has_value(inputs: list[Any]) -> list[bool]:
            return [len(inputs) == 1 and isinstance(inputs[0], str | int | float | bool)]

        return {
            "hasValue": {"fn": has_value, "arity": {0: []}},
            "resolve": {"fn": resolve, "arity": {0: []}},
            "conformsTo": {"fn": conforms_to, "arity": {1: ["String"]}},
        }


class _ProfileWalk:
    """Checks one resource (or one datatype value) against one StructureDefinition."""

    def __init__(self, run: _Run, sd: dict[str, Any], resource: dict[str, Any]) -> None:
        self.run = run
        self.sd = sd
        self.profile = sd["url"]
        self.resource = resource
        self.elements: dict[str, dict[str, Any]] = {e["id"]: e for e in sd["snapshot"]["element"]}
        self.kids: dict[str, list[str]] = {}
        self.slices: dict[str, list[str]] = {}
        for element_id in self.elements:
            parent, sep, last = element_id.rpartition(".")
            if ":" in last and "." not in last.split(":", 1)[1]:
                base, _, _ = element_id.rpartition(":")
                self.slices.setdefault(base, []).append(element_id)
            elif sep:
                self.kids.setdefault(parent, []).append(element_id)

    def error(self, path: str, rule: str, message: str) -> None:
        self.run.report("error", path, rule, message, self.profile)

    def element(self, nodes: list[_Node], element_id: str, parent: str = "") -> None:
        """Check the values ``nodes`` of one element (all of them: its cardinality)."""
        element = self.elements[element_id]
        self._cardinality(nodes, element, nodes[0].path if nodes else parent)
        for node in nodes:
            self._value(node, element)
        if element_id in self.slices and nodes:
            self._slicing(nodes, element)

    def _cardinality(self, nodes: list[_Node], element: dict[str, Any], where: str) -> None:
        if len(nodes) < element.get("min", 0):
            self.error(
                where,
                f"min:{element['id']}",
                f"{element['id']}: {len(nodes)} found, at least {element['min']} required",
            )
        maximum = element.get("max", "*")
        if maximum != "*" and len(nodes) > int(maximum):
            self.error(
                where,
                f"max:{element['id']}",
                f"{element['id']}: {len(nodes)} found, at most {maximum} allowed",
            )

    def _value(self, node: _Node, element: dict[str, Any]) -> None:
        element_id = element["id"]
        types = [t["code"] for t in element.get("type", [])]
        if node.type is not None and types and node.type not in types:
            self.error(node.path, f"type:{element_id}", f"type {node.type} is not allowed here")
        fixed = _prefixed(element, "fixed")
        if fixed is not None and node.value != fixed:
            self.error(node.path, f"fixed:{element_id}", f"must be exactly {fixed!r}")
        pattern = _prefixed(element, "pattern")
        if pattern is not None and not _matches_pattern(node.value, pattern):
            self.error(node.path, f"pattern:{element_id}", f"must match {pattern!r}")
        binding = element.get("binding")
        if binding and binding.get("strength") == "required" and "valueSet" in binding:
            self._binding(node, element, binding["valueSet"])
        for type_ in element.get("type", []):
            if node.type is not None and type_["code"] != node.type:
                continue
            for profile in type_.get("profile", []):
                self._type_profile(node, profile, element)
            if type_["code"] == "Reference" and type_.get("targetProfile"):
                self._reference(node, type_["targetProfile"], element_id)
        self._constraints(node, element)
        for child_id in self.kids.get(element_id, []):
            child = self.elements[child_id]
            name = child["path"].rsplit(".", 1)[1]
            self.element(_children(node.value, name, node.path), child_id, node.path)

    def _binding(self, node: _Node, element: dict[str, Any], value_set: str) -> None:
        try:
            codes = self.run.conf.expand(value_set)
        except NotChecked as exc:
            self.run.report("not-checked", node.path, "not-checked", str(exc), self.profile)
            return
        value = node.value
        if isinstance(value, str):
            ok = any(code == value for _, code in codes)
            shown = value
        elif isinstance(value, dict) and "coding" in value:
            pairs = [(c.get("system"), c.get("code")) for c in value.get("coding", [])]
            ok = any(pair in codes for pair in pairs)
            shown = str(pairs)
        elif isinstance(value, dict) and "code" in value:
            ok = (value.get("system"), value.get("code")) in codes
            shown = f"{value.get('system')}#{value.get('code')}"
        else:
            return
        if not ok:
            self.error(
                node.path,
                f"binding:{element['id']}",
                f"{shown} is not in the required ValueSet {value_set}",
            )

    def _type_profile(self, node: _Node, profile: str, element: dict[str, Any]) -> None:
        sd = self.run.conf.structures.get(_canonical(profile))
        if sd is None:
            self.run.report(
                "not-checked", node.path, "not-checked", f"not checked: {profile}", self.profile
            )
            return
        if sd["kind"] == "resource":
            return
        is_extension = sd["type"] == "Extension" and isinstance(node.value, dict)
        if is_extension and node.value.get("url") != sd["url"]:
            return  # another extension in an open slicing: not this profile's business
        if isinstance(node.value, dict):
            walk = _ProfileWalk(self.run, sd, self.resource)
            walk.element([node], sd["type"])

    def _reference(self, node: _Node, targets: list[str], element_id: str) -> None:
        ref = node.value.get("reference") if isinstance(node.value, dict) else None
        target = self.run.resolve(ref)
        if target is None:
            return
        allowed_types = set()
        medcom_targets = []
        for url in targets:
            url = _canonical(url)
            if url.startswith(_FHIR_BASE):
                allowed_types.add(url.removeprefix(_FHIR_BASE))
                continue
            sd = self.run.conf.structures.get(url)
            if sd is None:
                self.run.report(
                    "not-checked", node.path, "not-checked", f"not checked: {url}", self.profile
                )
                continue
            allowed_types.add(sd["type"])
            if sd["type"] == target.get("resourceType"):
                medcom_targets.append(url)
        if "Resource" not in allowed_types and target.get("resourceType") not in allowed_types:
            self.error(
                node.path,
                f"target:{element_id}",
                f"refers to a {target.get('resourceType')}, not to a {sorted(allowed_types)}",
            )
            return
        if not medcom_targets:
            return
        index = next(i for i, r in enumerate(self.run.entries) if r is target)
        claimed = self.run._claimed(target)
        if claimed and not any(
            self.run.conf.derives_from(c, t) for c in claimed for t in medcom_targets
        ):
            self.error(
                node.path,
                f"target:{element_id}",
                f"refers to a resource that claims {claimed}, not {medcom_targets}",
            )
        if not claimed:
            self.run.expected.setdefault(index, set()).add(medcom_targets[0])

    def _constraints(self, node: _Node, element: dict[str, Any]) -> None:
        if node.value is None:
            return
        for constraint in element.get("constraint", []):
            if constraint.get("severity") != "error" or "expression" not in constraint:
                continue
            key = constraint["key"]
            type_path = _type_path(element, node)
            try:
                result = self.run.fhirpath(
                    constraint["expression"], node.value, type_path, self.resource
                )
            except NotChecked as exc:
                self.run.report("not-checked", node.path, "not-checked", f"{exc} ({key})")
                continue
            except Exception as exc:  # fhirpathpy raises bare Exceptions
                self.run.report(
                    "not-checked", node.path, "not-evaluated", f"not evaluated: {key} ({exc})"
                )
                continue
            if result != [True]:  # as the HL7 validator: an empty result fails too
                self.error(node.path, key, constraint.get("human", key))

    def _slicing(self, nodes: list[_Node], element: dict[str, Any]) -> None:
        slicing = element.get("slicing", {})
        slice_ids = self.slices[element["id"]]
        assigned: dict[str, list[_Node]] = {s: [] for s in slice_ids}
        for node in nodes:
            matched = []
            for slice_id in slice_ids:
                try:
                    if self._in_slice(node, slice_id, slicing):
                        matched.append(slice_id)
                except NotChecked as exc:
                    self.run.report("not-checked", node.path, "not-checked", f"not checked: {exc}")
            if matched:
                assigned[matched[0]].append(node)
            elif slicing.get("rules") == "closed":
                self.error(
                    node.path,
                    f"closed:{element['id']}",
                    f"matches none of the slices of the closed slicing {element['id']}",
                )
        for slice_id, members in assigned.items():
            slice_element = self.elements[slice_id]
            self._cardinality(members, slice_element, nodes[0].path)
            for member in members:
                self._value(member, slice_element)

    def _in_slice(self, node: _Node, slice_id: str, slicing: dict[str, Any]) -> bool:
        for discriminator in slicing.get("discriminator", []):
            kind, path = discriminator["type"], discriminator["path"]
            if kind == "type":
                if not self._type_matches(node, slice_id, path):
                    return False
            elif kind in ("value", "pattern"):
                expected = self._expected_value(slice_id, path)
                if expected is None:
                    profiles = [
                        p
                        for t in self.elements[slice_id].get("type", [])
                        for p in t.get("profile", [])
                    ]
                    raise NotChecked(
                        f"discriminator {path} of {slice_id}"
                        + (f" (set in {', '.join(profiles)})" if profiles else "")
                    )
                actual = self._discriminator_values(node, path)
                if not any(_matches_pattern(a, expected) for a in actual):
                    return False
            elif kind == "exists":
                return bool(self._discriminator_values(node, path))
            else:
                raise NotChecked(f"discriminator type {kind} of {slice_id}")
        return True

    def _type_matches(self, node: _Node, slice_id: str, path: str) -> bool:
        step = path.removeprefix("$this").lstrip(".")
        slice_element = self.elements[slice_id]
        if not step:
            allowed = [t["code"] for t in slice_element.get("type", [])]
            return node.type in allowed
        child = self.elements.get(f"{slice_id}.{step}[x]") or self.elements.get(
            f"{slice_id}.{step}"
        )
        if child is None:
            raise NotChecked(f"discriminator {path} of {slice_id}")
        allowed = [t["code"] for t in child.get("type", [])]
        found = _children(node.value, f"{step}[x]", node.path)
        return bool(found) and all(n.type in allowed for n in found)

    def _expected_value(self, slice_id: str, path: str) -> Any:
        """The fixed or pattern value the slice sets at the discriminator's path (on the
        element at the path, or inside a fixed/pattern value of an element above it)."""
        return self._expected_from(slice_id, _steps(path))

    def _expected_from(self, current: str, steps: list[str]) -> Any:
        element = self.elements[current]
        if steps == ["system"]:
            for type_ in element.get("type", []):
                for profile in type_.get("profile", []):
                    if _canonical(profile) in DK_CORE_IDENTIFIER_SYSTEMS:
                        return DK_CORE_IDENTIFIER_SYSTEMS[_canonical(profile)]
        own = _prefixed(element, "fixed")
        if own is None:
            own = _prefixed(element, "pattern")
        if own is not None:
            for step in steps:
                own = own.get(step) if isinstance(own, dict) else None
            if own is not None:
                return own
        if not steps:
            return None
        step, rest = steps[0], steps[1:]
        if step.startswith("extension:"):
            url = step.removeprefix("extension:")
            for option in self.slices.get(f"{current}.extension", []):
                profiles = [
                    _canonical(p)
                    for t in self.elements[option].get("type", [])
                    for p in t.get("profile", [])
                ]
                if url in profiles:
                    return self._expected_from(option, rest)
            return None
        candidate = f"{current}.{step}"
        if candidate not in self.elements and f"{candidate}[x]" in self.elements:
            candidate = f"{candidate}[x]"
        if candidate not in self.elements:
            if step == "url" and not rest:
                profiles = [p for t in element.get("type", []) for p in t.get("profile", [])]
                return _canonical(profiles[0]) if profiles else None
            return None
        found = self._expected_from(candidate, rest)
        if found is None:
            for option in self.slices.get(candidate, []):
                found = self._expected_from(option, rest)
                if found is not None:
                    break
        return found

    def _discriminator_values(self, node: _Node, path: str) -> list[Any]:
        values: list[Any] = [node.value]
        for step in _steps(path):
            found: list[Any] = []
            for value in values:
                if not isinstance(value, dict):
                    continue
                if step.startswith("extension:"):
                    url = step.removeprefix("extension:")
                    found += [e for e in value.get("extension", []) if e.get("url") == url]
                else:
                    found += [n.value for n in _children(value, step, "")]
                    if not found:
                        found += [n.value for n in _children(value, f"{step}[x]", "")]
            values = found
        return values


def _type_path(element: dict[str, Any], node: _Node) -> str:
    """What fhirpathpy's model should take the node for: its datatype, else its path."""
    if node.type is not None:
        return node.type[:1].upper() + node.type[1:]
    codes = [t["code"] for t in element.get("type", [])]
    if (
        len(codes) == 1
        and codes[0][:1].isupper()
        and codes[0] not in ("BackboneElement", "Element")
    ):
        return str(codes[0])
    return str(element["path"])


def _steps(path: str) -> list[str]:
    """``$this.extension('u').value.code`` → ``['extension:u', 'value', 'code']``."""
    path = re.sub(
        r"extension\('([^']*)'\)", lambda m: "extension:" + m.group(1).replace(".", "\0"), path
    )
    steps = [s.replace("\0", ".") for s in path.split(".")]
    return [s for s in steps if s and s != "$this"]


def _errors(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "error"]


def validate_resource(
    resource: dict[str, Any], profile: str, run: _Run | None = None
) -> list[Issue]:
    """Check one resource against one packaged profile (references resolve in ``run``'s
    Bundle when given)."""
    inner = _Run(conformance(), run.bundle if run is not None else {"entry": []})
    inner.check_resource(resource, profile, resource.get("resourceType", "?"))
    return inner.issues


def validate_bundle(bundle: dict[str, Any]) -> list[Issue]:
    """Every issue of a message Bundle against the packaged MedCom profiles."""
    return _Run(conformance(), bundle).run()


def errors(bundle: dict[str, Any]) -> list[Issue]:
    """The issues of severity ``error`` only."""
    return _errors(validate_bundle(bundle))

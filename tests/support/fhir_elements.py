"""Generate the FHIR element table the XML converter (``medcom/fhir_xml.py``) works from.

FHIR XML differs from FHIR JSON in what the document does not say: the order of the
elements, which of them repeat, and which are primitives of a JSON number or boolean. The
table says it for every resource and datatype, taken from the models of ``fhir.resources``
(its R4B package: the R4 resources a MedCom message holds are unchanged in R4B). The
gateway ships the table (``attest_gateway/data/fhir-elements.json``) and does not depend on
``fhir.resources`` at run time; ``test_fhir_xml.py`` checks the shipped table against a fresh
one. Regenerate with::

    PYTHONPATH=src:. .venv/bin/python -m tests.support.fhir_elements > \
        src/attest_gateway/data/fhir-elements.json
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import inspect
import json
import pkgutil
import sys
import types
import typing
from typing import Any

from fhir.resources import R4B
from fhir.resources.R4B.resource import Resource
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import Xhtml


def _models() -> dict[str, type[FHIRAbstractModel]]:
    found: dict[str, type[FHIRAbstractModel]] = {}
    for info in pkgutil.iter_modules(R4B.__path__):
        if info.name.startswith("fhirtypes") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{R4B.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, FHIRAbstractModel)
                and obj.__module__ == module.__name__
            ):
                found[name] = obj
    return found


def _unwrap(annotation: Any) -> tuple[Any, bool, tuple[Any, ...]]:
    """(inner type, is a list, Annotated metadata) of a field's annotation."""
    repeats = False
    metadata: tuple[Any, ...] = ()
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006
            repeats = True
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Annotated:
            metadata = annotation.__metadata__
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, repeats, metadata


def _kind(inner: Any, metadata: tuple[Any, ...], resources: set[str]) -> str:
    if any(isinstance(m, Xhtml) for m in metadata):
        return "x"
    if inner is bool:
        return "b"
    if inner in (int, decimal.Decimal):
        return "n"
    if inner in (str, bytes, dt.date, dt.datetime, dt.time) or metadata:
        return "s"
    name = getattr(inner, "__name__", str(inner))
    name = name.removesuffix("Type")
    if name in ("Resource", "DomainResource") or name in resources:
        return "R"
    return name


def table() -> dict[str, Any]:
    models = _models()
    resources = {
        name
        for name, cls in models.items()
        if issubclass(cls, Resource) and name not in ("Resource", "DomainResource")
    }
    types_out: dict[str, list[str]] = {}
    for name, cls in sorted(models.items()):
        by_alias = {f.alias or key: f for key, f in cls.model_fields.items()}
        rows = []
        for element in cls.elements_sequence():
            field = by_alias[element]
            inner, repeats, metadata = _unwrap(field.annotation)
            rows.append(f"{element} {'*' if repeats else '1'} {_kind(inner, metadata, resources)}")
        types_out[name] = rows
    return {
        "source": "fhir.resources R4B models",
        "resources": sorted(resources),
        "types": types_out,
    }


if __name__ == "__main__":
    json.dump(table(), sys.stdout, indent=0, sort_keys=True)
    sys.stdout.write("\n")

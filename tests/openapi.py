"""SuperOffice's OpenAPI description of batch tasks, for the conformance tests.

The vendor's two Swagger 2.0 files are copied unmodified under ``tests/spec/`` (its README says
where from and why a copy).  This module loads them, resolves ``$ref``, turns their schemas into
JSON Schema (draft 4: Swagger 2.0's schema object is a subset of it) and checks a request against
the operation it is meant for.  Nothing here is hand-copied from the spec: every schema, parameter,
status code and media type is read from the files.

Swagger 2.0 has no ``nullable``, yet SuperOffice sends ``null`` for absent values and ``$select``
nulls out unselected fields.  So a schema converted with ``nulls=True`` (responses) allows ``null``
wherever a property or a dictionary value may be absent; everything present must still match.
Request bodies are converted with ``nulls=False, closed=True``: a client has no reason to send a
null, and a property the carrier does not declare would be dropped silently by the server.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import copy
import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import strategies as st

__all__ = [
    "AGENT_FILE",
    "BATCH_TASK_INFO",
    "FORMAT_CHECKER",
    "REST_FILE",
    "SHARED_SPEC_DIR",
    "SPEC_DIR",
    "SPEC_FILES",
    "TRANSPORT_HEADERS",
    "Operation",
    "batch_task_info_properties",
    "definition",
    "is_rfc3339_date_time",
    "load",
    "match",
    "operation",
    "operations",
    "request_problems",
    "rfc3339_date_times",
    "schema_problems",
    "schemathesis_document",
    "strategy",
    "to_json_schema",
]

SPEC_DIR = Path(__file__).parent / "spec"
#: The team's reference copy, which ``SPEC_DIR`` must equal (checked by a test when present).
SHARED_SPEC_DIR = Path(__file__).parents[2] / "shared" / "reference" / "openapi"
REST_FILE = "Swagger-v1-BatchTask.json"
AGENT_FILE = "Swagger-v1-BatchAgent.json"
SPEC_FILES = (REST_FILE, AGENT_FILE)
BATCH_TASK_INFO = "SuperOffice.CRM.Services.BatchTaskInfo"
_CARRIER_PREFIX = "SuperOffice.WebApi.v1.Carriers."

_INTEGER_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
#: Schema keywords copied as they are (validation keywords Swagger 2.0 shares with draft 4).
_PLAIN_KEYWORDS = (
    "type",
    "format",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "required",
)
#: Keywords that say nothing about validity.
_ANNOTATIONS = ("description", "title", "example", "default", "readOnly", "externalDocs", "xml")
#: Headers every HTTP client sends for the transport; an OpenAPI description never lists them.
TRANSPORT_HEADERS = frozenset(
    {"host", "user-agent", "accept-encoding", "content-length", "connection"}
)


@functools.cache
def _text(name: str) -> str:
    return (SPEC_DIR / name).read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """One spec file as a fresh dict (callers may change it)."""
    document: dict[str, Any] = json.loads(_text(name))
    return document


def definition(name: str, file: str = REST_FILE) -> dict[str, Any]:
    """A definition by name, e.g. ``definition(BATCH_TASK_INFO)``."""
    found: dict[str, Any] = load(file)["definitions"][name]
    return found


def batch_task_info_properties() -> tuple[str, ...]:
    """The property names of ``BatchTaskInfo``, in the spec's order."""
    return tuple(definition(BATCH_TASK_INFO)["properties"])


def _resolve(document: Mapping[str, Any], schema: Mapping[str, Any]) -> Mapping[str, Any]:
    seen: set[str] = set()
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/definitions/") or ref in seen:
            msg = f"cannot resolve $ref {ref!r}"
            raise ValueError(msg)
        seen.add(ref)
        schema = document["definitions"][ref.removeprefix("#/definitions/")]
    return schema


def to_json_schema(
    document: Mapping[str, Any],
    schema: Mapping[str, Any],
    *,
    nulls: bool,
    closed: bool = False,
) -> dict[str, Any]:
    """A Swagger 2.0 schema of ``document`` as a self-contained draft-4 JSON Schema.

    ``$ref`` is inlined (its siblings are ignored, as Swagger 2.0 says); ``int32``/``int64`` become
    ``minimum``/``maximum`` so that generators and validators both honour them.  ``nulls`` allows
    ``null`` for every property and dictionary value; ``closed`` refuses properties an object
    does not declare (unless it says ``additionalProperties`` itself).
    """

    def nullable(converted: dict[str, Any]) -> dict[str, Any]:
        if not nulls:
            return converted
        widened = dict(converted)
        kind = widened.get("type")
        if isinstance(kind, str):
            widened["type"] = [kind, "null"]
        if "enum" in widened:
            widened["enum"] = [*widened["enum"], None]
        return widened

    def convert(raw: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
        if depth > 32:
            msg = "schema nests too deep (recursive $ref?)"
            raise ValueError(msg)
        node = _resolve(document, raw)
        unknown = {
            key
            for key in node
            if key not in _PLAIN_KEYWORDS
            and key not in _ANNOTATIONS
            and key not in {"items", "properties", "additionalProperties", "allOf"}
            and not key.startswith("x-")
        }
        if unknown:
            msg = f"unsupported schema keyword(s) {sorted(unknown)}"
            raise ValueError(msg)
        out: dict[str, Any] = {
            key: copy.deepcopy(node[key]) for key in _PLAIN_KEYWORDS if key in node
        }
        bounds = _INTEGER_RANGES.get(node.get("format", ""))
        if node.get("type") == "integer" and bounds is not None:
            out["minimum"] = max(out.get("minimum", bounds[0]), bounds[0])
            out["maximum"] = min(out.get("maximum", bounds[1]), bounds[1])
        if "allOf" in node:
            out["allOf"] = [convert(part, depth + 1) for part in node["allOf"]]
        if "items" in node:
            out["items"] = convert(node["items"], depth + 1)
        if "properties" in node:
            out["properties"] = {
                name: nullable(convert(value, depth + 1))
                for name, value in node["properties"].items()
            }
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            out["additionalProperties"] = nullable(convert(extra, depth + 1))
        elif isinstance(extra, bool):
            out["additionalProperties"] = extra
        elif closed and (node.get("type") == "object" or "properties" in node):
            out["additionalProperties"] = False
        return out

    return {"$schema": "http://json-schema.org/draft-04/schema#", **convert(schema)}


_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d\d)-(?P<day>\d\d)[Tt]"
    r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)(?:\.\d+)?"
    r"(?:[Zz]|[+-](?P<off_hour>\d\d):(?P<off_minute>\d\d))",
    re.ASCII,
)


def is_rfc3339_date_time(value: object) -> bool:
    """Whether ``value`` is an RFC 3339 ``date-time`` (what Swagger 2.0's format means)."""
    if not isinstance(value, str):
        return True  # a format applies to strings only
    found = _RFC3339.fullmatch(value)
    if found is None:
        return False
    year, month, day = (int(found[k]) for k in ("year", "month", "day"))
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year or 4, month)[1]:
        return False
    if int(found["hour"]) > 23 or int(found["minute"]) > 59 or int(found["second"]) > 60:
        return False
    return found["off_hour"] is None or (
        int(found["off_hour"]) <= 23 and int(found["off_minute"]) <= 59
    )


#: Checks ``date-time`` strictly (RFC 3339); jsonschema has no checker of its own without extras.
FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(is_rfc3339_date_time)


def schema_problems(instance: object, schema: Mapping[str, Any]) -> list[str]:
    """Where ``instance`` breaks ``schema``, one line each (``[]`` when it validates)."""
    validator = jsonschema.Draft4Validator(schema, format_checker=FORMAT_CHECKER)
    return sorted(
        f"{error.json_path}: {error.message}" for error in validator.iter_errors(instance)
    )


# --- operations --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Operation:
    """One operation of a spec file: method, path template and its definition."""

    file: str
    method: str
    path: str
    spec: Mapping[str, Any]

    @property
    def operation_id(self) -> str:
        """The spec's ``operationId``."""
        return str(self.spec["operationId"])

    @property
    def document(self) -> dict[str, Any]:
        """The whole spec file the operation is in (for ``$ref``)."""
        return load(self.file)

    def parameters(self, location: str) -> dict[str, Mapping[str, Any]]:
        """The parameters ``in`` ``location``, by name (header names lower-cased)."""
        found = {}
        for raw in self.spec.get("parameters", []):
            parameter = _resolve(self.document, raw)
            if parameter["in"] == location:
                name = parameter["name"].lower() if location == "header" else parameter["name"]
                found[name] = parameter
        return found

    @property
    def statuses(self) -> frozenset[int]:
        """The status codes the operation documents."""
        return frozenset(int(code) for code in self.spec["responses"] if code.isdigit())

    def response_schema(self, status: int) -> dict[str, Any] | None:
        """The JSON Schema of a documented answer's body, nulls allowed; ``None`` if it has none."""
        response = self.spec["responses"].get(str(status))
        if response is None or "schema" not in response:
            return None
        return to_json_schema(self.document, response["schema"], nulls=True)

    def body_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of the request body (no nulls, no undeclared properties)."""
        body = self.parameters("body")
        if not body:
            return None
        (parameter,) = body.values()
        return to_json_schema(self.document, parameter["schema"], nulls=False, closed=True)

    @property
    def security_schemes(self) -> dict[str, Mapping[str, Any]]:
        """Every security scheme a requirement of the operation names, by name.

        The files put both schemes in *one* requirement object, which Swagger 2.0 reads as "both
        at once"; one ``Authorization`` header cannot carry two schemes, so they are alternatives.
        """
        document = self.document
        requirements = self.spec.get("security", document.get("security", []))
        return {
            name: document["securityDefinitions"][name]
            for requirement in requirements
            for name in requirement
        }

    def template(self) -> re.Pattern[str]:
        """The path template as a regular expression with one group per path parameter."""
        parts = re.split(r"\{([^}]+)\}", self.path)
        pattern = "".join(
            re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
            for index, part in enumerate(parts)
        )
        return re.compile(pattern)


def operations() -> Iterator[Operation]:
    """Every operation of both spec files."""
    for file in SPEC_FILES:
        for path, item in load(file)["paths"].items():
            for method, spec in item.items():
                if method != "parameters":
                    yield Operation(file, method.upper(), path, spec)


def operation(operation_id: str) -> Operation:
    """The operation with this ``operationId``."""
    for candidate in operations():
        if candidate.operation_id == operation_id:
            return candidate
    msg = f"no operation {operation_id!r} in {SPEC_FILES}"
    raise LookupError(msg)


def _parameter_problems(name: str, parameter: Mapping[str, Any], raw: str) -> list[str]:
    """Check one path, query or header value (always text on the wire) against its parameter."""
    schema = to_json_schema(
        {}, {k: v for k, v in parameter.items() if k in _PLAIN_KEYWORDS}, nulls=False
    )
    value: object = raw
    if parameter.get("type") == "integer":
        if re.fullmatch(r"-?[0-9]+", raw, re.ASCII) is None:
            return [f"{name}={raw!r} is not an integer"]
        value = int(raw)
    elif parameter.get("type") == "boolean":
        if raw not in {"true", "false"}:
            return [f"{name}={raw!r} is not a boolean"]
        value = raw == "true"
    return [f"{name}={raw!r}: {problem}" for problem in schema_problems(value, schema)]


def match(method: str, path: str) -> list[tuple[Operation, dict[str, str]]]:
    """The operations ``method path`` can be, with their path parameters.

    A template matches only if every path parameter fits its type: ``/BatchTask/212`` is
    ``{id}`` (int32), not ``{state}`` (an enum name), although both templates match the text.
    """
    found = []
    for candidate in operations():
        if candidate.method != method.upper():
            continue
        hit = candidate.template().fullmatch(path)
        if hit is None:
            continue
        values = hit.groupdict()
        declared = candidate.parameters("path")
        if all(not _parameter_problems(k, declared[k], v) for k, v in values.items()):
            found.append((candidate, values))
    return found


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _authorization_problems(operation: Operation, value: str) -> list[str]:
    """Whether ``Authorization`` is one the operation's security schemes describe."""
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    kinds = {definition["type"] for definition in operation.security_schemes.values()}
    scheme = scheme.lower()  # auth-scheme names are case-insensitive (RFC 9110 11.1)
    if scheme == "basic" and "basic" in kinds:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return [f"Authorization Basic {credentials!r} is not base64 of UTF-8"]
        return [] if ":" in decoded else ["Authorization Basic credentials have no ':'"]
    # The "SuperOffice Password" (basic) scheme's description: "You can also pass inn an
    # unencoded ticket 7T:abc== with the HTTP Authenticate header"; the scheme name is SOTicket
    # (superoffice-api.md 3.1).
    if scheme == "soticket" and "basic" in kinds:
        return [] if credentials else ["Authorization SOTicket has no ticket"]
    # "SuperId Authentication" (oauth2): "pass it ... as a BEARER token".
    if scheme == "bearer" and "oauth2" in kinds:
        return [] if credentials else ["Authorization Bearer has no token"]
    return [f"Authorization scheme {scheme!r} is none of the operation's {sorted(kinds)}"]


def request_problems(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    prefix: str = "",
) -> list[str]:
    """Everything about one request that the spec does not describe (``[]`` if it conforms).

    ``path`` is the path as sent; the spec's paths start at ``/api``, so a tenant's API base like
    ``/Cust12345/api`` is given as ``prefix="/Cust12345"``.  Checks: the operation exists for
    this method and path, each path, query and header value is declared and fits its parameter,
    ``$select`` names ``BatchTaskInfo`` properties, ``Accept`` and ``Content-Type`` are among the
    media types the operation produces and consumes, ``Authorization`` is a scheme of its
    security definitions, and the body fits the carrier.
    """
    if not path.startswith(prefix):
        return [f"{path} is not under the API base {prefix}/api"]
    candidates = match(method, path.removeprefix(prefix))
    if len(candidates) != 1:
        names = [op.operation_id for op, _ in candidates]
        return [f"{method} {path} matches {len(candidates)} operations {names}"]
    op, _ = candidates[0]  # match() has checked the path parameters
    problems: list[str] = []

    declared_query = op.parameters("query")
    for name, value in query.items():
        if name not in declared_query:
            problems.append(f"query parameter {name!r} is not declared by {op.operation_id}")
            continue
        problems += _parameter_problems(name, declared_query[name], value)
        if name == "$select":
            known = set(batch_task_info_properties())
            problems += [
                f"$select names {field!r}, not a BatchTaskInfo property"
                for field in value.split(",")
                if field.strip() not in known
            ]
    problems += [
        f"required query parameter {name!r} is missing"
        for name, parameter in declared_query.items()
        if parameter.get("required") and name not in query
    ]

    declared_headers = op.parameters("header")
    sent = {name.lower(): value for name, value in headers.items()}
    for name, value in sent.items():
        if name in declared_headers:
            problems += _parameter_problems(name, declared_headers[name], value)
        elif name == "accept":
            produces = {t.lower() for t in op.spec.get("produces", [])}
            problems += [
                f"Accept {media!r} is not produced by {op.operation_id}"
                for media in (_media_type(part) for part in value.split(","))
                if media not in produces
            ]
        elif name == "content-type":
            consumes = {t.lower() for t in op.spec.get("consumes", [])}
            if _media_type(value) not in consumes:
                problems.append(f"Content-Type {value!r} is not consumed by {op.operation_id}")
        elif name == "authorization":
            problems += _authorization_problems(op, value)
        elif name not in TRANSPORT_HEADERS:
            problems.append(f"header {name!r} is not declared by {op.operation_id}")
    problems += [
        f"required header {name!r} is missing"
        for name, parameter in declared_headers.items()
        if parameter.get("required") and name not in sent
    ]
    if op.security_schemes and "authorization" not in sent:
        problems.append(f"no Authorization, but {op.operation_id} requires security")

    body_schema = op.body_schema()
    if body_schema is None:
        if body:
            problems.append(f"{op.operation_id} takes no body, got {len(body)} bytes")
    elif not body:
        (parameter,) = op.parameters("body").values()
        if parameter.get("required"):
            problems.append(f"{op.operation_id} requires a body")
    else:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            problems.append(f"body is not JSON: {exc}")
        else:
            problems += [f"body {problem}" for problem in schema_problems(payload, body_schema)]
    return problems


def schemathesis_document(file: str, operation_ids: set[str]) -> dict[str, Any]:
    """A spec file prepared for schemathesis, which reads Swagger 2.0 as it is written.

    Three changes, all derived from the file rather than typed in:

    - every property (and dictionary value) of a response-side definition gets ``x-nullable``,
      schemathesis's Swagger 2.0 spelling of "may be null" (the README's rule);
    - every property of a request carrier is ``required``: the files mark nothing required, but a
      carrier without its arguments is not a call the reference documents (what the simulator
      does with one is tested on its own);
    - ``consumes`` is JSON only: the client speaks JSON and the simulator models only that.

    Only the operations in ``operation_ids`` are kept.
    """
    document = load(file)
    for path, item in list(document["paths"].items()):
        kept = {
            method: spec for method, spec in item.items() if spec["operationId"] in operation_ids
        }
        if kept:
            document["paths"][path] = kept
        else:
            del document["paths"][path]
    for spec in (spec for item in document["paths"].values() for spec in item.values()):
        if spec.get("consumes"):
            spec["consumes"] = ["application/json"]
    for name, schema in document["definitions"].items():
        properties = schema.get("properties", {})
        if name.startswith(_CARRIER_PREFIX):
            schema["required"] = list(properties)
            continue
        for value in properties.values():
            value["x-nullable"] = True
            if isinstance(value.get("additionalProperties"), dict):
                value["additionalProperties"]["x-nullable"] = True
    return document


# --- generating documents ----------------------------------------------------------------------

_SIMPLE = {
    "string": st.text(max_size=24),
    "boolean": st.booleans(),
    "null": st.none(),
}
#: Names of undeclared properties, by default.
EXTRA_NAMES = st.text(min_size=1, max_size=12)
#: Any JSON value, small: what an undeclared property may hold.  Integers stay within 64 bits:
#: .NET writes no wider ones, and orjson reads wider ones as floats.
JSON_VALUES: st.SearchStrategy[object] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def rfc3339_date_times(draw: st.DrawFn) -> str:
    """RFC 3339 ``date-time`` strings as .NET writes them: ``T``/``Z`` upper case, 0 to 9 fraction
    digits, ``Z`` or any ``+hh:mm``/``-hh:mm`` offset, years 0001 to 9999, no leap second.

    The grammar's other corners (lower-case ``t``/``z``, second 60, year 0000) are what no
    SuperOffice server can send; the parser's tests name them separately.
    """
    moment = draw(st.datetimes())
    digits = draw(st.integers(0, 9))
    fraction = f"{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    offset = draw(
        st.just("Z")
        | st.builds(
            "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)
        )
    )
    date = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    time = f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    return f"{date}T{time}" + (f".{fraction}" if fraction else "") + offset


def strategy(
    schema: Mapping[str, Any],
    *,
    extra_names: st.SearchStrategy[str] = EXTRA_NAMES,
) -> st.SearchStrategy[object]:
    """Documents valid against ``schema`` (as :func:`to_json_schema` writes them).

    A spec-driven stand-in for hypothesis-jsonschema's ``from_schema``, which no longer runs on
    current Hypothesis (it calls an internal API that was removed).  It knows exactly the keywords
    :func:`to_json_schema` emits and refuses any other, so nothing in the spec is skipped silently.
    Properties are each present or absent; an object that does not forbid it also gets undeclared
    properties named by ``extra_names``, holding any JSON.
    """
    handled = {
        "$schema",
        "type",
        "format",
        "enum",
        "minimum",
        "maximum",
        "properties",
        "additionalProperties",
        "items",
        "required",
    }
    unknown = set(schema) - handled
    if unknown:
        msg = f"strategy() does not handle {sorted(unknown)}"
        raise ValueError(msg)
    if "enum" in schema:
        return st.sampled_from(list(schema["enum"]))
    kinds = schema.get("type", "object")
    if isinstance(kinds, list):
        return st.one_of(
            [strategy({**schema, "type": kind}, extra_names=extra_names) for kind in kinds]
        )
    if kinds == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kinds == "string" and schema.get("format") == "date-time":
        return rfc3339_date_times()
    if kinds in _SIMPLE:
        return _SIMPLE[kinds]
    if kinds == "array":
        return st.lists(strategy(schema.get("items", {}), extra_names=extra_names), max_size=4)
    if kinds != "object":
        msg = f"strategy() does not handle type {kinds!r}"
        raise ValueError(msg)
    return _objects(schema, extra_names)


def _objects(
    schema: Mapping[str, Any], extra_names: st.SearchStrategy[str]
) -> st.SearchStrategy[dict[str, object]]:
    properties = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields = {name: strategy(value, extra_names=extra_names) for name, value in properties.items()}
    extra = schema.get("additionalProperties", True)
    if extra is False:
        extras: st.SearchStrategy[dict[str, object]] = st.just({})
    else:
        values = JSON_VALUES if extra is True else strategy(extra, extra_names=extra_names)
        keys = extra_names if extra is True else st.text(max_size=12)
        extras = st.dictionaries(keys.filter(lambda key: key not in properties), values, max_size=3)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, object]:
        document: dict[str, object] = {}
        for name, field in fields.items():
            # Mostly present: an absent property tests little the null case does not.
            if name in required or draw(st.integers(0, 4)) > 0:
                document[name] = draw(field)
        document.update(draw(extras))
        return document

    return build()

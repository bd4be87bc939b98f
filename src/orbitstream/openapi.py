"""The OpenAPI 3.1 document of the HTTP API (served at ``GET /openapi.json``).

Generated from the msgspec types the handlers decode and answer with
(:mod:`orbitstream.sources.http.schemas`, and each HTTP push source's record type — the
satellites pipeline's :class:`~orbitstream.pipelines.satellites.Point`) by
``msgspec.json.schema_components``; only the routes, status codes and descriptions are
written here. The ingest routes are those of the pipelines this service runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from orbitstream.settings import Settings
from orbitstream.sources.http import schemas
from orbitstream.sources.http.ingest import HttpIngest

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"
_TYPES: tuple[Any, ...] = (
    schemas.Accepted,
    schemas.Rejected,
    schemas.BatchResult,
    schemas.NdjsonResult,
    schemas.Error,
    schemas.Health,
    schemas.QueryRequest,
    schemas.QueryResult,
)


def _ref(t: Any) -> dict[str, str]:
    return {"$ref": _REF.format(name=t.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, *types: Any, headers: dict[str, Any] | None = None) -> Any:
    schema = _ref(types[0]) if len(types) == 1 else {"anyOf": [_ref(t) for t in types]}
    out: dict[str, Any] = {"description": description, "content": _json(schema)}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_E = schemas.Error


def _http_errors() -> dict[str, Any]:
    """What the server itself may answer on any route (limits, malformed HTTP)."""
    return {
        "400": _answer("Malformed request or JSON, or an empty body", _E),
        "408": _answer("The request's headers or body did not arrive in time", _E),
        "413": _answer("Body (or an NDJSON line) over the configured limit", _E),
        "414": _answer("URL over the configured limit", _E),
        "431": _answer("Headers over the configured limit", _E),
        "503": _answer("Buffers full or too many connections", _E, headers=_RETRY_AFTER),
    }


def _ingest(ok: Any, rejected: Any, summary: str, body: dict[str, Any]) -> dict[str, Any]:
    accepted = "Accepted (committed in every store in sink ack mode)"
    ok_answer = (
        {"description": accepted, "content": _json(ok)}
        if isinstance(ok, dict)
        else _answer(accepted, ok)
    )
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": body},
            "responses": {
                **_http_errors(),
                "202": ok_answer,
                "415": _answer("Content type not accepted", _E),
                "422": _answer("Invalid fields, each named", rejected, _E),
                "504": _answer("Accepted but not committed in time (sink ack mode)", _E),
            },
        }
    }


def openapi_document(settings: Settings, ingests: Sequence[HttpIngest] = ()) -> dict[str, Any]:
    """The document of this service: its own routes, and the routes of each HTTP push
    source (``ingests``) with its record type."""
    _, components = msgspec.json.schema_components(
        (*_TYPES, *(i.record_type for i in ingests)), ref_template=_REF
    )
    paths: dict[str, Any] = {}
    for ingest in ingests:
        paths.update(_ingest_paths(ingest))
    paths.update(_service_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OrbitStream API",
            "version": "0.1.0",
            "description": f"Ack mode: {settings.http.ack_mode}. 202 means accepted into "
            "memory (memory) or committed in every store (sink). Timestamps must lie within "
            "the accepted window (ORBITSTREAM_TIMESTAMP_MAX_AHEAD / _MAX_AGE).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }


def _ingest_paths(ingest: HttpIngest) -> dict[str, Any]:
    record = ingest.record_type
    accepted: Any = {
        "type": "object",
        "required": ["status", ingest.id_field, "ack"],
        "properties": {
            "status": {"enum": ["accepted"]},
            ingest.id_field: {"type": "string"},
            "ack": {"enum": ["memory", "sink"]},
        },
    }
    if ingest.id_field == "satellite_id":
        accepted = schemas.Accepted
    # a batch is validated record by record: anything else in it is reported by index, not
    # a reason to refuse the rest
    record_list = {
        "type": "array",
        "minItems": 1,
        "items": {
            "anyOf": [
                _ref(record),
                {"description": "Any other value: refused and reported by index."},
            ]
        },
    }
    name = record.__name__
    base = ingest.path
    return {
        base: _ingest(accepted, schemas.Rejected, f"Ingest one {name}", _json(_ref(record))),
        f"{base}/batch": _ingest(
            schemas.BatchResult,
            schemas.BatchResult,
            f"Ingest a JSON array of {name}; invalid ones are reported by index",
            _json(record_list),
        ),
        f"{base}/ndjson": _ingest(
            schemas.NdjsonResult,
            schemas.NdjsonResult,
            "Bulk ingest: one record per line, processed while streaming",
            {
                ctype: {"schema": {"type": "string", "description": f"One {name} per line."}}
                for ctype in ("application/x-ndjson", "text/plain")
            },
        ),
    }


def _service_paths() -> dict[str, Any]:
    return {
        "/health": {
            "get": {
                "summary": "Service and sink health",
                "responses": {
                    **_http_errors(),
                    "200": _answer("Healthy", schemas.Health),
                    "503": _answer("A sink is down", schemas.Health, _E),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    **_http_errors(),
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            }
        },
        "/api/dashboard/summary": {
            "get": {
                "summary": "Dashboard summary",
                "responses": {
                    **_http_errors(),
                    "200": {
                        "description": "Totals, rates, alerts, satellites",
                        "content": _json({"type": "object"}),
                    },
                    "500": _answer("The store could not answer", _E),
                },
            }
        },
        "/api/dashboard/series": {
            "get": {
                "summary": "Bucketed series for one satellite",
                "parameters": [
                    {
                        "name": "satellite_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "minutes",
                        "in": "query",
                        "schema": {"type": "integer", "default": 60},
                    },
                ],
                "responses": {
                    **_http_errors(),
                    "200": {
                        "description": "Columnar series",
                        "content": _json({"type": "object"}),
                    },
                    "422": _answer("A parameter is missing or not an integer", _E),
                    "500": _answer("The store could not answer", _E),
                },
            }
        },
        "/api/query": {
            "post": {
                "summary": "Read-only SQL against the store (loopback, same-origin JSON only)",
                "requestBody": {"required": True, "content": _json(_ref(schemas.QueryRequest))},
                "responses": {
                    **_http_errors(),
                    "200": _answer("columns, types, rows", schemas.QueryResult),
                    "400": _answer("Refused or failed; code is the store's", _E),
                    "403": _answer("Not loopback, or not the service's origin or host", _E),
                    "415": _answer("Not application/json", _E),
                },
            }
        },
        "/api/pipelines": {
            "get": {
                "summary": "Every running pipeline: source, namespace, tables, thresholds, rates, "
                "errors and lag",
                "responses": {
                    **_http_errors(),
                    "200": {"description": "Pipelines", "content": _json({"type": "object"})},
                },
            }
        },
    }

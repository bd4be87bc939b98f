"""The OpenAPI 3.1 document of the HTTP API (served at ``GET /openapi.json``)."""

from __future__ import annotations

from typing import Any

from orbitstream.settings import Settings

__all__ = ["openapi_document"]

_POINT = {
    "type": "object",
    "required": [
        "satellite_id",
        "battery_charge_percent",
        "storage_usage_mb",
        "signal_strength_dbm",
    ],
    "properties": {
        "satellite_id": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": "^[A-Za-z0-9_.:-]+$",
            "example": "SAT-0001",
        },
        "battery_charge_percent": {"type": "number", "minimum": 0, "maximum": 100, "example": 85.5},
        "storage_usage_mb": {"type": "number", "minimum": 0, "example": 45000.0},
        "signal_strength_dbm": {"type": "number", "minimum": -200, "maximum": 0, "example": -55.0},
        "timestamp": {
            "oneOf": [
                {"type": "string", "format": "date-time", "description": "RFC 3339 with offset"},
                {
                    "type": "integer",
                    "minimum": 946684800000000000,
                    "description": "epoch nanoseconds",
                },
            ],
            "description": "Measurement time; default: the time the service received the point.",
        },
    },
}
_FIELD_ERRORS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
}
_ERROR = {
    "type": "object",
    "properties": {
        "status": {"type": "string"},
        "error": {"type": "string"},
        "errors": _FIELD_ERRORS,
    },
}
_ERR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_COUNTS = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["accepted", "partial", "rejected"]},
        "accepted": {"type": "integer"},
        "rejected": {"type": "integer"},
        "ack": {"type": "string", "enum": ["memory", "sink"]},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "line": {"type": "integer"},
                    "errors": _FIELD_ERRORS,
                },
            },
        },
    },
}


def _common(extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "400": {"description": "Malformed JSON or empty body", "content": _ERR},
        "413": {"description": "Body over the configured limit", "content": _ERR},
        "415": {"description": "Content type is not JSON", "content": _ERR},
        "422": {"description": "Invalid fields, each named", "content": _ERR},
        "503": {
            "description": "Buffers full: retry after the Retry-After header",
            "content": _ERR,
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        **extra,
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OrbitStream ingest API",
            "version": "0.1.0",
            "description": f"Ack mode: {settings.ack_mode}. 202 means accepted into memory "
            "(memory) or committed in the store (sink).",
        },
        "paths": {
            "/telemetry": {
                "post": {
                    "summary": "Ingest one telemetry point",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Point"}}
                        },
                    },
                    "responses": _common(
                        {
                            "202": {
                                "description": "Accepted",
                                "content": {
                                    "application/json": {
                                        "schema": {
                                            "type": "object",
                                            "properties": {
                                                "status": {"const": "accepted"},
                                                "satellite_id": {"type": "string"},
                                                "ack": {"type": "string"},
                                            },
                                        }
                                    }
                                },
                            }
                        }
                    ),
                }
            },
            "/telemetry/batch": {
                "post": {
                    "summary": "Ingest a JSON array of points; invalid ones are reported by index",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Point"},
                                }
                            }
                        },
                    },
                    "responses": _common(
                        {
                            "202": {
                                "description": "Valid points accepted",
                                "content": {"application/json": {"schema": _COUNTS}},
                            }
                        }
                    ),
                }
            },
            "/telemetry/ndjson": {
                "post": {
                    "summary": "Bulk ingest: one point per line, processed while streaming",
                    "requestBody": {
                        "required": True,
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    "responses": _common(
                        {
                            "202": {
                                "description": "Valid lines accepted",
                                "content": {"application/json": {"schema": _COUNTS}},
                            }
                        }
                    ),
                }
            },
            "/health": {
                "get": {
                    "summary": "Service and sink health",
                    "responses": {
                        "200": {"description": "Healthy"},
                        "503": {"description": "A sink is down"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
            "/api/dashboard/summary": {
                "get": {
                    "summary": "Dashboard summary",
                    "responses": {"200": {"description": "Totals, rates, alerts, satellites"}},
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
                    "responses": {"200": {"description": "Columnar series"}},
                }
            },
            "/api/query": {
                "post": {
                    "summary": "Read-only SQL against the store (loopback clients only by default)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["sql"],
                                    "properties": {"sql": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "columns, types, rows"},
                        "400": {"description": "Query failed", "content": _ERR},
                    },
                }
            },
        },
        "components": {"schemas": {"Point": _POINT, "Error": _ERROR}},
    }

"""The public API is exactly this list: adding or removing a name is a decision."""

from __future__ import annotations

import orbitstream

EXPECTED = [
    "Ack",
    "BackpressureError",
    "Batch",
    "ColType",
    "Column",
    "ConfigError",
    "DeadLetter",
    "FieldError",
    "OrbitStreamError",
    "PipelineBuild",
    "PipelineParts",
    "PipelineSettings",
    "PipelineSpec",
    "QueryError",
    "RecordError",
    "RecordRejected",
    "Replacing",
    "Rollup",
    "Row",
    "Settings",
    "Sink",
    "SinkBase",
    "SinkError",
    "SinkRejectedError",
    "SinkRequest",
    "SinkRetryableError",
    "SinkType",
    "Source",
    "SourceContext",
    "SourceError",
    "SourceType",
    "Store",
    "Table",
    "ThresholdRule",
    "ThresholdRules",
    "TimeWindow",
    "__version__",
    "env",
]


def test_the_exported_list_is_locked() -> None:
    assert orbitstream.__all__ == EXPECTED


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in orbitstream.__all__:
        obj = getattr(orbitstream, name)
        if name not in ("Row", "__version__"):
            assert obj.__doc__, f"{name} has no docstring"

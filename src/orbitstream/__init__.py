"""OrbitStream: telemetry ingestion engine.

What a plug-in author needs is exported here (the list is locked by a test, so it only
changes on purpose): the pipeline spec and its settings base, table declarations, the
source, sink and store protocols with the context a source sees, the registry's source
and sink types, threshold rules and the errors. docs/plugins.md walks through writing one.
"""

from __future__ import annotations

from orbitstream.core.batch import Ack, Batch, DeadLetter, Row
from orbitstream.core.protocols import Sink, SinkBase, Source, SourceContext, Store
from orbitstream.core.records import FieldError
from orbitstream.core.registry import SinkRequest, SinkType, SourceType
from orbitstream.core.spec import PipelineBuild, PipelineParts, PipelineSettings, PipelineSpec
from orbitstream.core.tables import ColType, Column, Replacing, Rollup, Table
from orbitstream.core.times import TimeWindow
from orbitstream.detect.thresholds import ThresholdRule, ThresholdRules
from orbitstream.errors import (
    BackpressureError,
    ConfigError,
    OrbitStreamError,
    QueryError,
    RecordError,
    RecordRejected,
    SinkError,
    SinkRejectedError,
    SinkRetryableError,
    SourceError,
)
from orbitstream.settings import Settings, env

__version__ = "0.1.0"

__all__ = [
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

"""What a pipeline is, to the runtime: a :class:`PipelineSpec`.

A pipeline is one module (built in, or a plug-in package) that declares

- its **name** (batch ids, metrics labels, ``orbitstream run NAME``),
- its **settings model** (a :class:`PipelineSettings` subclass: thresholds, topics…,
  read from ``[pipelines.<name>]`` in the TOML file, the environment and ``.env``),
- its **tables** (declared once, rendered per store) and **namespace** (a ClickHouse
  database / PostgreSQL schema; ``None`` keeps the store's default),
- the **sources** it can run on (``http``, ``kafka``, ``starlink`` or its own), and
- **build**: given a :class:`PipelineBuild` (settings, namespaced tables, the accepted time
  window), it returns the :class:`PipelineParts` the runtime runs: the source (holding the
  pipeline's mapper and detectors), any sinks of its own (Kafka topics, Parquet files…)
  and what the dashboard may show about it.

The runtime does the rest: stores shared between pipelines, batching, retries, dead
letters, acknowledgements, ``/health`` and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import Field

from orbitstream.core.tables import Table
from orbitstream.core.times import TimeWindow
from orbitstream.settings import Section

if TYPE_CHECKING:
    from orbitstream.core.metrics import Metrics
    from orbitstream.core.protocols import Sink, Source
    from orbitstream.settings import Settings

__all__ = ["PipelineBuild", "PipelineParts", "PipelineSettings", "PipelineSpec"]


class PipelineSettings(Section):
    """Base of every pipeline's settings.

    :param namespace: where its tables live (overrides the pipeline's default).
    :param source: which of its sources to run (overrides the default; ``--source``).
    """

    namespace: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    source: str | None = None


@dataclass(frozen=True, slots=True)
class PipelineBuild:
    """What a pipeline's :attr:`PipelineSpec.build` receives.

    :param tables: the pipeline's tables by name, each in the resolved namespace.
    :param window: the timestamps every configured store can hold, within the accepted
        window around the receive time.
    :param written: the names of the tables some sink writes; ``None``: every table (an
        HTTP tier publishing only the raw points to Kafka, ``serve --sink kafka``, writes
        no alerts: its workers detect them).
    """

    spec: PipelineSpec
    settings: Settings
    own: PipelineSettings
    tables: Mapping[str, Table]
    namespace: str | None
    source: str
    window: TimeWindow
    metrics: Metrics
    written: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PipelineParts:
    """What the runtime runs for one pipeline.

    :param sinks: sinks of the pipeline's own, besides the shared stores (started and
        closed by the runtime; they receive every table's rows).
    :param info: shown by ``/api/pipelines`` and the dashboard (thresholds and the like).
    :param min_stop_secs: the most :attr:`stop_need` can ask (shown at start, for the
        orchestrator's grace period).
    :param stop_need: at the stop, how long it must be allowed at least, whatever
        ``ORBITSTREAM_SHUTDOWN_TIMEOUT`` says: input in flight that cannot be abandoned
        without losing it (a Starlink long poll: the API moves on when it answers, whether
        or not anyone still listens) takes that long to come back and be written. ``0``
        when nothing is in flight.
    """

    source: Source
    sinks: Sequence[Sink] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    min_stop_secs: float = 0.0
    stop_need: Callable[[], float] | None = None


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """A pipeline, as registered under the ``orbitstream.pipelines`` entry point group.

    :param tables: its tables from its settings and the root settings (retention…),
        without namespace (the runtime sets it).
    :param sources: the source types it can run on; the first is the default.
    :param namespace: its default namespace; ``None`` is the store's default.
    :param namespace_env: variables of the pipeline's seed that also set its namespace
        (the Starlink seed's ``CLICKHOUSE_DB``), after the pipeline's own setting.
    """

    name: str
    description: str
    settings: type[PipelineSettings]
    tables: Callable[[Any, Settings], Sequence[Table]]
    build: Callable[[PipelineBuild], PipelineParts]
    sources: tuple[str, ...] = ("http",)
    namespace: str | None = None
    namespace_env: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"pipeline {self.name}: name at least one source")

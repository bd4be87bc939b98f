"""The registry: pipelines, sources and sinks found through entry points.

Three entry point groups, which the built-ins use too (``pyproject.toml``)::

    [project.entry-points."orbitstream.pipelines"]
    satellites = "orbitstream.pipelines.satellites:SPEC"      # a PipelineSpec
    [project.entry-points."orbitstream.sources"]
    http = "orbitstream.sources.http.push:SOURCE"             # a SourceType
    [project.entry-points."orbitstream.sinks"]
    chdb = "orbitstream.stores:CHDB"                          # a SinkType

A plug-in package declares the same in its own ``pyproject.toml`` and appears after
``pip install`` — no edit to OrbitStream (docs/plugins.md). Names must be unique; a
broken entry point is an error naming it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from orbitstream.core.spec import PipelineBuild, PipelineSpec
from orbitstream.core.tables import Table
from orbitstream.errors import ConfigError

if TYPE_CHECKING:
    from orbitstream.core.protocols import Sink, Source
    from orbitstream.settings import Settings

__all__ = [
    "PIPELINES",
    "SINKS",
    "SOURCES",
    "SinkRequest",
    "SinkType",
    "SourceType",
    "pipeline",
    "pipelines",
    "sink_type",
    "sink_types",
    "source_type",
    "source_types",
]

logger = logging.getLogger(__name__)

PIPELINES = "orbitstream.pipelines"
SOURCES = "orbitstream.sources"
SINKS = "orbitstream.sinks"
T = TypeVar("T")


def _no_tables(settings: Settings) -> Sequence[Table]:
    return ()


@dataclass(frozen=True, slots=True)
class SourceType:
    """A kind of source a pipeline can run on.

    :param create: makes the source from the pipeline's build and its *handler*: what this
        source hands its input to (``handler`` documents the protocol it expects — e.g.
        the HTTP push source takes an
        :class:`~orbitstream.sources.http.push.HttpIngest`).
    :param tables: tables the source keeps in the primary store (the Kafka source's chunk
        log), created in the namespace of each pipeline that runs on it.
    """

    name: str
    description: str
    handler: str
    create: Callable[[PipelineBuild, Any], Source]
    tables: Callable[[Settings], Sequence[Table]] = _no_tables


@dataclass(frozen=True, slots=True)
class SinkRequest:
    """What a sink needs to know besides the settings.

    :param databases: every namespace users' queries may read (the registered pipelines').
    :param tables: every registered pipeline's tables (PostgreSQL grants its read-only role
        ``SELECT`` on them when a CLI query sets the role up without a service).
    """

    databases: tuple[str, ...] = ("default",)
    tables: tuple[Table, ...] = ()


@dataclass(frozen=True, slots=True)
class SinkType:
    """A kind of store or sink ``ORBITSTREAM_SINKS`` may name.

    :param create: makes it from the settings and a :class:`SinkRequest`.
    :param store: it answers queries (it can be the primary store).
    """

    name: str
    description: str
    create: Callable[[Settings, SinkRequest], Sink]
    store: bool = False


def _load(group: str, kind: type[T]) -> dict[str, T]:
    found: dict[str, T] = {}
    origin: dict[str, str] = {}
    for ep in entry_points(group=group):
        obj = _load_one(ep, group)
        if not isinstance(obj, kind):
            raise ConfigError(
                f"entry point {ep.name} = {ep.value} in {group} is a {type(obj).__name__}, "
                f"not a {kind.__name__}",
                setting=group,
            )
        name = getattr(obj, "name", ep.name)
        if name in found and origin[name] != ep.value:
            raise ConfigError(
                f"two {group} entry points are named {name!r}: {origin[name]} and {ep.value}",
                setting=group,
            )
        found[name] = obj
        origin[name] = ep.value
    return dict(sorted(found.items()))


def _load_one(ep: EntryPoint, group: str) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise ConfigError(
            f"cannot load {group} entry point {ep.name} = {ep.value}: {type(exc).__name__}: {exc}",
            setting=group,
        ) from exc


@functools.cache
def pipelines() -> dict[str, PipelineSpec]:
    """Every registered pipeline, by name."""
    return _load(PIPELINES, PipelineSpec)


@functools.cache
def source_types() -> dict[str, SourceType]:
    return _load(SOURCES, SourceType)


@functools.cache
def sink_types() -> dict[str, SinkType]:
    return _load(SINKS, SinkType)


def _one(kind: str, name: str, found: dict[str, T], setting: str) -> T:
    obj = found.get(name)
    if obj is None:
        known = ", ".join(found) or "none"
        raise ConfigError(f"unknown {kind} {name!r} (registered: {known})", setting=setting)
    return obj


def pipeline(name: str) -> PipelineSpec:
    """:raises ConfigError: no pipeline of that name is registered."""
    return _one("pipeline", name, pipelines(), "PIPELINE")


def source_type(name: str) -> SourceType:
    return _one("source", name, source_types(), "--source")


def sink_type(name: str) -> SinkType:
    return _one("sink", name, sink_types(), "ORBITSTREAM_SINKS")

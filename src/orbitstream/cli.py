"""The ``orbitstream`` command line: serve, simulate, demo, query, migrate."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shlex
import sys
import urllib.error
import urllib.request
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from orbitstream.errors import ConfigError, SinkError
from orbitstream.logging import configure_logging
from orbitstream.settings import Settings, load_settings

app = typer.Typer(
    name="orbitstream",
    help="OrbitStream: high-throughput telemetry ingestion with anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages are never wrapped mid-line

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Embedded store directory (ORBITSTREAM_DATA_DIR).", show_default=False
    ),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


def _run_demo(coro: Any, port: int) -> None:
    """Run a demo's main coroutine; a bad setting or a taken port exits 2, naming it."""
    try:
        _run_loop(coro)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot listen on port {port}: {exc} (use --port or PORT)")
        raise typer.Exit(2) from exc


class AckModeOpt(StrEnum):
    memory = "memory"
    sink = "sink"


class SinkOpt(StrEnum):
    store = "store"
    kafka = "kafka"


def _kafka_tier(settings: Settings) -> Any:
    """``serve --sink kafka``: accepted points go to the satellites pipeline's raw topic
    (its ``kafka_topic``), keyed by satellite, instead of the stores."""
    from orbitstream.core.protocols import Sink
    from orbitstream.runtime import PipelinePlan
    from orbitstream.sinks.kafka import KafkaSink, KafkaSinkSettings
    from orbitstream.sinks.select import SelectedTables

    servers = settings.kafka.servers()

    def write_to(plan: PipelinePlan) -> list[Sink]:
        topic = str(getattr(plan.own, "kafka_topic", "") or f"{plan.name}-raw")
        sink = KafkaSink(
            KafkaSinkSettings(
                bootstrap_servers=servers,
                topics={"telemetry": topic},
                timestamp_format="epoch_ns",
                create_topics=True,
                topic_partitions=settings.kafka.topic_partitions,
                client_id=f"orbitstream-{plan.name}-ingest",
            )
        )
        return [SelectedTables(sink, ["telemetry"])]

    return write_to


def _serve(
    settings: Settings, names: list[str], source: str | None = None, write_to: Any = None
) -> None:
    """Run ``names`` until SIGTERM/SIGINT; start-up failures are a message and exit 2."""
    from orbitstream.runtime import Runtime

    async def main() -> None:
        runtime = Runtime(settings, names, source=source, write_to=write_to)
        await runtime.run()

    try:
        _run_loop(main())
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except SinkError as exc:
        console.print(f"[red]error:[/red] the {exc.sink or 'store'} sink is not reachable: {exc}")
        raise typer.Exit(2) from exc
    except OSError as exc:  # a source's connection at start-up (the port is a ConfigError)
        console.print(f"[red]error:[/red] start-up failed: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Listen port (PORT, default 8080).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (ORBITSTREAM_HOST).")] = None,
    data_dir: DataDir = None,
    ack_mode: Annotated[
        AckModeOpt | None, typer.Option("--ack-mode", help="memory | sink (ORBITSTREAM_ACK_MODE).")
    ] = None,
    sink: Annotated[
        SinkOpt,
        typer.Option(
            "--sink",
            help="store: write the configured stores; kafka: publish accepted points to the "
            "raw topic for 'run satellites --source kafka' workers (docs/scaling.md).",
        ),
    ] = SinkOpt.store,
) -> None:
    """Run the HTTP ingest service (the satellites pipeline) on the configured store."""
    settings = _settings(
        port=port,
        host=host,
        data_dir=data_dir,
        http={"ack_mode": ack_mode.value} if ack_mode else None,
    )
    configure_logging(settings.log_level, settings.log_format)
    write_to = None
    if sink is SinkOpt.kafka:
        try:
            write_to = _kafka_tier(settings)
        except ConfigError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    _serve(settings, ["satellites"], write_to=write_to)


@app.command()
def run(
    pipelines: Annotated[
        list[str], typer.Argument(help="Pipelines to run in this process (orbitstream pipelines).")
    ],
    source: Annotated[
        str | None,
        typer.Option("--source", help="Run them on this source instead (e.g. kafka)."),
    ] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (PORT, default 8080).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address (ORBITSTREAM_HOST).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run one or more pipelines in one process (with /health, /metrics, the dashboard and
    the query endpoint on PORT)."""
    settings = _settings(port=port, host=host, data_dir=data_dir)
    configure_logging(settings.log_level, settings.log_format)
    _serve(settings, pipelines, source)


@app.command("pipelines")
def list_pipelines() -> None:
    """List the registered pipelines (name, sources, namespace, tables)."""
    from orbitstream.core import registry
    from orbitstream.runtime import plan_pipelines

    settings = _settings()
    try:
        plans = plan_pipelines(settings)
        sources = registry.source_types()
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    table = RichTable("pipeline", "source", "namespace", "tables", "description")
    for plan in plans:
        srcs = ", ".join(
            f"{name}{'' if name in sources else ' (not installed)'}" for name in plan.spec.sources
        )
        table.add_row(
            plan.name,
            srcs,
            plan.namespace or "(store default)",
            ", ".join(t.name for t in plan.tables),
            plan.spec.description,
        )
    Console(width=200).print(table)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or update the tables, rollups and views of every registered pipeline in every
    configured store, then exit."""
    settings = _settings(data_dir=data_dir)
    from orbitstream.core.registry import SinkRequest
    from orbitstream.runtime import read_service_file, registered_tables
    from orbitstream.stores import build_stores, sink_names

    if "chdb" in sink_names(settings) and read_service_file(settings.data_dir):
        console.print(
            "[red]error:[/red] a running service holds the data directory; it migrated at start"
        )
        raise typer.Exit(2)

    async def run() -> list[str]:
        namespaces, tables = registered_tables(settings)
        done = []
        for store in build_stores(settings, SinkRequest(namespaces, tables)):
            await store.start(list(tables))
            await store.close()
            done.append(f"{store.name} ({len(tables)} tables)")
        return done

    try:
        names = _run_loop(run())
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print("migrated: " + ", ".join(names))


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _first_run_hint(pipeline: str) -> str:
    """The commands that create ``pipeline``'s tables in the embedded store."""
    if pipeline == "satellites":
        return "`orbitstream serve` or `orbitstream demo`"
    if pipeline == "starlink":
        return "`orbitstream run starlink` or `orbitstream demo --pipeline starlink`"
    return f"`orbitstream run {pipeline}` (or `orbitstream migrate`)"


def _query_service(url: str, sql: str, pipeline: str) -> dict[str, Any]:
    req = urllib.request.Request(
        url + "/api/query",
        data=json.dumps({"sql": sql, "pipeline": pipeline}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", str(exc))
        raise ValueError(detail) from exc
    except (urllib.error.URLError, OSError) as exc:
        # its process is alive but not answering: starting, or stopping (it closes its
        # port first and holds the store until its buffers are written)
        reason = getattr(exc, "reason", exc)
        raise ValueError(
            f"the service at {url} holds the store but does not answer ({reason}): it is "
            "starting or stopping; try again in a moment"
        ) from exc


def _run_query(
    settings: Settings, sql: str, pipeline: str = "satellites"
) -> tuple[list[str], list[tuple[object, ...]]]:
    """Through the running service when one holds the store, else directly; ``pipeline``'s
    namespace is the current database."""
    from orbitstream.core.registry import SinkRequest
    from orbitstream.runtime import chdb_path, plan_pipelines, read_service_file, registered_tables
    from orbitstream.stores import build_stores

    (plan,) = plan_pipelines(settings, [pipeline])
    info = read_service_file(settings.data_dir)
    if info is not None:
        doc = _query_service(str(info["url"]), sql, pipeline)
        return list(doc["columns"]), [tuple(r) for r in doc["rows"]]
    if settings.store_kind == "chdb" and not chdb_path(settings).exists():
        console.print(
            f"[red]error:[/red] no store at {chdb_path(settings)} yet (ORBITSTREAM_DATA_DIR): "
            f"run {_first_run_hint(pipeline)} first"
        )
        raise typer.Exit(2)
    namespaces, tables = registered_tables(settings)
    store = build_stores(settings, SinkRequest(namespaces, tables))[0]
    try:
        res = store.user_query_sync(sql, plan.namespace)
    finally:
        store.close_sync()
    return list(res.columns), list(res.rows)


def _query_or_exit(
    settings: Settings, sql: str, pipeline: str = "satellites"
) -> tuple[list[str], list[tuple[object, ...]]]:
    """``_run_query``, turning failures into a message and exit code 1 (query) or 2 (config)."""
    from orbitstream.errors import QueryError

    try:
        return _run_query(settings, sql, pipeline)
    except (QueryError, ValueError) as exc:
        console.print(f"[red]query failed:[/red] {exc}")
        hint = _namespace_hint(settings, pipeline, str(exc))
        if hint:
            console.print(f"hint: {hint}")
        raise typer.Exit(1) from exc
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _namespace_hint(settings: Settings, pipeline: str, error: str) -> str | None:
    """For a query whose namespace (database / schema) does not exist: where the
    pipeline's tables are looked for (its namespace follows its settings: query with
    those it ran with)."""
    from orbitstream.core import registry
    from orbitstream.runtime import plan_pipelines

    try:
        (plan,) = plan_pipelines(settings, [pipeline])
    except (ConfigError, ValueError):
        return None
    ns = plan.namespace
    # the pipeline's own namespace is what is missing (not a database the query names)
    if (
        ns is None
        or "not exist" not in error
        or not any(f"{q}{ns}{e}" in error for q, e in ((" ", " "), ('"', '"'), ("`", "`")))
    ):
        return None
    spec = registry.pipeline(pipeline)
    where = ns
    knobs = [f"ORBITSTREAM_{pipeline.upper()}__NAMESPACE", *spec.namespace_env]
    return (
        f"the {pipeline} pipeline's tables are looked for in {where}, as {' / '.join(knobs)} "
        f"say now; query with the settings it ran with, and run it (or `orbitstream migrate`) "
        "once to create them"
    )


def _print_rows(columns: list[str], rows: list[tuple[object, ...]], fmt: OutputFormat) -> None:
    out = sys.stdout
    if fmt is OutputFormat.json:
        out.write(
            json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str) + "\n"
        )
    elif fmt is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        out.write(buf.getvalue())
    else:
        table = RichTable(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        Console().print(table)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL query (the store's dialect).")],
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline", "-p", help="Run in this pipeline's namespace (its tables unqualified)."
        ),
    ] = "satellites",
    data_dir: DataDir = None,
) -> None:
    """Run a read-only query: through the running service if one holds the store, else
    directly. Qualified names (starlink.telemetry) reach other pipelines' tables."""
    settings = _settings(data_dir=data_dir)
    columns, rows = _query_or_exit(settings, sql, pipeline)
    _print_rows(columns, rows, fmt)


class ReplayPipeline(StrEnum):
    starlink = "starlink"


@app.command()
def replay(
    pipeline: Annotated[
        ReplayPipeline, typer.Argument(help="The pipeline whose raw archive to replay.")
    ],
    path: Annotated[
        Path,
        typer.Argument(help="The archive directory (STARLINK_RAW_ARCHIVE) or one archived file."),
    ],
    data_dir: DataDir = None,
) -> None:
    """Replay a raw archive through the pipeline's mapping into the configured stores.
    Batch ids are the bodies' digests, so what is already stored is not stored again."""
    from orbitstream.errors import SourceError
    from orbitstream.replay import replay_starlink
    from orbitstream.runtime import read_service_file
    from orbitstream.stores import sink_names

    settings = _settings(data_dir=data_dir)
    configure_logging("warning", "text")
    if "chdb" in sink_names(settings) and read_service_file(settings.data_dir):
        console.print(
            "[red]error:[/red] a running service holds the data directory "
            f"{settings.data_dir}; stop it first (ORBITSTREAM_DATA_DIR)"
        )
        raise typer.Exit(2)
    try:
        report = _run_loop(replay_starlink(settings, path))
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except SourceError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except SinkError as exc:
        console.print(f"[red]error:[/red] the {exc.sink or 'store'} store failed: {exc}")
        raise typer.Exit(1) from exc
    table = RichTable("table", "rows replayed", "rows added")
    for name in report.added or report.rows:
        table.add_row(name, f"{report.rows.get(name, 0):,}", f"{report.added.get(name, 0):,}")
    Console().print(table)
    console.print(
        f"replayed {report.bodies:,} responses from {path}; {report.dead:,} rows to dead letters"
    )
    if report.not_read:
        shown = ", ".join(report.not_read[:5]) + (" …" if len(report.not_read) > 5 else "")
        console.print(
            f"note: {len(report.not_read):,} file{'s' if len(report.not_read) != 1 else ''} "
            "not named like archived responses "
            f"(<poll ns>-<poll number>.json.gz) were not read: {shown}"
        )
    if report.unreadable:
        for file, reason in report.unreadable:
            console.print(f"[red]error:[/red] skipped unreadable archive file {file}: {reason}")
        raise typer.Exit(1)


@app.command()
def deadletters(
    limit: Annotated[int, typer.Option(help="Newest rows to show.")] = 50,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    data_dir: DataDir = None,
) -> None:
    """List rows a store refused: its dead_letters table, then the dead-letter file."""
    from orbitstream.sinks.deadletter import read_dead_letter_file

    settings = _settings(data_dir=data_dir)
    table_col = "table_name" if settings.store_kind == "postgres" else "`table`"
    sql = (
        f"SELECT time, pipeline, {table_col} AS table_name, batch_id, error, row "
        f"FROM dead_letters ORDER BY time DESC LIMIT {int(limit)}"
    )
    columns, rows = _query_or_exit(settings, sql)
    spilled = read_dead_letter_file(settings.data_dir / "dead_letters.jsonl")
    for letter in spilled[-limit:]:
        rows.append(
            (
                letter.get("time_ns"),
                letter.get("pipeline"),
                letter.get("table"),
                letter.get("batch_id"),
                letter.get("error"),
                json.dumps(letter.get("row")),
            )
        )
    if not rows and fmt is not OutputFormat.json:
        console.print("no dead letters")
        return
    _print_rows(columns, rows, fmt)  # JSON: [] when there are none, as `query` prints


class DemoPipeline(StrEnum):
    satellites = "satellites"
    starlink = "starlink"


def _demo_starlink(settings: Settings, terminals: int) -> None:
    """The fake Starlink API and ``run starlink`` in one process, on the embedded store."""
    from orbitstream.runtime import Runtime
    from orbitstream.simulate.starlink import FakeStarlink, FakeStarlinkConfig, FleetConfig

    async def main() -> None:
        fake = FakeStarlink(
            FakeStarlinkConfig(
                fleet=FleetConfig(terminals=terminals, alert_open_probability=0.05),
                backlog_ticks=40,
                tick_interval_secs=15.0,
            )
        )
        await fake.start("127.0.0.1", 0)
        # the pipeline reads its settings from the environment: point it at the fake
        os.environ.update(
            {
                "CLIENT_ID": fake.client_id,
                "CLIENT_SECRET": fake.client_secret,
                "STARLINK_TOKEN_URL": fake.token_url,
                "STARLINK_STREAM_URL": fake.stream_url,
                "MAX_LINGER": os.environ.get("MAX_LINGER", "2000"),
            }
        )
        try:
            service = Runtime(settings, ["starlink"])
            bound = await service.start()
        except BaseException:
            await fake.stop()
            raise
        service.install_signal_handlers()
        url = f"http://127.0.0.1:{bound}"
        console.print(
            f"[bold green]OrbitStream demo (starlink)[/bold green]: dashboard at "
            f"[link={url}/]{url}/[/link]"
        )
        console.print(
            f"store: {settings.data_dir}   fake Starlink API: {fake.base_url} "
            f"({terminals} terminals, a 15-s tick)"
        )
        console.print(
            f"try: orbitstream query --data-dir {shlex.quote(str(settings.data_dir))} "
            '--pipeline starlink "SELECT device_type, count() FROM telemetry GROUP BY 1"',
            markup=False,
        )
        console.print("Ctrl-C stops the fake API and the service.")
        try:
            await service.stopping.wait()
        finally:
            await service.stop()
            await fake.stop()
            console.print("demo stopped; data kept in " + str(settings.data_dir))

    _run_demo(main(), settings.port)


@app.command()
def demo(
    satellites: Annotated[
        int, typer.Option("--satellites", "-s", help="Simulated satellites.")
    ] = 20,
    rate: Annotated[float, typer.Option("--rate", "-r", help="Points/s per satellite.")] = 10.0,
    port: Annotated[int | None, typer.Option(help="Listen port (PORT, default 8080).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[
        DemoPipeline,
        typer.Option(
            "--pipeline",
            "-p",
            help="satellites (simulated fleet over HTTP) or starlink (the fake Starlink API).",
        ),
    ] = DemoPipeline.satellites,
    terminals: Annotated[
        int, typer.Option("--terminals", "-t", min=1, help="Starlink demo: UserTerminals.")
    ] = 20,
) -> None:
    """Service + simulator + dashboard on the embedded store, in one command (Ctrl-C stops)."""
    settings = _settings(
        port=port, data_dir=data_dir, host=os.environ.get("ORBITSTREAM_HOST", "127.0.0.1")
    )
    configure_logging("warning", "text")
    if pipeline is DemoPipeline.starlink:
        _demo_starlink(settings, terminals)
        return
    from orbitstream.runtime import Runtime

    async def main() -> None:
        service = Runtime(settings, ["satellites"])
        bound = await service.start()
        service.install_signal_handlers()
        url = f"http://127.0.0.1:{bound}"
        console.print(
            f"[bold green]OrbitStream demo[/bold green]: dashboard at [link={url}/]{url}/[/link]"
        )
        console.print(
            f"store: {settings.data_dir}   simulator: {satellites} satellites × {rate:g} points/s"
        )
        console.print("Ctrl-C stops the simulator and the service.")
        sim = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "orbitstream",
                "simulate",
                "-s",
                str(satellites),
                "-r",
                str(rate),
                "-d",
                "0",
                "--api-url",
                url,
            ],
        )
        try:
            await service.stopping.wait()
        finally:
            if sim.returncode is None:
                sim.send_signal(2)
                try:
                    await asyncio.wait_for(sim.wait(), 10)
                except TimeoutError:
                    sim.kill()
            await service.stop()
            console.print("demo stopped; data kept in " + str(settings.data_dir))

    _run_demo(main(), settings.port)


def _register_simulate() -> None:
    from orbitstream.simulate.cli import simulate_app

    app.add_typer(simulate_app, name="simulate")


_register_simulate()


def main() -> None:
    app()

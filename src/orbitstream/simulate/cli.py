"""``orbitstream simulate``: simulated input for the pipelines.

``orbitstream simulate [OPTIONS]`` (the seed's interface) and ``orbitstream simulate
satellites [OPTIONS]`` stream a satellite fleet to the ingest API; other pipelines add
their own sub-commands to :data:`simulate_app` (``simulate starlink``, ``simulate network``,
``simulate sessions``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from orbitstream.simulate.driver import (
    ServerUnreachableError,
    SimulatorConfig,
    Summary,
    run_simulation_blocking,
)

__all__ = ["render_summary", "simulate", "simulate_app"]

logger = logging.getLogger(__name__)


def _positive_rate(value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter("must be a number of points per second > 0")
    return value


def _http_url(value: str) -> str:
    try:
        SimulatorConfig(api_url=value).validate()
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}, e.g. http://localhost:8080") from exc
    return value


def render_summary(summary: Summary) -> Table:
    """A table of the run's counters, rates and latencies."""
    table = Table(title="Simulation summary", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("target rate", f"{summary.target_rate:,.0f} points/s"),
        ("achieved rate", f"{summary.achieved_rate:,.0f} points/s"),
        ("elapsed", f"{summary.elapsed_s:.2f} s"),
        ("sent", f"{summary.sent:,}"),
        ("accepted", f"{summary.accepted:,}"),
        ("rejected", f"{summary.rejected:,}"),
        ("errors", f"{summary.errors:,}"),
        ("backpressure (503)", f"{summary.backpressure:,}"),
        ("dropped (client could not keep up)", f"{summary.dropped_client:,}"),
        ("requests", f"{summary.requests:,}"),
        ("latency p50", f"{summary.p50_ms:.2f} ms"),
        ("latency p99", f"{summary.p99_ms:.2f} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


simulate_app = typer.Typer(
    help="Simulated input: a satellite fleet (the default), or another pipeline's source.",
    no_args_is_help=False,
)


@simulate_app.callback(invoke_without_command=True)
def _default(
    ctx: typer.Context,
    satellites: Annotated[
        int, typer.Option("--satellites", "-s", min=1, help="Number of satellites.")
    ] = 100,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", "-r", callback=_positive_rate, help="Points per second per satellite."
        ),
    ] = 100.0,
    api_url: Annotated[
        str, typer.Option("--api-url", callback=_http_url, help="Base URL of the ingest API.")
    ] = "http://localhost:8080",
    duration: Annotated[
        float,
        typer.Option("--duration", "-d", min=0.0, help="Seconds to run (0 = until stopped)."),
    ] = 60.0,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            "--anomaly-rate",
            min=0.0,
            max=1.0,
            help="Probability per point that a fault episode starts.",
        ),
    ] = 0.01,
    batch: Annotated[
        int,
        typer.Option("--batch", min=0, help="Points per request to /telemetry/batch (0 = single)."),
    ] = 0,
    connections: Annotated[
        int, typer.Option("--connections", min=1, help="Kept-alive HTTP connections.")
    ] = 64,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed for a reproducible fleet.")
    ] = None,
) -> None:
    """Simulate a satellite fleet and stream its telemetry to the ingest API (without a
    sub-command), or run another pipeline's simulator (``simulate NAME --help``)."""
    if ctx.invoked_subcommand is not None:
        return
    simulate(satellites, rate, api_url, duration, anomaly_rate, batch, connections, seed)


@simulate_app.command("satellites")
def simulate(
    satellites: Annotated[
        int, typer.Option("--satellites", "-s", min=1, help="Number of satellites.")
    ] = 100,
    rate: Annotated[
        float,
        typer.Option(
            "--rate", "-r", callback=_positive_rate, help="Points per second per satellite."
        ),
    ] = 100.0,
    api_url: Annotated[
        str, typer.Option("--api-url", callback=_http_url, help="Base URL of the ingest API.")
    ] = "http://localhost:8080",
    duration: Annotated[
        float,
        typer.Option("--duration", "-d", min=0.0, help="Seconds to run (0 = until stopped)."),
    ] = 60.0,
    anomaly_rate: Annotated[
        float,
        typer.Option(
            "--anomaly-rate",
            min=0.0,
            max=1.0,
            help="Probability per point that a fault episode starts.",
        ),
    ] = 0.01,
    batch: Annotated[
        int,
        typer.Option("--batch", min=0, help="Points per request to /telemetry/batch (0 = single)."),
    ] = 0,
    connections: Annotated[
        int, typer.Option("--connections", min=1, help="Kept-alive HTTP connections.")
    ] = 64,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed for a reproducible fleet.")
    ] = None,
) -> None:
    """Simulate a satellite fleet and stream its telemetry to the ingest API."""
    cfg = SimulatorConfig(
        satellites=satellites,
        rate=rate,
        api_url=api_url,
        duration=duration,
        anomaly_rate=anomaly_rate,
        batch=batch,
        connections=connections,
        seed=seed,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console()
    err = Console(stderr=True)
    err.print(
        f"Simulating {satellites:,} satellites at {cfg.total_rate:,.0f} points/s "
        f"→ {api_url} (Ctrl-C to stop)",
        soft_wrap=True,
    )
    try:
        summary = run_simulation_blocking(cfg)
    except ServerUnreachableError as exc:
        err.print(
            f"[red]error:[/] ingest API unreachable at {exc.url} ({exc.reason})", soft_wrap=True
        )
        raise typer.Exit(1) from exc
    console.print(render_summary(summary))
    if summary.sent == 0:
        err.print(f"[red]error:[/] nothing could be sent to {api_url}", soft_wrap=True)
        raise typer.Exit(1)


@simulate_app.command("starlink")
def simulate_starlink(
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the fake Starlink API (token and stream).")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks one.")] = 8090,
    terminals: Annotated[
        int, typer.Option("--terminals", "-t", min=1, help="UserTerminals in the fleet.")
    ] = 20,
    routers_per_terminal: Annotated[
        float, typer.Option("--routers-per-terminal", min=0.0, max=2.0, help="Mean routers each.")
    ] = 1.0,
    backlog_ticks: Annotated[
        int, typer.Option("--backlog-ticks", min=0, help="15-s ticks queued before the start.")
    ] = 20,
    tick_interval: Annotated[
        float,
        typer.Option(
            "--tick-interval",
            min=0.0,
            help="Wall seconds between generated ticks (0: only the backlog). Each tick is "
            "15 s of device time: below 15, device time runs ahead of the clock, and rows more "
            "than ORBITSTREAM_TIMESTAMP_MAX_AHEAD (1 h) ahead go to the pipeline's dead "
            "letters (with 1, after about 4 minutes).",
        ),
    ] = 15.0,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="Stop generating at this many rows.")
    ] = None,
    faults: Annotated[
        str,
        typer.Option(
            "--faults",
            help="Random fault rates per request, e.g. 'stream_429=0.05,stream_503=0.02,"
            "stream_401=0.01,token_500=0.1'. Faults: stream_401 (token revoked), stream_403, "
            "stream_404, stream_429 and stream_503 (with Retry-After: --retry-after), stream_500, "
            "stream_stall (no answer for --stall-secs, then 504), stream_truncate (half a body), stream_invalid_json (an "
            "HTML page), token_429 and token_503 (with Retry-After), token_500.",
        ),
    ] = "",
    retry_after: Annotated[
        str,
        typer.Option(
            "--retry-after",
            help="Retry-After of random 429 and 503 answers (stream and token) in whole "
            "seconds, or 'none' to send none.",
        ),
    ] = "1",
    stall_secs: Annotated[
        float,
        typer.Option("--stall-secs", min=0.0, help="How long a random stream_stall lasts."),
    ] = 2.0,
    alert_map_every: Annotated[
        int | None,
        typer.Option(
            "--alert-map-every",
            min=1,
            help="Change the alert map (a code re-pointed, one renamed, one dropped) after "
            "every N responses.",
        ),
    ] = None,
    rate_limit: Annotated[
        int | None,
        typer.Option(
            "--rate-limit", min=1, help="Stream requests per client and minute before 429."
        ),
    ] = None,
    legacy_fields: Annotated[
        bool,
        typer.Option(
            "--legacy-fields",
            help="Add aggregateValues, aggregateColumnNamesByDeviceType and "
            "metadata.LastPartitionUtcTimestampNs, as older responses carry.",
        ),
    ] = False,
    reorder_columns: Annotated[
        bool, typer.Option("--reorder-columns", help="Shuffle the columns per response.")
    ] = False,
    extra_columns: Annotated[
        bool, typer.Option("--extra-columns", help="Add unknown columns to UT/Router rows.")
    ] = False,
    alert_open_probability: Annotated[
        float, typer.Option("--alert-rate", min=0.0, max=1.0, help="Per device and tick.")
    ] = 0.02,
    expires_in: Annotated[
        int, typer.Option("--expires-in", min=1, help="Token lifetime answered (s).")
    ] = 900,
    client_id: Annotated[str, typer.Option("--client-id")] = "orbitstream-fake",
    client_secret: Annotated[str, typer.Option("--client-secret")] = "fake-secret",
    seed: Annotated[int, typer.Option("--seed", help="Fleet seed.")] = 1,
) -> None:
    """Serve a fake Starlink Enterprise telemetry API (for `orbitstream run starlink`):
    prints the CLIENT_ID, CLIENT_SECRET and STARLINK_*_URL to use, then serves until
    Ctrl-C or SIGTERM."""
    import asyncio
    import signal
    import sys

    from orbitstream.simulate.starlink import (
        FakeStarlink,
        FakeStarlinkConfig,
        FleetConfig,
        parse_fault_rates,
        serve_fake_starlink,
    )

    err = Console(stderr=True)
    if not serve:
        err.print("[red]error:[/] use --serve to run the fake Starlink API (see --help)")
        raise typer.Exit(2)
    try:
        rates = parse_fault_rates(faults)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--faults") from exc
    retry_secs: float | None = None
    if retry_after.strip().lower() != "none":
        text = retry_after.strip()
        if not text.isdigit() or int(text) >= 86_400:  # Retry-After is whole seconds
            raise typer.BadParameter(
                f"expected whole seconds (0..86399) or 'none', got {retry_after!r}",
                param_hint="--retry-after",
            )
        retry_secs = int(text)
    config = FakeStarlinkConfig(
        clients={client_id: client_secret},
        expires_in=expires_in,
        fleet=FleetConfig(
            terminals=terminals,
            routers_per_terminal=routers_per_terminal,
            seed=seed,
            alert_open_probability=alert_open_probability,
        ),
        backlog_ticks=backlog_ticks,
        tick_interval_secs=tick_interval or None,
        max_rows=max_rows,
        reorder_columns=reorder_columns,
        extra_columns=extra_columns,
        random_faults=rates,
        fault_retry_after=retry_secs,
        fault_stall_secs=stall_secs,
        alert_map_every=alert_map_every,
        rate_limit_per_min=rate_limit,
        legacy_fields=legacy_fields,
        seed=seed,
    )

    def ready(fake: FakeStarlink) -> None:
        sys.stdout.write(
            f"CLIENT_ID={fake.client_id}\nCLIENT_SECRET={fake.client_secret}\n"
            f"STARLINK_TOKEN_URL={fake.token_url}\nSTARLINK_STREAM_URL={fake.stream_url}\n"
        )
        sys.stdout.flush()
        err.print(
            f"Fake Starlink API at {fake.base_url}: {terminals} terminals, "
            f"{len(fake.stream):,} rows queued (Ctrl-C to stop)",
            soft_wrap=True,
        )

    async def main() -> FakeStarlink:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve_fake_starlink(config, host, port, stop=stop, on_ready=ready)

    try:
        fake = asyncio.run(main())
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {host}:{port}: {exc} (--port)")
        raise typer.Exit(2) from exc
    served = sum(len(r.rows) for r in fake.served)
    err.print(f"served {served:,} rows in {len(fake.served):,} responses")


# -- Kafka simulators ----------------------------------------------------------------------
Bootstrap = Annotated[
    str,
    typer.Option(
        "--bootstrap",
        envvar=["KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP"],
        help="Kafka brokers host:port[,host:port] (KAFKA_BOOTSTRAP_SERVERS).",
    ),
]
Rate = Annotated[
    float,
    typer.Option("--rate", "-r", min=0.0, help="Messages per second (0 = as fast as possible)."),
]
Duration = Annotated[
    float, typer.Option("--duration", "-d", min=0.0, help="Seconds to run (0 = until stopped).")
]
Count = Annotated[
    int,
    typer.Option("--messages", "-n", min=0, help="Stop after this many messages (0 = no limit)."),
]
Malformed = Annotated[
    float,
    typer.Option("--malformed-rate", min=0.0, max=1.0, help="Share of malformed messages."),
]
Partitions = Annotated[
    int, typer.Option("--partitions", min=1, help="Partitions of the topic if it is created.")
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (a reproducible stream).")]


def _report(what: str, stats: object) -> None:
    from orbitstream.simulate.publisher import PublishStats

    assert isinstance(stats, PublishStats)
    Console().print(
        f"{what}: sent {stats.sent:,} messages ({stats.malformed:,} malformed, "
        f"{stats.failed:,} failed) in {stats.duration_secs:.2f} s, {stats.rate:,.0f}/s"
    )
    if stats.failed:
        raise typer.Exit(1)


def _none_if_zero(value: float) -> float | None:
    return value if value > 0 else None


def _publish(
    publish: Callable[..., Any],
    label: str,
    bootstrap: str,
    topic: str,
    config: object,
    rate: float,
    duration: float,
    messages: int,
    partitions: int,
) -> None:
    """Run one Kafka simulator (``simulate network`` / ``sessions``) and print its summary;
    a broker or topic error exits 1 with the message."""
    from orbitstream.errors import OrbitStreamError
    from orbitstream.logging import configure_logging

    configure_logging("warning", "text")  # the Kafka client's lines, with their detail
    if not messages and not duration:
        Console(stderr=True).print("Publishing until stopped (Ctrl-C).")
    try:
        stats = publish(
            bootstrap,
            topic=topic,
            config=config,
            rate=_none_if_zero(rate),
            duration_secs=_none_if_zero(duration),
            max_messages=messages or None,
            partitions=partitions,
        )
    except OrbitStreamError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    _report(f"{label} → {topic}", stats)


@simulate_app.command("network")
def simulate_network_cmd(
    bootstrap: Bootstrap = "localhost:9092",
    topic: Annotated[
        str, typer.Option("--topic", envvar="KAFKA_RAW_TOPIC", help="Raw topic (KAFKA_RAW_TOPIC).")
    ] = "network-data",
    spines: Annotated[int, typer.Option("--spines", min=1)] = 2,
    leaves: Annotated[int, typer.Option("--leaves", min=1)] = 4,
    access_ports: Annotated[int, typer.Option("--access-ports", min=0)] = 4,
    sample_interval: Annotated[
        float, typer.Option("--sample-interval", min=0.001, help="Simulated seconds per round.")
    ] = 10.0,
    rate: Rate = 0.0,
    duration: Duration = 0.0,
    messages: Count = 0,
    malformed_rate: Malformed = 0.0,
    partitions: Partitions = 4,
    seed: Seed = 0,
) -> None:
    """Publish SR Linux-style state of a leaf-spine fabric to Kafka (the network pipeline's
    input): moving counters, links going down, counter resets, changing addresses."""
    from orbitstream.simulate.network import FabricConfig, simulate_network

    try:
        cfg = FabricConfig(
            spines=spines,
            leaves=leaves,
            access_ports=access_ports,
            sample_interval_secs=sample_interval,
            malformed_rate=malformed_rate,
            seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _publish(
        simulate_network, "network", bootstrap, topic, cfg, rate, duration, messages, partitions
    )


@simulate_app.command("sessions")
def simulate_sessions_cmd(
    bootstrap: Bootstrap = "localhost:9092",
    topic: Annotated[
        str, typer.Option("--topic", envvar="KAFKA_TOPIC", help="Sessions topic (KAFKA_TOPIC).")
    ] = "sessions-topic",
    vehicles: Annotated[int, typer.Option("--vehicles", min=1)] = 20,
    ping_interval: Annotated[
        float, typer.Option("--ping-interval", min=0.001, help="Simulated seconds between pings.")
    ] = 5.0,
    cancel_rate: Annotated[float, typer.Option("--cancel-rate", min=0.0, max=1.0)] = 0.05,
    rate: Rate = 0.0,
    duration: Duration = 0.0,
    messages: Count = 0,
    malformed_rate: Malformed = 0.0,
    partitions: Partitions = 4,
    seed: Seed = 0,
) -> None:
    """Publish vehicles' delivery sessions to Kafka (the sessions pipeline's input):
    started → en_route pings → delivered / cancelled, keyed by session id."""
    from orbitstream.simulate.sessions import SessionsConfig, simulate_sessions

    try:
        cfg = SessionsConfig(
            vehicles=vehicles,
            ping_interval_secs=ping_interval,
            cancel_rate=cancel_rate,
            malformed_rate=malformed_rate,
            seed=seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    _publish(
        simulate_sessions, "sessions", bootstrap, topic, cfg, rate, duration, messages, partitions
    )

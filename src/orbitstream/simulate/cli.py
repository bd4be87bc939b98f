"""``orbitstream simulate``: simulated input for the pipelines.

``orbitstream simulate [OPTIONS]`` (the seed's interface) and ``orbitstream simulate
satellites [OPTIONS]`` stream a satellite fleet to the ingest API; other pipelines add
their own sub-commands to :data:`simulate_app` (``simulate starlink``, ``simulate network``,
``simulate sessions``).
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

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

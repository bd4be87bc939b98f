from __future__ import annotations

import socket

import pytest
import typer
from typer.testing import CliRunner

from orbitstream.simulate.cli import simulate_app
from tests.unit.simulate.fake_ingest import FakeIngest


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(simulate_app, name="simulate")  # as orbitstream.cli does

    @app.command("noop")
    def noop() -> None:  # a second command keeps "simulate" a sub-command, as in the real app
        """Do nothing."""

    return app


def invoke(*args: str, sub: tuple[str, ...] = ()) -> tuple[int, str]:
    result = CliRunner().invoke(make_app(), ["simulate", *sub, *args])
    return result.exit_code, result.output


@pytest.fixture(params=[(), ("satellites",)], ids=["simulate", "simulate-satellites"])
def sub(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """``orbitstream simulate ...`` (the seed's form) and ``simulate satellites ...``."""
    value: tuple[str, ...] = request.param
    return value


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--satellites", "0"], "--satellites"),
        (["-s", "-3"], "--satellites"),
        (["--rate", "0"], "--rate"),
        (["-r", "-1.5"], "--rate"),
        (["--duration", "-1"], "--duration"),
        (["--anomaly-rate", "1.5"], "--anomaly-rate"),
        (["--anomaly-rate", "-0.1"], "--anomaly-rate"),
        (["--batch", "-1"], "--batch"),
        (["--connections", "0"], "--connections"),
        (["--api-url", "https://example.com"], "--api-url"),
        (["--api-url", "http://localhost:notaport"], "--api-url"),
        (["--seed", "abc"], "--seed"),
    ],
)
def test_invalid_flags_are_refused_naming_the_flag(
    args: list[str], flag: str, sub: tuple[str, ...]
) -> None:
    code, output = invoke(*args, sub=sub)
    assert code == 2
    assert flag in output
    assert "Invalid value" in output


def test_help_lists_the_flags() -> None:
    code, output = invoke("--help")
    assert code == 0
    for flag in (
        "--satellites",
        "-s",
        "--rate",
        "-r",
        "--api-url",
        "--duration",
        "-d",
        "--anomaly-rate",
        "--batch",
        "--connections",
        "--seed",
    ):
        assert flag in output


def test_unreachable_server_exits_non_zero_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, output = invoke("--api-url", url, "-d", "0.2", "--connections", "2")
    assert code == 1
    assert "unreachable" in output
    assert url in output


def test_a_short_run_streams_points_and_prints_the_summary(ingest: FakeIngest) -> None:
    code, output = invoke(
        "--api-url", ingest.url, "-s", "2", "-r", "50", "-d", "0.5", "--seed", "3",
        "--anomaly-rate", "0.2", "--connections", "4",
    )  # fmt: skip
    assert code == 0, output
    assert "Simulation summary" in output
    assert len(ingest.stored) == 50
    assert {sid for sid, _ in ingest.stored} == {"SAT-0001", "SAT-0002"}
    assert ingest.invalid == []


def test_batch_flag_uses_the_batch_endpoint(ingest: FakeIngest) -> None:
    code, output = invoke("--api-url", ingest.url, "-s", "4", "-r", "25", "-d", "1", "--batch", "5")
    assert code == 0, output
    assert sum(ingest.batch_sizes) == len(ingest.stored) == 100
    assert max(ingest.batch_sizes) == 5


def test_starlink_help_names_every_fault_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from orbitstream.simulate.starlink import Fault

    monkeypatch.setenv("COLUMNS", "400")  # one help line per option: no word is wrapped
    code, out = invoke("--help", sub=("starlink",))
    assert code == 0, out
    missing = [f.value for f in Fault if f.value not in out]
    assert not missing, out

"""The Typer/Rich command line's own behaviour: positional reasons, the help of the sub-command
on usage errors, plain output on pipes and with NO_COLOR, ``top --once``, and the install hint
when the ``cli`` extra is missing. Same fixtures as test_cli.py (a workflow module per test)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import test_cli
from statestream import RunState
from statestream.cli import main
from test_cli import Env, cli

env = test_cli.env  # the fixture: a fresh workflow module on an SQLite file


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_pause_takes_the_reason_as_an_argument_or_an_option(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = env.trigger("order-1", "order-2")
    code, out, err = cli(capsys, "runs", "pause", env.target(), first, "checking stock")
    assert (code, err) == (0, ""), err
    assert "Paused" in out
    record = env.lookup(first)
    assert (record.run_state, record.run_state_reason) == (RunState.PAUSED, "checking stock")

    code, _, err = cli(capsys, "runs", "pause", env.target(), second, "--reason", "fraud check")
    assert code == 0, err
    assert env.lookup(second).run_state_reason == "fraud check"

    code, _, err = cli(capsys, "runs", "cancel", env.target(), first, "customer left")
    assert code == 0, err
    record = env.lookup(first)
    assert (record.run_state, record.run_state_reason) == (RunState.CANCELLED, "customer left")


def test_two_different_reasons_are_a_usage_error(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_id,) = env.trigger("order-1")
    code, out, err = cli(capsys, "runs", "pause", env.target(), run_id, "a", "--reason", "b")
    assert (code, out) == (2, "")
    assert "give the reason once" in err.splitlines()[-1]
    assert env.lookup(run_id).run_state is not RunState.PAUSED


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["runs", "pause", "mod:wf"], "runs pause"),
        (["runs", "list", "mod:wf", "--bogus"], "runs list"),
        (["runs", "list", "mod:wf", "--limit", "many"], "runs list"),
        (["runs", "resume", "mod:wf", "run-1", "a reason"], "runs resume"),
        (["top"], "top"),
        (["schema", "create"], "schema create"),
        (["runs"], "runs"),
    ],
)
def test_a_usage_error_prints_the_help_of_its_sub_command(
    capsys: pytest.CaptureFixture[str], argv: list[str], command: str
) -> None:
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"Usage: statestream {command} "), err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("statestream: error: "), err
    assert "exit codes:" not in err  # not the top-level help
    assert "\x1b" not in err


def test_debug_is_accepted_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "graph", "ss_cli_no_such_module_x:wf", "--debug")
    assert code == 4
    assert "Traceback" in err


@pytest.mark.parametrize("where", ["pipe", "NO_COLOR"])
def test_plain_text_on_a_pipe_and_with_no_color(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    (run_id,) = env.trigger("order-1")
    if where == "NO_COLOR":
        monkeypatch.setenv("NO_COLOR", "1")
    outputs = []
    for argv in (
        ["runs", "list", env.target()],
        ["runs", "show", env.target(), run_id],
        ["runs", "pause", env.target(), run_id, "why [bold]not[/bold]"],
        ["top", env.target(), "--once", "--interval", "0.1"],
    ):
        screen = Terminal() if where == "NO_COLOR" else io.StringIO()
        monkeypatch.setattr(sys, "stdout", screen)
        assert main(argv) == 0
        outputs.append(screen.getvalue())
    for text in outputs:
        assert "\x1b" not in text
    for table in (outputs[0], outputs[3]):
        assert all(line == line.rstrip() for line in table.splitlines()), repr(table)
    assert ["run_state", "Initiated"] in [line.split() for line in outputs[1].splitlines()]
    assert "why [bold]not[/bold]" in env.lookup(run_id).run_state_reason


def test_colour_on_a_terminal(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_id,) = env.trigger("order-1")
    for argv in (["runs", "show", env.target(), run_id], ["runs", "pause", env.target(), run_id]):
        screen = Terminal()
        monkeypatch.setattr(sys, "stdout", screen)
        assert main(argv) == 0
        assert "\x1b[" in screen.getvalue()


def test_top_counts_every_run_through_the_store_beyond_max_runs(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    # The SQLite store counts runs (RunCounter): --max-runs bounds only the runs read for the
    # rates, not the count
    env.trigger("order-1", "order-2", "order-3")
    code, out, err = cli(
        capsys, "top", env.target(), "--once", "--interval", "0.1", "--max-runs", "1"
    )
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["runs:", "3"], lines[1]
    assert "of the newest runs only" in lines[2]


def test_top_once_prints_one_frame(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.trigger("order-1", "order-2")
    code, out, err = cli(capsys, "top", env.target(), "--once", "--interval", "0.2")
    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[0].startswith("statestream top  workflow 'orders'")
    assert lines[1].startswith("runs: 2")
    assert lines[2].startswith("transitions: ")
    assert "/s" in lines[2]
    header = next(line for line in lines if line.startswith("PROCESS"))
    assert header.split() == [
        "PROCESS",
        "ROLE",
        "STATE",
        "LAG",
        "ERRORS",
        "PARKED",
        "LAST",
        "ERROR",
    ]
    names = [line.split()[0] for line in lines[lines.index(header) + 1 :] if line.strip()]
    assert names == list(env.mod.orders.states())
    assert all(
        line.split()[2] in ("RUNNING", "IDLE", "LAGGING", "ERROR", "SHUTDOWN", "UNKNOWN")
        for line in lines[lines.index(header) + 1 :]
        if line.strip()
    )
    assert "\x1b" not in out


def test_without_the_cli_extra_a_one_line_install_hint(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['typer'] = None; sys.modules['rich'] = None\n"
        "from statestream.cli import main\n"
        "sys.exit(main(['runs', 'list', 'mod:wf']))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=environ,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'statestream[cli]'" in lines[0]

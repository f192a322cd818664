"""Every option the command line parses reaches its command.

Built from the parser itself: each subcommand's every argument is given a value of its own, the
commands' entry points are replaced by recorders, and the value must arrive in the call (a flag:
the call or what the command prints must change). An option added to the parser and dropped on
the way, as `run --address` once was, fails here without anyone writing a test for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from autotuner import cli
from autotuner.api import RunOutcome
from autotuner.result import TrialResult

# What the commands call, with a value each returns that lets the command finish.
ENTRY_POINTS: dict[tuple[str, str], Any] = {
    ("autotuner.api", "run"): RunOutcome("t", "", None, None, 0),
    ("autotuner.api", "export"): "exported",
    ("autotuner.api", "report"): Path("report.html"),
    ("autotuner.api", "bench"): ({"batch_size": 1}, TrialResult.failure("error", "recorded")),
    ("autotuner.api", "quantize"): (Path("model.onnx"), {"sha256": "0" * 64}),
    ("autotuner.api", "verify"): SimpleNamespace(to_dict=lambda: {}, lines=lambda: ["verdict"], exit_code=0),
    ("autotuner.api", "studies"): 0,
    ("autotuner.api", "show"): 0,
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _cases() -> Iterator[tuple[str, str]]:
    for name, sp in _subcommands().items():
        for action in sp._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, action.dest


def _action(command: str, dest: str) -> argparse.Action:
    return next(a for a in _subcommands()[command]._actions if a.dest == dest)


def _words(action: argparse.Action, value: str) -> list[str]:
    return [value] if not action.option_strings else [action.option_strings[-1], value]


def _base_argv(command: str, skip: str) -> list[str]:
    """The command with its required arguments, each given a value of its own."""
    argv = [command]
    for a in _subcommands()[command]._actions:
        needed = a.required or not a.option_strings
        if a.dest != skip and needed and not isinstance(a, argparse._HelpAction):
            argv += _words(a, f"base-{a.dest}")
    return argv


def _sentinel(action: argparse.Action) -> tuple[str, Any]:
    """A command-line word for the action and the value it must arrive as."""
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return str(choice), choice
    if action.type is int:
        return "7919", 7919
    if action.type is float:
        return "0.4243", 0.4243
    if isinstance(action, argparse._AppendAction):  # KEY=VALUE items: the key arrives
        return "sentinelkey=1", "sentinelkey"
    return f"sentinel-{action.dest}", f"sentinel-{action.dest}"


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _flatten(v)
    elif isinstance(value, list | tuple | set):
        for v in value:
            yield from _flatten(v)
    elif isinstance(value, Path):
        yield str(value)
    else:
        yield value


class _Recorder:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        import importlib

        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        for (module, name), returned in ENTRY_POINTS.items():
            monkeypatch.setattr(importlib.import_module(module), name, self._stub(name, returned, fail))

    def _stub(self, name: str, returned: Any, fail: bool) -> Any:
        def stub(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if fail:
                raise RuntimeError("recorded")
            return returned

        return stub


def _observe(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple:
    """What the command did with argv: its calls and output, and whether an error in the command
    escapes (as --debug asks)."""
    rec = _Recorder(monkeypatch)
    code = cli.main(argv)
    printed = capsys.readouterr().out
    with monkeypatch.context() as m:
        _Recorder(m, fail=True)
        try:
            cli.main(argv)
            escaped = False
        except RuntimeError:
            escaped = True
    capsys.readouterr()
    return rec.calls, code, printed, escaped


@pytest.mark.parametrize(("command", "dest"), list(_cases()))
def test_every_option_reaches_its_command(
    command: str,
    dest: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    action = _action(command, dest)
    base = _base_argv(command, skip=dest)
    if action.nargs == 0:  # a flag: it must change the call or what the command prints
        without = _observe(base, monkeypatch, capsys)
        with_flag = _observe([*base, action.option_strings[-1]], monkeypatch, capsys)
        assert with_flag != without, f"{command} {action.option_strings[-1]} changes nothing"
        return
    word, arrives = _sentinel(action)
    calls, *_ = _observe([*base, *_words(action, word)], monkeypatch, capsys)
    assert calls, f"{command} called none of the recorded entry points"
    seen = list(_flatten([(args, kwargs) for _, args, kwargs in calls]))
    name = "/".join(action.option_strings) or dest
    assert arrives in seen, f"{command} {name}={word!r} never arrived: {calls}"


def test_the_cases_cover_run_address() -> None:
    assert ("run", "address") in set(_cases())

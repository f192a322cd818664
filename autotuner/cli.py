"""`autotune`: run, bench, quantize, export, report, studies, show, verify.

One class per command, listed in COMMANDS: its help line, its arguments and what it does with
them, through `autotuner.api` only. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import yaml

from autotuner._version import __version__
from autotuner.errors import AutotuneError, UsageError
from autotuner.progress import Progress
from autotuner.report.formats import EXPORT_FORMATS


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line and exit status 2 (argparse prints its usage block first)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        command = self.prog.removeprefix("autotune").strip()
        where = f"{command}: " if command else ""
        print(f"autotune: error: {where}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _api() -> Any:
    from autotuner import api  # noqa: PLC0415 (heavy: numpy, optuna, sqlalchemy)

    return api


class Command:
    """One subcommand: `name` and `help` for the parser, `arguments` adds its options (every
    command also takes --debug), `run` carries them out and returns the exit status."""

    name: ClassVar[str]
    help: ClassVar[str]

    def arguments(self, p: argparse.ArgumentParser) -> None:
        """Add this command's arguments."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class Run(Command):
    name = "run"
    help = "search a spec's space and pick the best config"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("spec", help="SPEC.yaml")
        p.add_argument("--trials", type=int, help="budget of trials (default: the spec's budget.trials)")
        p.add_argument("--study", help="study name (default: the spec's study or name)")
        p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///studies/STUDY.db)")
        p.add_argument("--executor", default="local", help="where trials run: local (default) or ray")
        p.add_argument(
            "--address",
            help="with --executor ray: an existing cluster, HEAD:PORT of `ray start --head` (or 'auto', "
            "the one started on this machine; or ray://HOST:PORT)",
        )

    def run(self, args: argparse.Namespace) -> int:
        out = _api().run(
            args.spec,
            trials=args.trials,
            study=args.study,
            storage=args.storage,
            executor=args.executor,
            address=args.address,
        )
        return 0 if out.pick is not None else 1


class Export(Command):
    name = "export"
    help = "write the best-config YAML of a study again"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("study")
        p.add_argument("--storage")
        p.add_argument("-o", "--output", help="path (default: reports/STUDY.best.yaml)")
        p.add_argument(
            "--format",
            dest="fmt",
            default="yaml",
            choices=list(EXPORT_FORMATS),
            help="; ".join(f"{k}: {f.help}" for k, f in EXPORT_FORMATS.items()),
        )
        p.add_argument(
            "--target-rps", type=float, help="k8s: replicas to serve this rate (needs max_rate_rps)"
        )
        p.add_argument("--image", help="k8s: the container image (required for a torch config)")
        p.add_argument(
            "--pick", dest="rule", help="rule 'max:METRIC' or 'min:METRIC' (default: first objective)"
        )

    def run(self, args: argparse.Namespace) -> int:
        out = _api().export(
            args.study,
            storage=args.storage,
            output=args.output,
            rule=args.rule,
            fmt=args.fmt,
            target_rps=args.target_rps,
            image=args.image,
        )
        printed = EXPORT_FORMATS[args.fmt].default is None  # the text itself, not a path written
        print(out if printed else f"best config: {out}")
        return 0


class Report(Command):
    name = "report"
    help = "write the offline HTML report (or the trial table)"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("studies", nargs="+", metavar="STUDY", help="one study, or several to compare")
        p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///studies/STUDY.db each)")
        p.add_argument("-o", "--output", help="path (default: reports/STUDY.html, .csv, .json or .parquet)")
        p.add_argument("--format", dest="fmt", default="html", choices=["html", "csv", "json", "parquet"])

    def run(self, args: argparse.Namespace) -> int:
        path = _api().report(args.studies, storage=args.storage, output=args.output, fmt=args.fmt)
        print(f"report: {path}")
        return 0


def _add_sets(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help)


class Bench(Command):
    name = "bench"
    help = "measure one config, no search; prints its metrics"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("spec")
        _add_sets(p, "a parameter value (repeatable); unset ones take their first value")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace) -> int:
        full, result = _api().bench(args.spec, _sets(args.sets))
        if args.json:
            print(json.dumps({"params": full, **result.to_dict()}, indent=2))
        else:
            print("params: " + " ".join(f"{k}={v}" for k, v in full.items()))
            if not result.ok:
                print(f"FAIL {result.failure_class}: {result.failure_message}")
            for k, v in result.metrics.items():
                print(f"  {k:<24} {v:.6g}")
        return 0 if result.ok else 1


class Quantize(Command):
    name = "quantize"
    help = "write a config's ONNX model (static int8: calibrated on the data)"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("spec")
        _add_sets(p, "a parameter value (repeatable), as bench takes them")
        p.add_argument("-o", "--output", required=True, help="the .onnx file to write")

    def run(self, args: argparse.Namespace) -> int:
        path, record = _api().quantize(args.spec, _sets(args.sets), args.output)
        print(f"model: {path} (sha256 {record['sha256']})")
        for k, v in record.items():
            if k != "sha256":
                print(f"  {k}: {v}")
        return 0


class Studies(Command):
    name = "studies"
    help = "list the stored studies"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", help="SQLAlchemy URL (default: every studies/*.db)")

    def run(self, args: argparse.Namespace) -> int:
        return int(_api().studies(args.storage))


class Show(Command):
    name = "show"
    help = "one study at a glance"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("study")
        p.add_argument("--storage")

    def run(self, args: argparse.Namespace) -> int:
        return int(_api().show(args.study, args.storage))


class Verify(Command):
    name = "verify"
    help = "A/B a best config against another (or the baseline) before rollout"

    def arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("best", metavar="BEST.yaml", help="a best-config YAML (autotune run / export)")
        p.add_argument("--against", metavar="OTHER.yaml", help="another best-config YAML to compare with")
        p.add_argument("--baseline", action="store_true", help="compare with the spec's baseline config")
        p.add_argument("--spec", metavar="SPEC.yaml", help="measure with this spec (default: the study's)")
        p.add_argument("--storage", help="where BEST.yaml's study lives (default: its recorded storage)")
        p.add_argument("--rounds", type=int, help="interleaved rounds (default: pick.rounds, at least 3)")
        p.add_argument(
            "--require-gain",
            dest="require_gain",
            type=float,
            metavar="PCT",
            help="exit 0 only when the first objective is better by at least PCT %% with confidence",
        )
        p.add_argument(
            "--json", action="store_true", help="print one JSON object (verdict and exit code in it)"
        )

    def run(self, args: argparse.Namespace) -> int:
        out = _api().verify(
            args.best,
            against=args.against,
            baseline=args.baseline,
            spec=args.spec,
            storage=args.storage,
            rounds=args.rounds,
            require_gain=args.require_gain,
            progress=Progress(out=sys.stderr) if args.json else Progress(),
        )
        print(json.dumps(out.to_dict(), indent=2) if args.json else "\n".join(out.lines()))
        return out.exit_code


# The commands, in the order `autotune --help` lists them. A new command: a Command subclass here.
COMMANDS: dict[str, Command] = {
    c.name: c for c in (Run(), Export(), Report(), Bench(), Quantize(), Studies(), Show(), Verify())
}


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="autotune", description="Find the best deployment configuration of a model by measuring it."
    )
    p.add_argument("--version", action="version", version=f"autotune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        sp = sub.add_parser(command.name, help=command.help)
        command.arguments(sp)
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except AutotuneError as e:
        if args.debug:
            raise
        print(f"autotune: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("autotune: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line unless --debug
        if args.debug:
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"autotune: internal error: {type(e).__name__}: {first} (rerun with --debug)", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    command = COMMANDS.get(args.command)
    if command is None:  # pragma: no cover - argparse refuses it first
        raise UsageError(f"unknown command {args.command}")
    return command.run(args)


def _sets(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as a config (values read as YAML scalars)."""

    config: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            config[key] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            config[key] = raw
    return config


if __name__ == "__main__":
    sys.exit(main())

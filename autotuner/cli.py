"""`autotune`: run, bench, quantize, export, studies, show, verify.

Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from autotuner._version import __version__
from autotuner.errors import AutotuneError, UsageError


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line and exit status 2 (argparse prints its usage block first)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        command = self.prog.removeprefix("autotune").strip()
        where = f"{command}: " if command else ""
        print(f"autotune: error: {where}{message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="autotune", description=("Find the best deployment configuration of a model by measuring it.")
    )
    p.add_argument("--version", action="version", version=f"autotune {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    r = sub.add_parser("run", help="search a spec's space and pick the best config")
    r.add_argument("spec", help="SPEC.yaml")
    r.add_argument("--trials", type=int, help="budget of trials (default: the spec's budget.trials)")
    r.add_argument("--study", help="study name (default: the spec's study or name)")
    r.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///studies/STUDY.db)")
    r.add_argument("--executor", default="local", help="where trials run: local (default) or ray")
    r.add_argument(
        "--address",
        help="with --executor ray: an existing cluster, HEAD:PORT of `ray start --head` (or 'auto', "
        "the one started on this machine; or ray://HOST:PORT)",
    )
    common(r)

    e = sub.add_parser("export", help="write the best-config YAML of a study again")
    e.add_argument("study")
    e.add_argument("--storage")
    e.add_argument("-o", "--output", help="path (default: reports/STUDY.best.yaml)")
    e.add_argument(
        "--format",
        dest="fmt",
        default="yaml",
        choices=["yaml", "vllm", "triton", "ort", "k8s"],
        help="yaml: the best-config file; vllm: print the `vllm serve` command; triton: a Triton "
        "model repository entry in -o DIR; ort: ONNX Runtime session settings as JSON; "
        "k8s: a Kubernetes Deployment and Service",
    )
    e.add_argument("--target-rps", type=float, help="k8s: replicas to serve this rate (needs max_rate_rps)")
    e.add_argument("--image", help="k8s: the container image (required for a torch config)")
    e.add_argument("--pick", dest="rule", help="rule 'max:METRIC' or 'min:METRIC' (default: first objective)")
    common(e)

    rp = sub.add_parser("report", help="write the offline HTML report (or the trial table)")
    rp.add_argument("studies", nargs="+", metavar="STUDY", help="one study, or several to compare")
    rp.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///studies/STUDY.db each)")
    rp.add_argument("-o", "--output", help="path (default: reports/STUDY.html, .csv, .json or .parquet)")
    rp.add_argument("--format", dest="fmt", default="html", choices=["html", "csv", "json", "parquet"])
    common(rp)

    b = sub.add_parser("bench", help="measure one config, no search; prints its metrics")
    b.add_argument("spec")
    b.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter value (repeatable); unset ones take their first value",
    )
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    common(b)

    q = sub.add_parser("quantize", help="write a config's ONNX model (static int8: calibrated on the data)")
    q.add_argument("spec")
    q.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter value (repeatable), as bench takes them")  # fmt: skip
    q.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    common(q)

    s = sub.add_parser("studies", help="list the stored studies")
    s.add_argument("--storage", help="SQLAlchemy URL (default: every studies/*.db)")
    common(s)

    sh = sub.add_parser("show", help="one study at a glance")
    sh.add_argument("study")
    sh.add_argument("--storage")
    common(sh)

    v = sub.add_parser("verify", help="A/B a best config against another (or the baseline) before rollout")
    v.add_argument("best", metavar="BEST.yaml", help="a best-config YAML (autotune run / export)")
    v.add_argument("--against", metavar="OTHER.yaml", help="another best-config YAML to compare with")
    v.add_argument("--baseline", action="store_true", help="compare with the spec's baseline config")
    v.add_argument("--spec", metavar="SPEC.yaml", help="measure with this spec (default: the study's)")
    v.add_argument("--storage", help="where BEST.yaml's study lives (default: its recorded storage)")
    v.add_argument("--rounds", type=int, help="interleaved rounds (default: pick.rounds, at least 3)")
    v.add_argument(
        "--require-gain",
        dest="require_gain",
        type=float,
        metavar="PCT",
        help="exit 0 only when the first objective is better by at least PCT %% with confidence",
    )
    v.add_argument("--json", action="store_true", help="print one JSON object (verdict and exit code in it)")
    common(v)
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
    if args.command == "run":
        from autotuner.api import run

        out = run(
            args.spec,
            trials=args.trials,
            study=args.study,
            storage=args.storage,
            executor=args.executor,
            address=args.address,
        )
        return 0 if out.pick is not None else 1
    if args.command == "export":
        from autotuner.api import export

        out = export(
            args.study,
            storage=args.storage,
            output=args.output,
            rule=args.rule,
            fmt=args.fmt,
            target_rps=args.target_rps,
            image=args.image,
        )
        print(out if args.fmt == "vllm" else f"best config: {out}")
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "quantize":
        from autotuner.api import quantize

        path, record = quantize(args.spec, _sets(args.sets), args.output)
        print(f"model: {path} (sha256 {record['sha256']})")
        for k, v in record.items():
            if k != "sha256":
                print(f"  {k}: {v}")
        return 0
    if args.command == "report":
        from autotuner.api import report

        path = report(args.studies, storage=args.storage, output=args.output, fmt=args.fmt)
        print(f"report: {path}")
        return 0
    if args.command == "studies":
        from autotuner.report.show import list_studies

        return list_studies(args.storage)
    if args.command == "show":
        from autotuner.report.show import show_study

        return show_study(args.study, args.storage)
    if args.command == "verify":
        return _verify(args)
    raise UsageError(f"unknown command {args.command}")  # pragma: no cover


def _sets(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE items as a config (values read as YAML scalars)."""
    import yaml

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


def _bench(args: argparse.Namespace) -> int:
    import json

    from autotuner.api import bench

    full, result = bench(args.spec, _sets(args.sets))
    if args.json:
        print(json.dumps({"params": full, **result.to_dict()}, indent=2))
    else:
        print("params: " + " ".join(f"{k}={v}" for k, v in full.items()))
        if not result.ok:
            print(f"FAIL {result.failure_class}: {result.failure_message}")
        for k, v in result.metrics.items():
            print(f"  {k:<24} {v:.6g}")
    return 0 if result.ok else 1


def _verify(args: argparse.Namespace) -> int:
    import json

    from autotuner.api import verify
    from autotuner.progress import Progress

    out = verify(
        args.best,
        against=args.against,
        baseline=args.baseline,
        spec=args.spec,
        storage=args.storage,
        rounds=args.rounds,
        require_gain=args.require_gain,
        progress=Progress(out=sys.stderr) if args.json else Progress(),
    )
    if args.json:
        print(json.dumps(out.to_dict(), indent=2))
    else:
        print("\n".join(out.lines()))
    return out.exit_code


if __name__ == "__main__":
    sys.exit(main())

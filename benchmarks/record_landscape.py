"""Measure every config of a spec's space in R interleaved rounds: a landscape with real noise.

    python benchmarks/record_landscape.py SPEC --rounds R -o FILE.jsonl [--append] [--short-s S]

Each round measures every config once, in a fresh worker process each, in an order shuffled per
round (seeded), exactly as a search trial would (the spec's measurement settings, accuracy
included). One JSON line per measurement:

    {"config": {...}, "round": r, "metrics": {...}, "measure_s": s, "setup_s": s}

and for a failure {"config", "round", "failure_class", "message"}. The machine's capabilities
(probe) go to FILE.caps.json beside it, so that a replay refuses what this machine refused.
Int ranges on a log scale are walked at powers of two (and their ends); other ranges at every
step. Configs a runner refuses before launch are written once per round without launching
anything. A block taken under foreign load (other processes on the trial's cores, past the spec's
measurement.max_foreign_load) is written marked "under_load" and measured again, up to three
times (--load-retries), so that the ground truth rests on clean blocks. The file is appended
line by line, so an interrupted recording keeps what it measured; --resume skips what is
already there.

--append adds R more rounds to an existing file, numbered on from its last round (old rounds
kept, and the caps file of the first recording; each line names its "cpu_model"), so that a
landscape can grow enough rounds to hold some out as truth (search_quality.py --truth-rounds).
Every line carries "load_average" (the 1-minute load when its block ended), and each round's
start and end load is printed.

--short-s S records short blocks instead: each a race-style block of S seconds (a fraction of
min_time_s, no accuracy check), tagged "fidelity": "short" and "block_s": S, with their own round
numbers. The replay answers a short request with these only (autotuner/execution/replay.py).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _machine import load_average  # noqa: E402

from autotuner.execution.capabilities import cpu_model  # noqa: E402
from autotuner.spec.schema import Spec  # noqa: E402


def landscape_spec(spec: Spec) -> Spec:
    """The spec with every range made a finite list: log int ranges at powers of two."""
    from autotuner.api import spec_from_dict
    from autotuner.spec.loading import spec_to_dict

    d = spec_to_dict(spec)
    for name, p in spec.space.items():
        if p.values() is not None or p.type != "int":
            continue
        lo, hi = int(p.low), int(p.high)  # type: ignore[arg-type]
        vals = sorted({lo, hi, *(2**k for k in range(0, 31) if lo <= 2**k <= hi)})
        entry: dict[str, Any] = {"choices": vals}
        if p.when:
            entry["when"] = p.when
        d["space"][name] = entry
    return spec_from_dict(d, "landscape")


LOAD_RETRIES = 3
CPU = cpu_model()


def _record(config: dict[str, Any], r: int, res: Any, short_s: float | None) -> dict[str, Any]:
    m = {k: v for k, v in res.metrics.items() if v == v}
    rec = {
        "config": config,
        "round": r,
        "metrics": m,
        "measure_s": m.get("measure_s"),
        "setup_s": m.get("setup_s"),
        "load_average": _load1(),
        "cpu_model": CPU,
    }
    if short_s is not None:
        rec |= {"fidelity": "short", "block_s": short_s}
    return rec


def _load1() -> float | None:
    try:
        return float(load_average().split()[0])
    except ValueError:
        return None


def _first_round(out: Path, short: bool) -> int:
    """The round after the file's last one of the same fidelity (0 for a new file)."""
    last = -1
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if (rec.get("fidelity") == "short") == short:
                    last = max(last, int(rec["round"]))
    return last + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="skip (config, round) pairs already in the file")
    ap.add_argument("--append", action="store_true", help="add --rounds rounds after the file's last")
    ap.add_argument(
        "--load-retries", type=int, default=LOAD_RETRIES, help="re-measure a block under foreign load"
    )
    ap.add_argument("--short-s", type=float, default=None, help="record short blocks of this many seconds")
    args = ap.parse_args()
    if args.short_s is not None and not 0 < args.short_s:
        print(f"--short-s: {args.short_s} is not a positive number of seconds", file=sys.stderr)
        raise SystemExit(2)
    if args.append and args.resume:
        print("--append and --resume: choose one", file=sys.stderr)
        raise SystemExit(2)

    from autotuner.api import load_spec, make_executor, precheck, probe
    from autotuner.execution.base import TrialRequest
    from autotuner.measure.load import over_limit
    from autotuner.search.estimates import config_key
    from autotuner.search.space import all_configs

    spec = landscape_spec(load_spec(args.spec))
    configs = all_configs(spec)
    assert configs is not None
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    done: set[tuple[str, int]] = set()
    if args.resume and out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            if not rec.get("under_load") and (rec.get("fidelity") == "short") == (args.short_s is not None):
                done.add((config_key(rec["config"]), rec["round"]))
    caps = probe()
    # The machine's facts travel with the landscape: a replay refuses what this machine refused.
    # Appending keeps the first recording's file; every line names the CPU it was measured on.
    caps_file = out.with_suffix(".caps.json")
    if not (args.append and caps_file.exists()):
        caps_file.write_text(json.dumps(caps, indent=1) + "\n")
    elif json.loads(caps_file.read_text()).get("cpu_model") != caps.get("cpu_model"):
        print(f"note: {caps_file} was recorded on another CPU; these rounds are on {caps.get('cpu_model')}")
    ex = make_executor("local", spec, caps)
    first = _first_round(out, args.short_s is not None) if args.append else 0
    rng = random.Random(args.seed + first)
    meta = {} if args.short_s is None else {"block_s": args.short_s}
    print(
        f"{len(configs)} configs x {args.rounds} rounds from round {first}; load average {load_average()}",
        flush=True,
    )
    started = time.monotonic()
    try:
        with out.open("a") as f:
            for r in range(first, first + args.rounds):
                order = list(configs)
                rng.shuffle(order)
                round_started, load0 = time.monotonic(), load_average()
                for i, config in enumerate(order):
                    if (config_key(config), r) in done:
                        continue
                    known = precheck(spec, config, caps)
                    res = (
                        known
                        if known is not None
                        else ex.submit(TrialRequest(i, config, dict(meta))).result()
                    )
                    tries = 0
                    limit = spec.measurement.max_foreign_load
                    while res.ok and over_limit(res.metrics, limit) and tries < args.load_retries:
                        # Kept (the replay draws it: load is part of real noise), marked, and
                        # measured again so that the ground truth has a clean block.
                        f.write(
                            json.dumps(_record(config, r, res, args.short_s) | {"under_load": True}) + "\n"
                        )
                        f.flush()
                        res = ex.submit(TrialRequest(i, config, dict(meta))).result()
                        tries += 1
                    if res.ok:
                        rec = _record(config, r, res, args.short_s)
                    else:
                        rec = {
                            "config": config,
                            "round": r,
                            "failure_class": res.failure_class,
                            "message": res.failure_message,
                            "load_average": _load1(),
                        }
                        if args.short_s is not None:
                            rec |= {"fidelity": "short", "block_s": args.short_s}
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                print(
                    f"round {r} done in {time.monotonic() - round_started:.0f} s "
                    f"({time.monotonic() - started:.0f} s in all); load average {load0} at its start, "
                    f"{load_average()} at its end",
                    flush=True,
                )
    finally:
        ex.close()


if __name__ == "__main__":
    main()

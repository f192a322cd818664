"""`autotune export STUDY --format k8s`: a Deployment and a Service for the chosen config.

Built from the best-config record (report/export.py `best_config`), so the manifest carries the
same choice, interval and machine as the YAML:

- vllm: the vLLM OpenAI server image with the tuned engine arguments and environment;
- onnxruntime: Triton Inference Server with the exported model repository (`--format triton`,
  written beside the manifest) mounted from a PersistentVolumeClaim;
- torch: no published server runs an eager or torch.compile'd nn.Module as it was measured
  (Triton's PyTorch backend runs TorchScript, TorchServe is archived), so the container is the
  user's own serving image (`--image`, required), with the tuned settings as environment.

Requests and limits are what the trial held: its cores (threads), one GPU where it ran on one,
and its measured memory with HEADROOM. Requests equal limits (Guaranteed QoS: the CPU manager can
pin whole cores, as the trial's cores were pinned). Probes sit on the server's health endpoint,
their delays taken from the measured start-up. With `--target-rps` and a measured `max_rate_rps`,
replicas = ceil(target / the interval's low end of max_rate_rps).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autotuner.errors import UsageError
from autotuner.files import atomic_write_text
from autotuner.report.export import best_config, vllm_serve
from autotuner.report.triton import write_triton
from autotuner.search.estimates import config_key, pool, relative_spread
from autotuner.study import records as rec

HEADROOM = 1.25  # memory request = measured peak x 1.25, rounded up to 64 MiB
MIN_MEMORY_MIB = 256
PORT = 8000
# The images named by each server's own documentation; --image replaces them.
VLLM_GPU_IMAGE = "vllm/vllm-openai"  # tag: the vLLM version the study measured
VLLM_CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo"  # vLLM docs: CPU, pre-built images
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
MODEL_REPOSITORY = "/models"


@dataclass(frozen=True)
class Server:
    """The container of one kind of server: what it runs and where it says it is healthy."""

    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    ready_path: str
    live_path: str
    ports: list[tuple[str, int]]
    note: list[str]  # why this server, what the user must provide
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def dns_name(text: str) -> str:
    """A DNS-1123 label (lowercase alphanumerics and '-', at most 63, starting with a letter)."""
    s = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not s or not s[0].isalpha():
        s = "at-" + s
    return s[:63].rstrip("-")


def _metric(best: dict[str, Any], name: str) -> dict[str, Any] | None:
    m = (best.get("metrics") or {}).get(name)
    return m if isinstance(m, dict) and isinstance(m.get("mean"), int | float) else None


def memory_mib(best: dict[str, Any]) -> tuple[int, str]:
    """The memory request (MiB) and how it was reached: the host RSS the trial measured (the
    interval's high end where there is one), times HEADROOM."""
    for name in ("host_rss_mb", "peak_memory_mb"):
        m = _metric(best, name)
        if m:
            peak = float(m.get("ci_high", m["mean"]))
            mib = max(MIN_MEMORY_MIB, int(math.ceil(peak * HEADROOM / 64) * 64))
            return mib, f"{name} {peak:.0f} MiB measured x {HEADROOM} headroom -> {mib} Mi"
    return 4096, "no memory was measured: 4096 Mi assumed, set it from your own measurement"


def cpu_cores(best: dict[str, Any]) -> int:
    params, env = best.get("params") or {}, best.get("environment") or {}
    threads = params.get("threads")
    if isinstance(threads, int) and threads > 0:
        return threads
    return int(env.get("cpu_cores") or 1)


def uses_gpu(best: dict[str, Any]) -> bool:
    params, deploy = best.get("params") or {}, best.get("deploy") or {}
    backend = str(params.get("backend", ""))
    if backend.startswith("onnxruntime-"):
        return backend != "onnxruntime-cpu"
    device = params.get("device") or deploy.get("device") or (deploy.get("torch") or {}).get("device")
    if device is None and isinstance(deploy.get("vllm"), dict):
        device = "cuda" if (best.get("environment") or {}).get("gpus") else "cpu"
    return str(device).startswith("cuda")


def startup_s(best: dict[str, Any]) -> tuple[float, str]:
    """The measured start-up: the server's cold start (vllm startup_s), else the runner's setup."""
    for name in ("startup_s", "setup_s"):
        m = _metric(best, name)
        if m:
            v = float(m.get("ci_high", m["mean"]))
            return v, f"{name} {v:.1f} s measured"
    return 30.0, "no start-up was measured: 30 s assumed"


def replicas(best: dict[str, Any], target_rps: float | None) -> tuple[int, str]:
    if target_rps is None:
        return 1, "1 replica (no --target-rps given)"
    if target_rps <= 0:
        raise UsageError(f"--target-rps {target_rps}: give a positive request rate")
    m = _metric(best, "max_rate_rps")
    if m is None:
        raise UsageError(
            "--target-rps needs a study that measured max_rate_rps (a serving spec with serving.max_rate)"
        )
    per = float(m.get("ci_low", m["mean"]))
    if per <= 0:
        raise UsageError("--target-rps: the chosen config met its SLO at no measured rate (max_rate_rps 0)")
    n = max(1, math.ceil(target_rps / per))
    return n, f"{n} replicas = ceil({target_rps:g} rps / {per:.4g} rps per replica, max_rate_rps's low end)"


def vllm_server(spec: Any, best: dict[str, Any], image: str | None) -> Server:
    gpu = uses_gpu(best)
    version = ((best.get("environment") or {}).get("libraries") or {}).get("vllm")
    tag = f"v{version}" if version else "latest"
    settings = (best.get("deploy") or {}).get("vllm") or {}
    env = {str(k): str(v) for k, v in (settings.get("env") or {}).items()}

    words = shlex.split(vllm_serve(spec, best["params"]))
    while words and "=" in words[0] and not words[0].startswith("-"):  # the line's env prefix
        k, v = words.pop(0).split("=", 1)
        env.setdefault(k, v)
    if words and words[0] == "python":  # the images have python3 (and not always python)
        words[0] = "python3"
    args = [*words, "--host", "0.0.0.0", "--port", str(PORT)]
    note = [
        "server: vLLM's OpenAI server, the tuned engine arguments and environment as measured",
        f"image: {'vLLM GPU image' if gpu else 'vLLM CPU image'}, tagged with the measured vLLM version "
        "(pass --image for your own)",
    ]
    if spec.model.external is None:
        note.append("the model folder named in the command must be in the image or mounted at that path")
    return Server(
        image=image or f"{VLLM_GPU_IMAGE if gpu else VLLM_CPU_IMAGE}:{tag}",
        command=args[:1],
        args=args[1:],
        env=env,
        ready_path="/health",
        live_path="/health",
        ports=[("http", PORT)],
        note=note,
        volumes=[],
        mounts=[],
    )


def triton_server(name: str, best: dict[str, Any], image: str | None, repository: str) -> Server:
    claim = dns_name(f"{name}-model-repository")
    return Server(
        image=image or TRITON_IMAGE,
        command=["tritonserver"],
        args=[f"--model-repository={MODEL_REPOSITORY}", f"--http-port={PORT}", "--grpc-port=8001"],
        env={},
        ready_path="/v2/health/ready",
        live_path="/v2/health/live",
        ports=[("http", PORT), ("grpc", 8001), ("metrics", 8002)],
        note=[
            "server: Triton Inference Server (onnxruntime backend) with the exported model repository",
            f"the repository ({repository}, written beside this file) goes into the PersistentVolumeClaim "
            f"{claim}, mounted read-only at {MODEL_REPOSITORY}",
            f"image: NVIDIA's NGC Triton image {TRITON_IMAGE} (pass --image to pin the release whose "
            "onnxruntime matches the measured one)",
        ],
        volumes=[
            {"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        ],
        mounts=[{"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True}],
    )


def torch_server(best: dict[str, Any], image: str | None) -> Server:
    torch = (best.get("deploy") or {}).get("torch") or best.get("deploy") or {}
    env = {
        "OMP_NUM_THREADS": str(cpu_cores(best)),
        "AUTOTUNE_BATCH_SIZE": str(best["params"].get("batch_size", 1)),
    }
    for k in ("device", "dtype"):
        if isinstance(torch.get(k), str):
            env[f"AUTOTUNE_{k.upper()}"] = torch[k]
    if image is None:
        raise UsageError(
            "--format k8s for a torch config needs --image YOUR_SERVING_IMAGE: no published server runs "
            "an eager or torch.compile'd nn.Module as it was measured (Triton's PyTorch backend runs "
            "TorchScript; TorchServe is archived), so the container is your own server, given the tuned "
            "settings as environment; it must answer GET /health on port 8000"
        )
    return Server(
        image=image,
        command=[],
        args=[],
        env=env,
        ready_path="/health",
        live_path="/health",
        ports=[("http", PORT)],
        note=[
            "server: your own image (--image): no published server runs an eager or torch.compile'd "
            "nn.Module as measured (Triton's PyTorch backend runs TorchScript; TorchServe is archived)",
            "the tuned settings are in its environment (AUTOTUNE_*, OMP_NUM_THREADS); it must answer "
            "GET /health on port 8000",
        ],
        volumes=[],
        mounts=[],
    )


def server_for(spec: Any, best: dict[str, Any], image: str | None, repository: str) -> Server:
    """The server that serves the chosen config: vLLM, Triton (onnxruntime) or the user's image."""
    backend = str(best["params"].get("backend", ""))
    name = dns_name(best["provenance"]["study"])
    deploy = best.get("deploy") or {}
    if "vllm" in deploy or backend == "vllm":
        return vllm_server(spec, best, image)
    if backend.startswith("onnxruntime-"):
        return triton_server(name, best, image, repository)
    if backend.startswith("torch"):
        return torch_server(best, image)
    raise UsageError(
        f"--format k8s: no server for a {backend or 'command'} config "
        "(vllm, onnxruntime-* and torch-* have one)"
    )


def _probe(path: str, delay: int, period: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "failureThreshold": 3,
    }


def manifests(
    spec: Any,
    best: dict[str, Any],
    *,
    target_rps: float | None = None,
    image: str | None = None,
    repository: str = "",
) -> tuple[list[dict[str, Any]], list[str]]:
    """The Deployment and the Service, and the comment lines of evidence that head them."""
    name = dns_name(best["provenance"]["study"])
    server = server_for(spec, best, image, repository)
    mem, mem_why = memory_mib(best)
    cores = cpu_cores(best)
    start, start_why = startup_s(best)
    n, n_why = replicas(best, target_rps)
    limits: dict[str, str] = {"cpu": str(cores), "memory": f"{mem}Mi"}
    if uses_gpu(best):
        limits["nvidia.com/gpu"] = "1"
    ready_delay = max(1, math.ceil(start))
    live_delay = math.ceil(2 * start) + 10
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "autotune"}
    container: dict[str, Any] = {
        "name": "server",
        "image": server.image,
        **({"command": server.command} if server.command else {}),
        **({"args": server.args} if server.args else {}),
        **({"env": [{"name": k, "value": v} for k, v in sorted(server.env.items())]} if server.env else {}),
        "ports": [{"name": p, "containerPort": port} for p, port in server.ports],
        "resources": {"requests": dict(limits), "limits": dict(limits)},
        "readinessProbe": _probe(server.ready_path, ready_delay, 5),
        "livenessProbe": _probe(server.live_path, live_delay, 10),
        **({"volumeMounts": server.mounts} if server.mounts else {}),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": n,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": [container],
                    **({"volumes": server.volumes} if server.volumes else {}),
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": p, "port": port, "targetPort": p} for p, port in server.ports],
        },
    }
    return [deployment, service], _evidence(
        best, server, [mem_why, f"cpu {cores} (the trial's cores)", start_why, n_why], ready_delay, live_delay
    )


def _evidence(best: dict[str, Any], server: Server, sizing: list[str], ready: int, live: int) -> list[str]:
    choice = best.get("choice") or {}
    prov = best.get("provenance") or {}
    env = best.get("environment") or {}
    lines = [
        f"autotune {best.get('autotune_version', '?')}: Kubernetes manifests for study {prov.get('study')}, "
        f"trial #{prov.get('trial')} (measured {prov.get('measured_at')})",
        "params: " + " ".join(f"{k}={v}" for k, v in (best.get("params") or {}).items()),
        f"chosen by {choice.get('rule')}: {choice.get('reason')}",
    ]
    for m, e in (best.get("metrics") or {}).items():
        if "ci_low" in e:
            lines.append(
                f"  {m}: {e['mean']:.4g} [{e['ci_low']:.4g}, {e['ci_high']:.4g}] ({e['blocks']} blocks, "
                f"{int(float(e.get('confidence', 0.95)) * 100)}%)"
            )
        else:
            lines.append(f"  {m}: {e['mean']:.4g} ({e.get('blocks', 1)} block)")
    lines.append(
        f"machine: {env.get('cpu_model', '?')} x{env.get('cpu_cores', '?')}"
        + (f", GPUs: {', '.join(env['gpus'])}" if env.get("gpus") else ", no GPU")
    )
    lines += server.note
    lines += ["sizing (requests = limits: Guaranteed QoS):", *(f"  {s}" for s in sizing)]
    lines.append(
        f"probes: readiness after {ready} s (the start-up), liveness after {live} s (2 x start-up + 10)"
    )
    return lines


SIZING_METRICS = ("host_rss_mb", "peak_memory_mb", "startup_s", "setup_s", "max_rate_rps")


def sizing_metrics(study: Any, config: dict[str, Any], confidence: float) -> dict[str, dict[str, Any]]:
    """The chosen config's pooled estimates of what sizes a pod (memory, start-up, rate), as the
    best-config YAML writes its metrics (mean, and the interval where there are two blocks)."""

    estimates = pool(study.get_trials(deepcopy=False), rec.race_blocks(study))
    est = estimates.get(config_key(config))
    out: dict[str, dict[str, Any]] = {}
    if est is None:
        return out
    for m in SIZING_METRICS:
        iv = est.interval(m, confidence, relative_spread(estimates, m))
        n = len(est.values(m))
        if iv is not None and n >= 2:
            out[m] = {"mean": iv[0], "ci_low": iv[1], "ci_high": iv[2], "blocks": n, "confidence": confidence}
        elif (v := est.mean(m)) is not None:
            out[m] = {"mean": v, "blocks": max(1, n)}
    return out


def render(docs: list[dict[str, Any]], comment: list[str]) -> str:
    head = "".join(f"# {line}\n" for line in comment)
    return head + "---\n" + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def write_k8s(
    spec: Any,
    study: Any,
    pick: Any,
    path: Path,
    storage_url: str,
    *,
    target_rps: float | None = None,
    image: str | None = None,
) -> Path:
    """PATH (the manifests); for an onnxruntime config, the Triton repository beside it."""

    best = best_config(spec, study, pick, storage_url).to_dict()
    measured = pick.config or best["params"]
    best["metrics"] = {**sizing_metrics(study, measured, pick.confidence), **best["metrics"]}
    repository = ""
    if str(best["params"].get("backend", "")).startswith("onnxruntime-"):
        repo_dir = path.with_name(path.name.removesuffix(".yaml") + ".model_repository")
        write_triton(spec, study, pick, repo_dir)
        repository = repo_dir.name
    docs, comment = manifests(spec, best, target_rps=target_rps, image=image, repository=repository)
    return atomic_write_text(path, render(docs, comment))

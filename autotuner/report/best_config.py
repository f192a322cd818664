"""The best-config YAML's one owner: `BestConfig`, what `export` writes and `verify` reads.

Sections, in the order the file holds them: the chosen parameters, the deploy settings, the
data the accuracy was measured on and (static int8) how the model was quantized, the pooled
metrics with their intervals, the constraints with their margins, why this config was chosen
(the race and its candidates), the machine it was measured on, and its provenance (study,
storage, trial, spec fingerprint, model digest), with the command that measures it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotuner._version import __version__
from autotuner.errors import UsageError
from autotuner.files import atomic_write_text

# Sections a file must hold, as mappings, to be read as a best config.
REQUIRED = ("params", "provenance")
# The file's sections in order.
SECTIONS = (
    "autotune_version",
    "model",
    "params",
    "deploy",
    "data",
    "quantization",
    "metrics",
    "constraints",
    "choice",
    "environment",
    "provenance",
    "remeasure_command",
)
# Left out of the file where absent (None); the others are always written.
OPTIONAL = ("model", "data", "quantization", "remeasure_command")


@dataclass
class BestConfig:
    """One chosen config with its evidence, as production loads it."""

    params: dict[str, Any]
    provenance: dict[str, Any]
    deploy: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    choice: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] | None = None  # None: a file from before the model was recorded
    data: dict[str, Any] | None = None  # where the spec has a data section
    quantization: dict[str, Any] | None = None  # static int8 only
    remeasure_command: str | None = None
    autotune_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The file's mapping, its sections in order; optional ones left out when absent."""
        return {k: getattr(self, k) for k in SECTIONS if k not in OPTIONAL or getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BestConfig:
        """From a file's mapping (REQUIRED checked by the caller); unknown sections are ignored."""
        known = {k: data[k] for k in SECTIONS if k in data and data[k] is not None}
        return cls(**known)

    @classmethod
    def read(cls, path: str | Path) -> BestConfig:
        """A best-config YAML (written by `autotune run` or `export`), or UsageError (exit 2)."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{path}: is a directory, not a best-config YAML") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise UsageError(f"{path}: not a best-config YAML ({first})") from None
        missing = [k for k in REQUIRED if not isinstance(data, dict) or not isinstance(data.get(k), dict)]
        if missing:
            raise UsageError(
                f"{path}: not a best-config YAML (no {' or '.join(repr(k) for k in missing)} mapping; "
                "`autotune run` and `autotune export` write one)"
            )
        return cls.from_dict(data)

    def write(self, path: Path) -> Path:
        """Write atomically: a reader never sees half a file."""
        return write_yaml(path, self.to_dict())


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    """A best config's mapping as YAML, atomically, under a header naming its study."""
    header = f"# autotune best config for study {data['provenance']['study']}\n"
    return atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))

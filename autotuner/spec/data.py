"""The spec's `data` section: real inputs, split into a calibration set (static INT8) and a
held-apart evaluation set (the accuracy check), and the `accuracy.metric` a task score comes from.

Exactly one source: `file` (an .npz with one array per input name, or a .jsonl with one object per
sample), `factory` (a function returning batches: dicts of arrays), or `builtin: sentences` (English
sentences shipped with autotune, tokenized with the model's own tokenizer; the minilm model).
Arrays or fields beyond the model's inputs are labels: they reach the task metric, not the model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autotuner.spec.fields import function_path

BUILTIN_DATA = {"sentences": "320 English sentences in 160 paraphrase pairs (label `pair`), for minilm"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Section):
    file: str | None = None
    factory: str | None = None
    builtin: Literal["sentences"] | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # the factory's keyword arguments
    calibration: int = Field(default=128, ge=1, le=100_000)  # samples the calibration set holds
    evaluation: int = Field(default=128, ge=2, le=100_000)  # samples the evaluation set holds
    # A label field whose samples stay together in one set (the two sentences of a pair).
    group: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("file", "factory", "builtin") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file, factory, builtin (got {', '.join(given) or 'none'})")
        if self.options and self.factory is None:
            raise ValueError("options are the factory's keyword arguments; give them with factory only")
        return self

    @field_validator("file")
    @classmethod
    def _file(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith((".npz", ".jsonl")):
            raise ValueError(f"{v!r} must be an .npz (one array per input name) or a .jsonl file")
        return v

    _factory = field_validator("factory")(classmethod(lambda cls, v: function_path(v)))

    @property
    def source(self) -> str:
        """The source in words, as the best-config YAML names it."""
        if self.file is not None:
            return f"file {self.file}"
        if self.factory is not None:
            return f"factory {self.factory}"
        return f"builtin {self.builtin}"

    @property
    def group_field(self) -> str | None:
        return self.group if self.group is not None else ("pair" if self.builtin == "sentences" else None)

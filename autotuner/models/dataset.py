"""The spec's `data`: real samples read once, checked against the model's inputs, split into a
calibration set and a held-apart evaluation set, and cached by content hash.

Samples are deduplicated by their input values before the split, so that no evaluation sample is
also a calibration sample; with `group` (the builtin sentences: `pair`) a group's samples all fall
into one set. Every check names the file and what is wrong (FieldError at `data.*`), before a
study exists: `check_data` runs in the driver.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotuner._version import __version__
from autotuner.files import atomic_write, cache_dir, content_sha256
from autotuner.models.builtins import _on_path, minilm_tokenizer, model_inputs
from autotuner.models.quantization import batches
from autotuner.models.versions import library_versions
from autotuner.spec.fields import FieldError
from autotuner.spec.schema import InputSpec, Spec

SENTENCES = Path(__file__).resolve().parent.parent / "data" / "sentences.tsv"
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
_KIND = {"float32": "f", "float16": "f", "int64": "i", "int32": "i", "bool": "b"}


@dataclass(frozen=True)
class DataSets:
    """Samples on axis 0. The evaluation set holds the inputs and the labels."""

    calibration: dict[str, np.ndarray]
    evaluation: dict[str, np.ndarray]
    sha256: str  # of the distinct samples (inputs and labels), before the split
    distinct: int  # distinct samples in the data
    duplicates: int  # samples dropped as repeats of an earlier one

    def summary(self, spec: Spec) -> dict[str, Any]:
        """What the best-config YAML says of the data."""
        assert spec.data is not None
        return {
            "source": spec.data.source,
            "sha256": self.sha256,
            "samples": self.distinct,
            "calibration_samples": _count(self.calibration),
            "evaluation_samples": _count(self.evaluation),
            **({"group": spec.data.group_field} if spec.data.group_field else {}),
            "split_seed": spec.data_seed,
        }


def _count(arrays: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def model_batch(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The inputs of a set (samples on axis 0) as the model takes them (on each input's batch axis)."""
    return {
        s.name: np.ascontiguousarray(np.moveaxis(arrays[s.name], 0, s.shape.index("batch"))) for s in specs
    }


def calibration_batches(spec: Spec) -> list[dict[str, np.ndarray]]:
    """The calibration set in batches of CALIBRATION_BATCH, as the model takes them."""

    specs = model_inputs(spec)
    return [model_batch(b, specs) for b in batches(data_sets(spec).calibration)]


def check_data(spec: Spec) -> None:
    """FieldError at data.* when the data cannot serve the spec; the sets are cached for the trials."""
    if spec.data is not None:
        data_sets(spec)


_READ: dict[Path, DataSets] = {}  # this process's sets by cache file: a trial asks several times


def data_sets(spec: Spec) -> DataSets:
    """The calibration and evaluation sets, from the cache or made (and cached) now."""

    assert spec.data is not None
    specs = model_inputs(spec)
    path = cache_dir() / "data" / f"{_cache_key(spec, specs)}.npz"
    if path in _READ:
        return _READ[path]
    if path.exists():
        try:
            _READ[path] = _read_cache(path)
            return _READ[path]
        except (OSError, ValueError, KeyError):
            pass  # a cache file from another version, or damaged: made again below
    samples = read_samples(spec, specs)
    sets = split(spec, samples, specs)
    _write_cache(path, sets)
    _READ[path] = sets
    return sets


def read_samples(spec: Spec, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Every sample of the source (axis 0), inputs checked against the model's, labels kept."""
    data = spec.data
    assert data is not None
    if data.file is not None:
        path = spec.resolve(data.file)
        where: tuple[str | int, ...] = ("data", "file")
        if not path.is_file():
            raise FieldError(where, f"no such file: {path}" if not path.exists() else f"{path} is not a file")
        if path.suffix == ".npz":
            return _checked(_read_npz(path, where), specs, where, path.name, batch_axis=True)
        return _checked(_read_jsonl(path, specs, where), specs, where, path.name, batch_axis=False)
    if data.factory is not None:
        return _factory_samples(spec)[1]
    where = ("data", "builtin")
    return _checked(_sentences(spec, where), specs, where, "builtin sentences", batch_axis=False)


def _read_npz(path: Path, where: tuple[str | int, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and pickle refusals alike
        raise FieldError(where, f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None


def _read_jsonl(path: Path, specs: list[InputSpec], where: tuple[str | int, ...]) -> dict[str, np.ndarray]:
    """One JSON object a line: each input's sample (without the batch axis) and any labels."""
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FieldError(where, f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise FieldError(where, f"{path.name} line {n} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise FieldError(
                where, f"{path.name} line {n} must be an object of fields, not {type(row).__name__}"
            )
        if rows and set(row) != set(rows[0]):
            raise FieldError(
                where, f"{path.name} line {n} has fields {sorted(row)}, line 1 has {sorted(rows[0])}"
            )
        rows.append(row)
    if not rows:
        raise FieldError(where, f"{path.name} holds no samples")
    out: dict[str, np.ndarray] = {}
    for name in rows[0]:
        try:
            out[name] = np.asarray([r[name] for r in rows])
        except ValueError:
            raise FieldError(where, f"{path.name}: field {name!r} has samples of different shapes") from None
    return out


def _from_factory(spec: Spec, where: tuple[str | int, ...]) -> dict[str, np.ndarray]:
    """The factory's batches (dicts of arrays, batch axis as the inputs say), joined."""

    assert spec.data is not None and spec.data.factory is not None
    mod_name, _, fn_name = spec.data.factory.partition(":")
    with _on_path(spec.base_dir):
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as e:
            raise FieldError(where, f"cannot load {spec.data.factory}: {e}") from None
    try:
        batches = list(fn(**spec.data.options))
    except Exception as e:  # noqa: BLE001 - the user's code: its error, in one line
        raise FieldError(where, f"{spec.data.factory} raised {type(e).__name__}: {e}") from None
    if not batches or not all(isinstance(b, Mapping) for b in batches):
        raise FieldError(where, f"{spec.data.factory} must return batches: dicts of input name to array")
    names = list(batches[0])
    try:
        return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in names}
    except (KeyError, ValueError) as e:
        raise FieldError(where, f"{spec.data.factory}: its batches do not join ({e})") from None


def _sentences(spec: Spec, where: tuple[str | int, ...]) -> dict[str, np.ndarray]:
    """The shipped English sentences, tokenized with the minilm model's own tokenizer."""
    if spec.model.builtin != "minilm":
        raise FieldError(
            where, "sentences are tokenized with the minilm model's tokenizer; the model is not minilm"
        )

    pairs, texts = [], []
    for line in SENTENCES.read_text(encoding="utf-8").splitlines():
        pair, _, text = line.partition("\t")
        pairs.append(int(pair))
        texts.append(text)
    seq = int(spec.model.options.get("seq_len", 128))
    enc = minilm_tokenizer()(
        texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np"
    )
    return {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
        "pair": np.asarray(pairs, dtype=np.int64),
    }


def _checked(
    arrays: dict[str, np.ndarray],
    specs: list[InputSpec],
    where: tuple[str | int, ...],
    shown: str,
    *,
    batch_axis: bool,
) -> dict[str, np.ndarray]:
    """The arrays with samples on axis 0, or FieldError naming the input and what is wrong.

    batch_axis: the arrays hold samples on each input's batch axis (.npz, factory), else on
    axis 0 with one sample's shape after it (.jsonl rows, tokenized sentences).
    """
    out: dict[str, np.ndarray] = {}
    holds = ", ".join(sorted(arrays)) or "nothing"
    for s in specs:
        if s.name not in arrays:
            raise FieldError(
                where,
                f"{shown} has no {s.name!r} (the model's inputs: {', '.join(i.name for i in specs)}; "
                f"it holds: {holds})",
            )
        arr = arrays[s.name]
        dims = [d for d in s.shape if d != "batch"]
        axis = s.shape.index("batch") if batch_axis else 0
        if arr.ndim != len(s.shape):
            raise FieldError(
                where,
                f"{shown}: {s.name!r} has {arr.ndim} axes {list(arr.shape)}; the input has {len(s.shape)} "
                f"({', '.join(map(str, s.shape))})",
            )
        arr = np.moveaxis(arr, axis, 0)
        if list(arr.shape[1:]) != dims:
            raise FieldError(
                where, f"{shown}: {s.name!r} samples are {list(arr.shape[1:])}; the input's are {dims}"
            )
        if batch_axis and arr.dtype != np.dtype(_NP[s.dtype]):
            raise FieldError(where, f"{shown}: {s.name!r} is {arr.dtype}; the input is {s.dtype}")
        if not batch_axis and arr.dtype.kind not in (
            _KIND[s.dtype] + ("i" if s.dtype.startswith("float") else "")
        ):
            raise FieldError(where, f"{shown}: {s.name!r} holds {arr.dtype} values; the input is {s.dtype}")
        out[s.name] = arr.astype(_NP[s.dtype], copy=False)
    n = {len(v) for v in out.values()}
    if len(n) != 1:
        raise FieldError(where, f"{shown}: the inputs hold different numbers of samples ({sorted(n)})")
    count = n.pop()
    for name, arr in arrays.items():
        if name in out:
            continue
        if arr.ndim == 0 or len(arr) != count:
            raise FieldError(
                where,
                f"{shown}: label {name!r} holds {len(arr) if arr.ndim else 0} samples, the inputs {count}",
            )
        out[name] = arr
    return out


def split(spec: Spec, samples: dict[str, np.ndarray], specs: list[InputSpec]) -> DataSets:
    """Distinct samples, then a seeded split: calibration first, evaluation from the rest."""
    data = spec.data
    assert data is not None
    names = [s.name for s in specs]
    n = len(samples[names[0]])
    seen: dict[bytes, int] = {}
    for i in range(n):
        key = b"".join(np.ascontiguousarray(samples[k][i]).tobytes() for k in names)
        seen.setdefault(key, i)
    keep = np.array(sorted(seen.values()), dtype=np.int64)
    distinct = {k: v[keep] for k, v in samples.items()}
    rng = np.random.default_rng([spec.data_seed, 20260901])
    group = data.group_field
    where = ("data", "calibration")
    need = data.calibration + data.evaluation
    if group is not None:
        if group not in distinct:
            raise FieldError(
                ("data", "group"), f"no label {group!r} in the data; it holds {', '.join(distinct)}"
            )
        labels = distinct[group]
        units = [np.flatnonzero(labels == g) for g in rng.permutation(np.unique(labels))]
    else:
        units = [np.array([i]) for i in rng.permutation(len(keep))]
    cal, ev = _fill(units, 0, data.calibration)
    ev_rows, _ = _fill(units, ev, data.evaluation)
    if _count_rows(cal) < data.calibration or _count_rows(ev_rows) < data.evaluation:
        dup = f" ({n - len(keep)} repeated samples dropped)" if n > len(keep) else ""
        grouped = f" in {len(units)} groups of {group!r}" if group else ""
        raise FieldError(
            where,
            f"the data holds {len(keep)} distinct samples{grouped}{dup}; calibration {data.calibration} + "
            f"evaluation {data.evaluation} need {need}",
        )
    c, e = np.concatenate(cal), np.concatenate(ev_rows)
    label_names = [k for k in distinct if k not in names]
    return DataSets(
        calibration={k: distinct[k][c] for k in names},
        evaluation={k: distinct[k][e] for k in [*names, *label_names]},
        sha256=_content_hash(distinct),
        distinct=len(keep),
        duplicates=n - len(keep),
    )


def _fill(units: list[np.ndarray], start: int, want: int) -> tuple[list[np.ndarray], int]:
    """Whole units from `start` until they hold `want` rows; (the units, the next start)."""
    taken: list[np.ndarray] = []
    i = start
    while i < len(units) and _count_rows(taken) < want:
        taken.append(units[i])
        i += 1
    return taken, i


def _count_rows(units: Iterable[np.ndarray]) -> int:
    return sum(len(u) for u in units)


def _content_hash(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(json.dumps(a.tolist()).encode() if a.dtype.kind == "O" else a.tobytes())
    return h.hexdigest()


def _cache_key(spec: Spec, specs: list[InputSpec]) -> str:
    """What the sets depend on: the source's content (or code), the inputs and the split."""

    data = spec.data
    assert data is not None
    h = hashlib.sha256()
    h.update(json.dumps(data.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps([s.model_dump(mode="json") for s in specs]).encode())
    h.update(f"{spec.data_seed}:{__version__}".encode())
    h.update(data_digest(spec).encode())
    return h.hexdigest()[:24]


_FACTORY_SAMPLES: dict[str, tuple[str, dict[str, np.ndarray]]] = {}  # this process's factory reads


def forget_factory_reads() -> None:
    """Drop what this process read from data factories: the next read calls them again (a
    command's first step, for a process that outlives a change of the data)."""
    _FACTORY_SAMPLES.clear()


def data_digest(spec: Spec) -> str:
    """What the data source holds, as a hash: the spec's (found by the process that started the
    trial), else found now. A file: its content; the builtin sentences: the shipped file and the
    tokenizer's package; a factory: the samples it returns (it is called: its code may read
    anything)."""

    if spec.data_digest is not None:
        return spec.data_digest
    data = spec.data
    assert data is not None
    if data.file is not None:
        path = spec.resolve(data.file)
        return content_sha256(path) if path.is_file() else "unreadable"  # reading it says why
    if data.factory is not None:
        return _factory_samples(spec)[0]

    return hashlib.sha256(f"{content_sha256(SENTENCES)}:{library_versions()}".encode()).hexdigest()


def _factory_samples(spec: Spec) -> tuple[str, dict[str, np.ndarray]]:
    """The factory's checked samples and their content hash, read once in this process."""

    specs = model_inputs(spec)
    key = json.dumps(
        [spec.model_dump(mode="json")["data"], os.path.abspath(spec.base_dir), os.getcwd()],
        sort_keys=True,
        default=str,
    )
    if key not in _FACTORY_SAMPLES:
        where: tuple[str | int, ...] = ("data", "factory")
        shown = spec.data.factory if spec.data is not None and spec.data.factory else "data.factory"
        samples = _checked(_from_factory(spec, where), specs, where, shown, batch_axis=True)
        _FACTORY_SAMPLES[key] = (_content_hash(samples), samples)
    return _FACTORY_SAMPLES[key]


def _write_cache(path: Path, sets: DataSets) -> None:
    arrays = {f"cal.{k}": v for k, v in sets.calibration.items()}
    arrays.update({f"eval.{k}": v for k, v in sets.evaluation.items()})
    meta = {"sha256": sets.sha256, "distinct": sets.distinct, "duplicates": sets.duplicates}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write, ".npz")


def _read_cache(path: Path) -> DataSets:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        cal = {k[4:]: z[k] for k in z.files if k.startswith("cal.")}
        ev = {k[5:]: z[k] for k in z.files if k.startswith("eval.")}
    return DataSets(cal, ev, meta["sha256"], meta["distinct"], meta["duplicates"])

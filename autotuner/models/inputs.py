"""Seeded input generation: the same seed gives the same tensors in every worker."""

from __future__ import annotations

import numpy as np

from autotuner.spec.schema import InputSpec

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def make_inputs(specs: list[InputSpec], batch: int, seed: int) -> dict[str, np.ndarray]:
    """One batch of inputs. Sample i does not depend on the batch size (rows are drawn in order)."""
    out: dict[str, np.ndarray] = {}
    for idx, s in enumerate(specs):
        rng = np.random.default_rng([seed, idx])
        shape = tuple(batch if d == "batch" else d for d in s.shape)
        # Draw with the batch axis first so that rows stay the same whatever the batch size.
        axis = s.shape.index("batch")
        rows = (batch, *[d for i, d in enumerate(shape) if i != axis])
        if s.dtype == "bool":
            arr = rng.random(rows) < 0.5
        elif s.dtype in ("int64", "int32"):
            low = int(s.low) if s.low is not None else 0
            high = int(s.high) if s.high is not None else 100
            arr = rng.integers(low, high, size=rows, dtype=np.int64).astype(_NP[s.dtype])
        elif s.low is not None and s.high is not None:
            arr = rng.uniform(s.low, s.high, size=rows).astype(_NP[s.dtype])
        else:
            arr = rng.standard_normal(rows).astype(_NP[s.dtype])
        out[s.name] = np.ascontiguousarray(np.moveaxis(arr, 0, axis))
    return out


def chunks(inputs: dict[str, np.ndarray], specs: list[InputSpec], size: int):
    """Split a set of samples into batches of exactly `size` (the last padded by repetition).

    Yields (batch, n_real) so that callers can drop the padding rows from the outputs.
    """
    axes = {s.name: s.shape.index("batch") for s in specs}
    n = next(iter(inputs.values())).shape[axes[specs[0].name]]
    for start in range(0, n, size):
        idx = np.arange(start, start + size) % n
        real = min(size, n - start)
        yield {k: np.take(v, idx, axis=axes[k]) for k, v in inputs.items()}, real

"""Outputs of a config against the fp32 reference on the same seeded inputs."""

from __future__ import annotations

import numpy as np


def compare(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """accuracy_cosine (worst sample), accuracy_max_abs_error, accuracy_top1 (argmax agreement)."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference {ref.shape}")
    n = ref.shape[0]
    a = out.astype(np.float64).reshape(n, -1)
    b = ref.astype(np.float64).reshape(n, -1)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, (a * b).sum(axis=1) / (na * nb))
    last = ref.shape[-1] if ref.ndim > 1 else 1
    top_a = out.astype(np.float64).reshape(-1, last).argmax(axis=1)
    top_b = ref.astype(np.float64).reshape(-1, last).argmax(axis=1)
    finite = bool(np.isfinite(a).all())
    return {
        "accuracy_cosine": float(cos.min()) if finite else float("nan"),
        "accuracy_max_abs_error": float(np.abs(a - b).max()) if finite else float("nan"),
        "accuracy_top1": float((top_a == top_b).mean()) if finite else float("nan"),
    }

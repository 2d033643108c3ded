"""Shared fixtures: the host backends under test and random problem makers.

DMOE_TEST_BACKENDS (comma-separated, default "cpu-ref") picks the host
backends every numerical test runs on; add "cpu" once the fast CPU backend
has landed (today its slot in libdmoe is a placeholder).
"""
import os

import numpy as np
import pytest

import dmoe

BACKENDS = [b for b in os.environ.get("DMOE_TEST_BACKENDS", "cpu-ref").split(",") if b]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if not dmoe.backend_available(request.param):
        pytest.skip(f"backend {request.param} not available")
    return request.param


def make_problem(T, H, F, E, dtype=np.float32, seed=0, S=0, Fs=0):
    """Random weights scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    p = {
        "x": rng.standard_normal((T, H)).astype(dtype),
        "w13": (rng.standard_normal((E, 2 * F, H)) / np.sqrt(H)).astype(dtype),
        "w2": (rng.standard_normal((E, H, F)) / np.sqrt(F)).astype(dtype),
        "router": (rng.standard_normal((E, H)) / np.sqrt(H)).astype(dtype),
        "logits": rng.standard_normal((T, E)).astype(dtype),
    }
    if S:
        p["shared_w13"] = (rng.standard_normal((S, 2 * Fs, H)) / np.sqrt(H)).astype(dtype)
        p["shared_w2"] = (rng.standard_normal((S, H, Fs)) / np.sqrt(Fs)).astype(dtype)
        p["shared_gate"] = (rng.standard_normal((1, H)) / np.sqrt(H)).astype(dtype)
    return p


def tolerance(dtype):
    """Relative L2 error allowed for outputs stored in dtype."""
    return {np.float32: 2e-6, np.float16: 2e-3}[np.dtype(dtype).type]

"""Shared test set-up: a private kernel cache for user rules, the tests' relative error, small helpers."""
import os
import tempfile

import numpy as np
import pytest

# User-rule modules go to a per-session temporary cache, never the developer's home.
os.environ.setdefault("SYMOPT_CACHE_DIR", tempfile.mkdtemp(prefix="symopt-test-cache-"))

#: Relative tolerance per dtype for comparisons with float64/NumPy references.
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _float64(x) -> np.ndarray:
    """``x`` as a float64 NumPy array."""
    if hasattr(x, "detach"):  # a torch tensor, of any float dtype (NumPy has no bfloat16)
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(a, b, floor: float = 0.0) -> float:
    """Relative error of ``a`` against the reference ``b``, the one measure of the tests::

        max_i |a_i − b_i| / max(|b_i|, floor · max_j |b_j|, tiny)

    (float64; ``tiny`` = 2.2e-308, the smallest normal float64, so that 0/0 counts as 0).
    ``floor = 0``: elementwise relative error; ``floor = 1``: max-norm relative error
    ``max|a − b| / max|b|``, for values that pass near zero, where only the error relative
    to the larger entries is meaningful; in between, entries below ``floor · max|b|`` are
    measured against that.  An empty ``b`` has error 0.  ``a``, ``b``: arrays, numbers or
    torch tensors.
    """
    a, b = _float64(a), _float64(b)
    if b.size == 0:
        return 0.0
    scale = float(np.max(np.abs(b)))
    denom = np.maximum(np.abs(b), max(floor * scale, float(np.finfo(np.float64).tiny)))
    return float(np.max(np.abs(a - b) / denom))


class CountedCalls:
    """A kernel that counts its calls and forwards them (to see which kernel a step ran)."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def __call__(self, *args):
        self.calls += 1
        return self.kernel(*args)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# `make test` sets SYMOPT_REQUIRE_REFERENCES=1: a parity test skipped because torch/optax
# (or another pinned reference) failed to import then fails the run instead of hiding.
_REQUIRE = os.environ.get("SYMOPT_REQUIRE_REFERENCES") == "1"
_missing_refs: list = []


def pytest_runtest_logreport(report):
    if _REQUIRE and report.skipped and "could not import" in str(report.longrepr):
        _missing_refs.append(report.nodeid)


def pytest_collectreport(report):
    # A module-level pytest.importorskip skips at collection time.
    if _REQUIRE and report.skipped and "could not import" in str(report.longrepr):
        _missing_refs.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _missing_refs:
        print(f"\nSYMOPT_REQUIRE_REFERENCES=1 but {len(_missing_refs)} tests skipped for a missing reference "
              f"package, e.g. {_missing_refs[0]}")
        session.exitstatus = 1

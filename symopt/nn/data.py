"""The bundled 8×8 digits of scikit-learn, split and scaled (no download).

``load_digits()`` returns ``(X_train, y_train, X_test, y_test)``: 1797 images of
64 pixels in 0..16, labels 0..9.  With ``standardize=True`` (the default) each
pixel is shifted and scaled by the *training* set's mean and standard deviation
(pixels that are constant there are only shifted); otherwise pixels are divided
by 16, into [0, 1].
The split is stratified and deterministic: for each class, a permutation drawn
from ``numpy.random.default_rng(seed)`` puts ``round(test_fraction · count)``
images in the test set (450 of 1797 at the default 0.25).
"""

from __future__ import annotations

import numpy as np

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.25, seed: int = 0, dtype=np.float64, standardize: bool = True):
    """``(X_train, y_train, X_test, y_test)`` of the digits; needs scikit-learn (``pip install symopt[train]``)."""
    if not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:  # pragma: no cover - exercised only without scikit-learn
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn "
                          "(or symopt[train])") from None
    data = _sk_load_digits()
    X = np.asarray(data.data, dtype=np.float64) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        take = round(test_fraction * len(idx))
        test[rng.permutation(idx)[:take]] = True
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = np.flatnonzero(test)
    X_train, X_test = X[train_idx], X[test_idx]
    if standardize:
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
        std[std == 0] = 1.0
        X_train = (X_train - mean) / std
        X_test = (X_test - mean) / std
    return (np.ascontiguousarray(X_train, dtype=dtype), y[train_idx],
            np.ascontiguousarray(X_test, dtype=dtype), y[test_idx])

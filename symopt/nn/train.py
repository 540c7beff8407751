"""Training an MLP as in the notes (the ``symopt train`` command is :mod:`symopt.train_command`).

The loop is the notes' backpropagation: forward pass, loss, gradients layer by
layer (:meth:`symopt.nn.MLP.loss_and_grads`), update by any optimizer rule,
repeat.  ``batch_size=None`` (or ``"all"``) is batch gradient descent (every
step sees all N samples); an integer ``B`` is mini-batch SGD (each epoch
shuffles the training set and takes ``⌈N/B⌉`` steps, the last batch possibly
smaller; every step uses the mean loss of its batch).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["History", "progress_enabled", "train_model"]


@dataclass
class History:
    """Per-epoch record of one training run (index 0: before the first step)."""

    label: str
    lr: float | None
    batch_size: int
    loss: list = field(default_factory=list)            # mean training loss over the epoch's batches
    train_accuracy: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0

    @property
    def epochs(self) -> list:
        return list(range(len(self.loss)))


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


class _SimpleBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.post, self.last = total, desc, 0, "", 0.0

    def _draw(self):
        width = 30
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(f"\r{self.desc} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} {self.post}")
        sys.stderr.flush()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last > 0.1 or self.n >= self.total:
            self.last = now
            self._draw()

    def set_postfix_str(self, s):
        self.post = s

    def close(self):
        self._draw()
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_enabled() -> bool:
    """A bar only on an interactive terminal, never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleBar(total, desc)
    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, unit="step", dynamic_ncols=True)


def _full_loss(net, X, y) -> float:
    return net.loss(X, y)


def train_model(net, rule, X, y, X_test=None, y_test=None, *, epochs: int, batch_size=None, lr=None,
                seed: int = 0, progress: bool = False, label: str | None = None, **hyper) -> History:
    """Train ``net`` in place with optimizer ``rule`` (a name or a ``symopt.Rule``); returns the history.

    ``batch_size`` None (or ``"all"``) = full batch; ``lr`` None = the rule's
    default; ``hyper`` are further optimizer keyword arguments.  The batch order
    comes from ``numpy.random.default_rng(seed)``.
    """
    from ..runtime.grouped import optimizer

    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    n = len(y)
    if batch_size in (None, "all"):
        batch = n
    elif isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or 'all', got {batch_size!r}")
    else:
        batch = min(int(batch_size), n)
    kwargs = {**hyper}
    if lr is not None:
        kwargs["lr"] = lr
    opt = optimizer(rule, net.params, **kwargs)
    used_lr = opt.param_groups[0].get("lr")
    name = label or (rule if isinstance(rule, str) else getattr(rule, "name", "rule"))
    hist = History(label=name, lr=used_lr, batch_size=batch)
    X = net._check_X(X)
    y = net._check_y(y, X.shape[0])
    hist.loss.append(_full_loss(net, X, y))
    hist.train_accuracy.append(net.accuracy(X, y) if net.loss_fn.rowwise else math.nan)
    if X_test is not None:
        hist.test_accuracy.append(net.accuracy(X_test, y_test))
    rng = np.random.default_rng(seed)
    per_epoch = -(-n // batch)
    bar = _bar(epochs * per_epoch, name, progress)
    t0 = time.perf_counter()
    try:
        for _ in range(epochs):
            order = rng.permutation(n) if batch < n else None
            total = 0.0
            for start in range(0, n, batch):
                if order is None:
                    xb, yb = X, y
                else:
                    idx = order[start:start + batch]
                    xb, yb = X[idx], y[idx]
                value, grads = net.loss_and_grads(xb, yb)
                opt.step(grads)
                total += value * len(yb)
                hist.steps += 1
                bar.update()
            hist.loss.append(total / n)
            hist.train_accuracy.append(net.accuracy(X, y) if net.loss_fn.rowwise else math.nan)
            if X_test is not None:
                hist.test_accuracy.append(net.accuracy(X_test, y_test))
                bar.set_postfix_str(f"loss {hist.loss[-1]:.4f} test acc {hist.test_accuracy[-1]:.4f}")
    finally:
        bar.close()
    hist.seconds = time.perf_counter() - t0
    return hist

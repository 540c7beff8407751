"""The ``symopt train`` command: an MLP on scikit-learn's bundled digits, trained by
:func:`symopt.nn.train.train_model` with optimizer rules named on the command line.

``symopt train digits --optimizer NAME --epochs N [--batch-size B|all] [--lr X]
[--seed S] [--plot FILE.png] [--compare A,B,C]`` trains on scikit-learn's bundled
8×8 digits and ends with the line ``test accuracy 0.xxxx``.  ``NAME`` is any rule
of ``symopt list`` (``adam``, ``sgd``, ``notes.adam_warmup``…), optionally with
its learning rate (``sgd@0.1``), or a user rule from a Python file
(``my_rules.py:heavy_ball``: the file defines a ``symopt.Rule`` of that name).
Without ``--lr`` each rule uses its own default learning rate; without
``--batch-size`` the batch is 32, or all samples for ``notes.gd`` (batch GD by
definition).  ``--threads`` (default 1) caps NumPy's BLAS threads during training.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .nn.train import progress_enabled, train_model

__all__ = ["add_parser", "main", "plot_histories", "resolve_optimizer"]


def resolve_optimizer(text: str):
    """``(rule, label, lr)`` from ``NAME``, ``NAME@LR``, ``file.py:NAME`` or ``file.py:NAME@LR``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"optimizer must be a rule name, got {text!r}")
    text = text.strip()
    lr = None
    if "@" in text:
        text, _, lr_text = text.rpartition("@")
        try:
            lr = float(lr_text)
        except ValueError:
            raise ValueError(f"learning rate after '@' must be a number, got {lr_text!r}") from None
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"learning rate after '@' must be a finite number >= 0, got {lr_text!r}")
    if ".py:" in text:
        import runpy

        from .rulebook.rule import Family, Rule

        path, _, name = text.rpartition(":")
        if not os.path.isfile(path):
            raise ValueError(f"rule file {path!r} does not exist")
        namespace = runpy.run_path(path)
        if name not in namespace:
            raise ValueError(f"{path} defines no name {name!r}")
        rule = namespace[name]
        if not isinstance(rule, (Rule, Family)):
            raise TypeError(f"{path}:{name} must be a symopt.Rule or Family, got {type(rule).__name__}")
        return rule, rule.name, lr
    import symopt

    if text not in symopt.rules():
        raise ValueError(f"unknown optimizer {text!r}; `symopt list` shows the rules "
                         f"(e.g. {', '.join(symopt.rules()[:6])}, ...), or give file.py:NAME")
    return text, text, lr


def _batch_arg(text: str):
    if text.lower() in ("all", "full", "0"):
        return "all"
    try:
        b = int(text)
    except ValueError:
        raise ValueError(f"--batch-size must be a positive integer or 'all', got {text!r}") from None
    if b < 1:
        raise ValueError(f"--batch-size must be a positive integer or 'all', got {text!r}")
    return b


def _hidden_arg(text: str) -> list:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--hidden must be comma-separated widths like 64,64, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise ValueError(f"--hidden widths must be positive, got {text!r}")
    return sizes


def plot_histories(histories, path: str, title: str, n_train: int | None = None) -> None:
    """One PNG: training loss (log scale) and test accuracy per epoch, one line per run.

    Each run gets its own line style and marker, so runs that coincide (Adam and
    the notes' bias-corrected Adam) stay distinguishable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.8))
    for k, h in enumerate(histories):
        lr = "" if h.lr is None else f", lr {h.lr:g}"
        batch = "full batch" if n_train is not None and h.batch_size >= n_train else f"batch {h.batch_size}"
        style = {"linestyle": styles[k % len(styles)], "marker": markers[k % len(markers)], "markersize": 4,
                 "linewidth": 1.8, "markevery": max(1, len(h.loss) // 15)}
        ax_loss.plot(h.epochs, h.loss, label=f"{h.label} ({batch}{lr})", **style)
        ax_acc.plot(h.epochs, h.test_accuracy, label=f"{h.label}: {h.test_accuracy[-1]:.4f}", **style)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss (mean over the epoch)")
    ax_loss.set_title("Training loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_title("Test accuracy (final value in the legend)")
    lows = [min(h.test_accuracy[1:] or h.test_accuracy) for h in histories if h.test_accuracy]
    ax_acc.set_ylim(max(0.0, min(lows) - 0.05) if lows else 0.0, 1.0)
    for ax in (ax_loss, ax_acc):
        ax.grid(True, which="major", alpha=0.35)
        ax.legend(loc="best" if ax is ax_loss else "lower right", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def add_parser(p) -> None:
    """Arguments of ``symopt train``."""
    p.add_argument("dataset", choices=["digits"], help="the data set (scikit-learn's bundled 8x8 digits)")
    p.add_argument("--optimizer", default="adam",
                   help="rule name (symopt list), NAME@LR, or file.py:NAME for a user rule (default adam)")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    p.add_argument("--batch-size", default=None,
                   help="mini-batch size, or 'all' for full-batch GD (default 32; all for notes.gd)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: each rule's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and batch order")
    p.add_argument("--hidden", default="64,64", help="hidden layer widths (default 64,64)")
    p.add_argument("--activation", default="tanh", help="hidden activation (default tanh)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--plot", metavar="FILE.png", help="write loss and accuracy curves to this PNG")
    p.add_argument("--compare", metavar="A,B,C",
                   help="train once per optimizer (NAME or NAME@LR) and plot them together")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads for the matrix products (default 1: digits-sized matrices gain nothing "
                        "from threads, and on a busy machine threads wait)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _blas_threads(n: int):
    """A context limiting NumPy's BLAS threads to ``n`` (no-op without threadpoolctl)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def main(args) -> int:
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    with _blas_threads(args.threads):
        return _main(args)


def _main(args) -> int:
    from .nn.data import load_digits
    from .nn.mlp import MLP

    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    dtype = np.float32 if args.dtype == "float32" else np.float64
    X, y, X_test, y_test = load_digits(seed=args.seed, dtype=dtype)
    sizes = [X.shape[1], *_hidden_arg(args.hidden), 10]
    specs = [s for s in args.compare.split(",") if s.strip()] if args.compare else [args.optimizer]
    runs = [resolve_optimizer(s) for s in specs]
    progress = progress_enabled() and not args.no_progress
    print(f"digits: {len(y)} train / {len(y_test)} test images, {X.shape[1]} standardized pixels, 10 classes")
    print(f"MLP {sizes} {args.activation}, loss softmax_cross_entropy, {args.dtype}, seed {args.seed}")
    histories = []
    for rule, label, lr in runs:
        net = MLP(sizes, activation=args.activation, loss="softmax_cross_entropy", dtype=dtype, seed=args.seed)
        batch = _batch_arg(args.batch_size) if args.batch_size is not None else \
            ("all" if label == "notes.gd" else 32)
        lr = lr if lr is not None else args.lr
        h = train_model(net, rule, X, y, X_test, y_test, epochs=args.epochs, batch_size=batch, lr=lr,
                        seed=args.seed, progress=progress, label=label)
        histories.append(h)
        kind = "full batch (GD)" if h.batch_size == len(y) else f"batch {h.batch_size} (mini-batch SGD)"
        lr_text = "default" if h.lr is None else f"{h.lr:g}"
        print(f"{label}: lr {lr_text}, {kind}, {args.epochs} epochs, {h.steps} steps, {h.seconds:.1f} s, "
              f"final training loss {h.loss[-1]:.4f}, test accuracy {h.test_accuracy[-1]:.4f}")
    plot = args.plot or ("digits_compare.png" if args.compare else None)
    if plot:
        plot_histories(histories, plot, f"MLP {sizes} {args.activation}, softmax cross-entropy, on the digits "
                                        f"({len(y)} train / {len(y_test)} test images), {args.dtype}", len(y))
        print(f"wrote {plot}")
    if len(histories) == 1:
        print(f"test accuracy {histories[0].test_accuracy[-1]:.4f}")
    return 0

"""symopt.nn and symopt.gradient against PyTorch eager and sympy.lambdify (a benchmark, not a test).

    python benchmarks/bench_nn.py [--rounds 5] [--threads 1] [--quick] [--naive-1000]

1. **MLP training, samples per second.**  The digits MLP (64-64-64-10, tanh,
   softmax cross-entropy), Adam (lr 1e-3; symopt's torch-compatible ``adam``
   against ``torch.optim.Adam()``), the same initial weights and the same batch
   order, one epoch over the 1347 training images per timing, for mini-batches of
   32 and the full batch, float32 and float64.  Both run in one process, round
   robin; a candidate's time is its minimum over the rounds.  The ratio is
   symopt's samples/s over torch's (> 1: symopt is faster).  ``--threads`` sets
   torch's intra-op threads and the BLAS threads NumPy uses (threadpoolctl) to the
   same number, 1 by default: on these small matrices threads mostly wait, and on
   a shared machine they make both sides erratic.
2. **symopt.gradient vs sympy.lambdify of one ``sympy.diff`` per symbol.**  For an
   N-dimensional Rosenbrock (N = 10, 100, 1000) and a logistic-regression negative
   log-likelihood (3 weights, 200 data points, where the naive derivatives swell):
   set-up time (derivation + generation + compilation, with an empty cache, vs
   ``diff`` + ``lambdify``), time per value-and-gradient call, and op counts
   (reverse mode as generated vs ``sympy.count_ops`` of the naive derivatives).
   The naive N = 1000 Rosenbrock takes minutes of ``diff``; it runs only with
   ``--naive-1000``.

``run()`` returns the rows (dicts) so another script can collect them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

ARCH = [64, 64, 64, 10]
LR = 1e-3


# ----------------------------------------------------------------------------- MLP training
def _symopt_epoch(net, opt, X, y, order, batch):
    for s in range(0, len(y), batch):
        idx = order[s:s + batch]
        _, grads = net.loss_and_grads(X[idx], y[idx])
        opt.step(grads)


def _torch_model(net, dtype):
    import torch

    layers = []
    for i in range(0, len(net.params), 2):
        lin = torch.nn.Linear(*net.params[i].shape).to(dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(net.params[i].T.copy()))
            lin.bias.copy_(torch.tensor(net.params[i + 1]))
        layers += [lin, torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def _torch_epoch(model, opt, X, y, order, batch):
    import torch

    F = torch.nn.functional
    for s in range(0, len(y), batch):
        idx = order[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(X[idx]), y[idx])
        loss.backward()
        opt.step()


def bench_mlp(rounds: int = 5, quick: bool = False) -> list:
    import torch

    import symopt
    from symopt.nn import MLP, load_digits

    rows = []
    for dtype in (np.float32, np.float64):
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        X, y, _, _ = load_digits(seed=0, dtype=dtype)
        Xt, yt = torch.tensor(X), torch.tensor(y)
        for batch in ((32,) if quick else (32, len(y))):
            net = MLP(ARCH, activation="tanh", loss="softmax_cross_entropy", dtype=dtype, seed=0)
            model = _torch_model(net, tdtype)
            opt_s = symopt.optimizer("adam", net.params, lr=LR)
            opt_t = torch.optim.Adam(model.parameters(), lr=LR)
            rng = np.random.default_rng(0)
            best = {"symopt": float("inf"), "torch": float("inf")}
            for r in range(rounds + 1):  # round 0 warms up (compilation, allocator)
                order = rng.permutation(len(y))
                torder = torch.tensor(order)
                t0 = time.perf_counter()
                _symopt_epoch(net, opt_s, X, y, order, batch)
                t1 = time.perf_counter()
                _torch_epoch(model, opt_t, Xt, yt, torder, batch)
                t2 = time.perf_counter()
                if r:
                    best["symopt"] = min(best["symopt"], t1 - t0)
                    best["torch"] = min(best["torch"], t2 - t1)
            sps = {k: len(y) / v for k, v in best.items()}
            rows.append({"dtype": np.dtype(dtype).name, "batch": batch, "symopt_samples_per_s": sps["symopt"],
                         "torch_samples_per_s": sps["torch"], "ratio": sps["symopt"] / sps["torch"]})
    return rows


# ----------------------------------------------------------------------------- symopt.gradient
def _rosenbrock(n):
    import sympy as sp

    x = sp.symbols(f"x0:{n}")
    return sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(n - 1)]), x


def _logistic_nll(points=200, seed=0):
    import sympy as sp

    rng = np.random.default_rng(seed)
    a, b, c = sp.symbols("a b c")
    terms = []
    for u, v, t in zip(rng.normal(size=points), rng.normal(size=points), rng.integers(0, 2, size=points)):
        s = a * float(u) + b * float(v) + c
        p = 1 / (1 + sp.exp(-s))
        terms.append(-(int(t) * sp.log(p) + (1 - int(t)) * sp.log(1 - p)))
    return sp.Add(*terms), (a, b, c)


def _per_call(fn, x, min_time=0.2):
    fn(x)
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn(x)
        t = time.perf_counter() - t0
        if t >= min_time:
            return t / n
        n *= 2


def bench_gradient(naive_1000: bool = False) -> list:
    import sympy as sp

    import symopt

    cases = [("Rosenbrock N=10", *_rosenbrock(10)), ("Rosenbrock N=100", *_rosenbrock(100)),
             ("Rosenbrock N=1000", *_rosenbrock(1000)), ("logistic NLL, 3 weights x 200 points", *_logistic_nll())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="symopt-bench-") as cache:
        os.environ["SYMOPT_CACHE_DIR"] = cache  # empty cache: set-up time includes compilation
        for label, expr, syms in cases:
            n = len(syms)
            x = np.random.default_rng(1).normal(size=n) * 0.5
            t0 = time.perf_counter()
            f = symopt.gradient(expr, syms)
            f(x)
            setup = time.perf_counter() - t0
            call = _per_call(f, x)
            row = {"case": label, "n": n, "forward_ops": f.forward_ops, "gradient_ops": f.gradient_ops,
                   "ratio_ops": f.ops_ratio, "setup_s": setup, "call_us": call * 1e6}
            if n < 1000 or naive_1000:
                t0 = time.perf_counter()
                derivs = [sp.diff(expr, s) for s in syms]
                lam = sp.lambdify(syms, [expr, *derivs], modules="numpy")
                lam(*x)
                row["naive_setup_s"] = time.perf_counter() - t0
                row["naive_ops"] = int(sum(sp.count_ops(d) for d in derivs)) + int(sp.count_ops(expr))
                row["naive_call_us"] = _per_call(lambda v, lam=lam: lam(*v), x) * 1e6
                vals = lam(*x)
                _, grad = f(x)
                row["max_rel_diff"] = float(np.max(np.abs(np.asarray(vals[1:]) - grad)
                                                   / np.maximum(np.abs(grad), 1e-300)))
            rows.append(row)
    return rows


def _fmt(v, spec=".3g"):
    return "-" if v is None else format(v, spec)


def run(rounds: int = 5, quick: bool = False, naive_1000: bool = False) -> dict:
    return {"mlp": bench_mlp(rounds, quick), "gradient": bench_gradient(naive_1000)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="mini-batch 32 only")
    ap.add_argument("--naive-1000", action="store_true", help="also differentiate the N=1000 Rosenbrock naively")
    args = ap.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        res = run(args.rounds, args.quick, args.naive_1000)
    print(f"## MLP {'-'.join(map(str, ARCH))} tanh + softmax cross-entropy, Adam, digits (1347 samples/epoch)")
    print(f"torch {torch.__version__}; torch and BLAS threads: {args.threads}; times: min over {args.rounds} epochs")
    print()
    print("| dtype | batch | symopt samples/s | torch eager samples/s | symopt / torch |")
    print("|---|---|---|---|---|")
    for r in res["mlp"]:
        print(f"| {r['dtype']} | {r['batch']} | {r['symopt_samples_per_s']:,.0f} | {r['torch_samples_per_s']:,.0f} "
              f"| {r['ratio']:.2f} |")
    print()
    print("## symopt.gradient vs sympy.lambdify of one sympy.diff per symbol (float64)")
    print()
    print("| case | N | ops f | ops f+grad | ratio | naive ops | set-up s (symopt / naive) "
          "| call us (symopt / naive) | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["gradient"]:
        print(f"| {r['case']} | {r['n']} | {r['forward_ops']} | {r['gradient_ops']} | {r['ratio_ops']:.2f} "
              f"| {r.get('naive_ops', '-')} | {r['setup_s']:.2f} / {_fmt(r.get('naive_setup_s'), '.2f')} "
              f"| {r['call_us']:.1f} / {_fmt(r.get('naive_call_us'), '.1f')} | {_fmt(r.get('max_rel_diff'), '.1e')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

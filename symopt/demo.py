"""``symopt demo``: the whole pipeline on a few rules, printed step by step.

1. derive   -- a built-in rule and a user rule written in SymPy; their plans
2. generate -- the user rule's kernel module (cache) and the built-ins (byte-identical check)
3. verify   -- kernels against 50-digit mpmath evaluation of the same rules
4. run      -- train a small logistic-regression problem with each rule
"""

from __future__ import annotations

import time


def _heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 74 - len(text)))


def user_rule():
    """Nesterov-style heavy ball written by a user in SymPy (about ten lines)."""
    import sympy as sp

    from .rulebook.metadata import Hyper
    from .rulebook.rule import Rule

    p, g, m = sp.symbols("p g m")
    lr, beta = sp.symbols("lr beta")
    return Rule("demo.heavy_ball", param=p, grad=g, state={m: 0},
                hyper={lr: Hyper(0.1, 0.0, doc="step size"), beta: Hyper(0.9, 0.0, 1.0, high_open=True)},
                updates=[(m, beta * m + g), (p, p - lr * (g + beta * m))],
                doc="Heavy ball with a Nesterov look-ahead, defined in the demo.")


def _problem(seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n, d = 512, 20
    X = rng.standard_normal((n, d))
    w_true = rng.standard_normal(d)
    y = (X @ w_true + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)

    def loss_and_grads(w, b):
        z = X @ w + b
        p = 1.0 / (1.0 + np.exp(-z))
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        r = (p - y) / n
        return loss, [X.T @ r, np.array([r.sum()])]

    return d, loss_and_grads


def run(args=None) -> int:
    import filecmp
    import tempfile
    from pathlib import Path

    import numpy as np

    import symopt

    from .codegen.emit import generate_builtins, user_module
    from .codegen.plan import make_plan
    from .rulebook.rule import Family
    from .verify.check import format_table, verify_variant

    _heading("1. derive: rules are SymPy expressions")
    builtin = symopt.rule("notes.adam_warmup")
    mine = user_rule()
    for rule in (builtin, mine):
        plan = make_plan(rule)
        print(f"\n{rule.name}: {rule.doc}")
        for lhs, rhs in rule.updates:
            print(f"    {lhs} <- {rhs}")
        print(f"  LaTeX: {rule.latex()}")
        print(f"  plan: {len(plan.scalars)} per-step scalars (float64, once per step), "
              f"{plan.op_count} operations per element")
        for s, e in zip(plan.scalars, plan.scalar_exprs):
            print(f"    {s} = {e}")

    _heading("2. generate: Jinja2 templates -> Numba modules")
    um = user_module(Family.of(mine))
    path, digest = um.path, um.digest
    if path is None:
        print(f"user rule module: kept in memory (no writable cache folder), input hash {digest[:16]}...")
    else:
        print(f"user rule module: {path}")
        print(f"  input hash {digest[:16]}..., {len(path.read_text().splitlines())} lines")
    with tempfile.TemporaryDirectory() as tmp:
        written = generate_builtins(Path(tmp))
        from . import generated

        here = Path(generated.__path__[0])
        same = all(filecmp.cmp(p, here / p.name, shallow=False) for p in written)
        print(f"regenerated {len(written)} built-in modules: "
              f"{'byte-identical to' if same else 'DIFFERENT FROM'} {here}")

    _heading("3. verify: kernels vs 50-digit mpmath evaluation of the rules")
    names = [n for n in ("notes.adam", "notes.adam_warmup", "adam", "lion") if n in symopt.rules()]
    fams = [symopt.family(n) for n in names] + [Family.of(mine)]
    results = []
    for fam in fams:
        for _, rule in fam.variants[:1]:
            for dtype in ("float32", "float64"):
                results.append(verify_variant(fam, rule, dtype, samples=40, steps=2))
    print(format_table(results))

    _heading("4. run: logistic regression, 200 steps, float64")
    d, loss_and_grads = _problem()
    candidates = [("notes.gd", {"lr": 0.5}), ("notes.adam_warmup", {"lr": 0.05}),
                  ("sgd", {"lr": 0.5, "momentum": 0.9}), ("adam", {"lr": 0.05}), ("lion", {"lr": 0.005}),
                  (mine, {"lr": 0.5})]
    print(f"{'rule':<22} {'loss@0':>9} {'loss@20':>9} {'loss@200':>9} {'us/step':>9}")
    for rule, hyper in candidates:
        name = rule if isinstance(rule, str) else rule.name
        if isinstance(rule, str) and rule not in symopt.rules():
            continue
        w, b = np.zeros(d), np.zeros(1)
        opt = symopt.optimizer(rule, [w, b], **hyper)
        losses = []
        step_time = 0.0
        for k in range(201):
            loss, grads = loss_and_grads(w, b)
            losses.append(loss)
            if k < 200:
                t0 = time.perf_counter()
                opt.step(grads)
                step_time += time.perf_counter() - t0 if k > 0 else 0.0
        print(f"{name:<22} {losses[0]:>9.4f} {losses[20]:>9.4f} {losses[200]:>9.4f} {step_time / 199 * 1e6:>9.1f}")
    ok = all(r.ok for r in results)
    print("\n" + ("all kernels verified." if ok else "VERIFICATION FAILED."))
    return 0 if ok else 1


def add_parser(sub) -> None:
    sub.set_defaults(func=run)

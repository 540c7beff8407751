"""The ``symopt`` command line: ``list``, ``show``, ``generate``, ``verify`` and more.

Each sub-command lives in a function here or in a module named in
:data:`EXTRA_COMMANDS`; such modules keep heavy imports (SymPy, matplotlib,
torch) inside their functions, so ``symopt list`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

#: Sub-commands defined in other modules: name -> (module, "add_parser" function, help).
EXTRA_COMMANDS: dict = {
    "demo": ("symopt.demo", "add_parser", "run the whole pipeline on a few rules and a small problem"),
    "train": ("symopt.train_command", "add_parser", "train an MLP on the bundled digits"),
    "bench": ("symopt.bench", "add_parser", "benchmark suite: limits, NumPy/torch/Optax peers (writes benchmarks/)"),
    "report": ("symopt.reporting", "add_parser", "HTML pages of rules, from the equations to the kernel (--all: a site)"),
}


def _cmd_list(args) -> int:
    import symopt

    from .runtime.kernels import load_builtin

    rows = []
    for name in symopt.rules():
        fam = load_builtin(name).FAMILY
        variants = ", ".join(v["name"] for v in fam["variants"])
        rows.append((fam.get("group", ""), name, fam.get("source", ""), variants))
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    from .provenance import verified_by

    for group, items in groups.items():
        print(f"[{group}]  {len(items)} rule(s): name, where it is defined, what verifies it")
        for _, name, source, variants in items:
            extra = f"  variants: {variants}" if "," in variants else ""
            print(f"  {name:<22} {source}{extra}")
            print(f"  {'':<22}   verified by: {', '.join(verified_by(name))}")
    return 0


def _cmd_show(args) -> int:
    import sympy as sp

    from .codegen.plan import make_plan
    from .codegen.plan_matrix import is_matrix_rule, make_matrix_plan
    from .codegen.plan_preconditioned import is_preconditioned_rule, make_preconditioned_plan
    from .rulebook.catalog import family
    from .runtime.kernels import load_builtin

    if args.name.startswith("schedule."):  # a schedule: LaTeX, values, --plot (symopt/schedule.py)
        from .schedule import show_cli

        return show_cli(args)
    fam = family(args.name)
    if args.backend != "numba":  # the generated code of an array backend, as checked in
        from . import generated

        path = Path(generated.__path__[0]) / args.backend / f"{generated.RULES[fam.name]}.py"
        if not path.is_file():  # a matrix plan kind without an array template (codegen/render.py: array_plan_kind)
            raise ValueError(f"rule {fam.name!r} has no {args.backend} module (its plan kind has no {args.backend} "
                             f"template); it steps through its Numba kernels")
        print(f"# {path}")
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    mod = load_builtin(args.name)
    print(f"{fam.name} -- {fam.source}")
    if fam.doc:
        print(f"  {fam.doc}")
    if fam.references:
        print("  references: " + "; ".join(fam.references))
    print(f"  generated module: {mod.__file__}")
    print("  keyword arguments:")
    for sym, h in fam.hyper.items():
        key = (h.key or sym.name) + ("" if h.index is None else f"[{h.index}]")
        print(f"    {key:<20} default {h.user_default!r:<10} range {h.range_text():<16} {h.doc}")
    for when, rule in fam.variants:
        cond = "" if when == sp.true else f" (when {sp.sstr(when)})"
        matrix = is_matrix_rule(rule)
        preconditioned = is_preconditioned_rule(rule)
        plan = (make_preconditioned_plan if preconditioned else make_matrix_plan if matrix else make_plan)(rule)
        print(f"\n  variant {rule.name}{cond}: {plan.op_count} ops/element"
              + (" in two passes around a matrix iteration (BLAS)" if matrix else "")
              + (f" in {len(plan.passes)} passes around matrix states (BLAS/LAPACK: "
                 + ", ".join((f"{k}_<k> (d_k×d_k per axis k, init " if side == "axes" else f"{k} ({side}×{side}, init ")
                             + f"{sp.sstr(plan.scalar_exprs[plan.scalars.index(d)] if d in plan.scalars else d)}·I)"
                             for k, side, d in plan.matrix_states) + ")"
                 if preconditioned else "")
              + f", {len(plan.scalars)} per-step scalars")
        if rule.state:
            print("    state: " + ", ".join(f"{rule.state_key(s)} (init {sp.sstr(sp.sympify(v.init))})"
                                          for s, v in rule.state.items()))
        if args.latex:
            print("    " + rule.latex())
        else:
            for lhs, rhs in rule.updates:
                print(f"    {lhs} <- {sp.sstr(rhs)}")
    return 0


def _cmd_generate(args) -> int:
    from .codegen.emit import generate_builtins

    if args.out:
        out = Path(args.out)
    else:
        from . import generated

        out = Path(generated.__path__[0])
    paths = generate_builtins(out, names=args.names or None)
    print(f"wrote {len(paths)} files to {out}")
    return 0


def _cmd_verify(args) -> int:
    from .verify.check import main as verify_main

    return verify_main(args)


def build_parser() -> argparse.ArgumentParser:
    from ._version import __version__

    p = argparse.ArgumentParser(prog="symopt", description="Optimizer rules in SymPy -> checked Numba kernels.")
    p.add_argument("--version", action="version", version=f"symopt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("list", help="list the built-in rules by family")
    s.set_defaults(func=_cmd_list)
    s = sub.add_parser("show", help="show a rule: equations, state, hyperparameters, generated file")
    s.add_argument("name")
    s.add_argument("--latex", action="store_true", help="print the equations in LaTeX")
    s.add_argument("--backend", choices=("numba", "torch", "jax"), default="numba",
                   help="torch or jax: print that backend's generated module of the rule")
    s.add_argument("params", nargs="*", help="for schedule.NAME: its parameters as key=value")
    s.add_argument("--plot", metavar="FILE.png", help="for schedule.NAME: draw it into an image")
    s.add_argument("--steps", type=int, help="for schedule.NAME: steps shown/plotted (default: its horizon)")
    s.set_defaults(func=_cmd_show)
    s = sub.add_parser("generate", help="regenerate the built-in modules of every backend (numba, torch/, jax/)")
    s.add_argument("names", nargs="*", help="only these rules (default: all, plus the index)")
    s.add_argument("--out", help="output folder (default: the package's generated/)")
    s.set_defaults(func=_cmd_generate)
    s = sub.add_parser("verify", help="check kernels against high-precision evaluation of the rules")
    s.add_argument("names", nargs="*", help="rules to verify (default: all)")
    s.add_argument("--samples", type=int, default=200, help="random elements per magnitude band")
    s.add_argument("--steps", type=int, default=3, help="consecutive steps checked")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_verify)
    for name, (module, fn, help_text) in EXTRA_COMMANDS.items():
        s = sub.add_parser(name, help=help_text)
        getattr(importlib.import_module(module), fn)(s)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError) as exc:
        print(f"symopt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

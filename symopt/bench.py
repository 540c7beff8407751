"""``symopt bench``: the benchmark suite of a source checkout (``benchmarks/suite.py``).

The suite compares symopt's generated steps with a same-traffic kernel, NumPy,
torch (foreach and fused) and Optax, and writes ``benchmarks/results.md`` and a
PNG.  It lives beside the package, not in it, so it is found from the checkout
this package was imported from.  Heavy imports happen inside the suite.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def suite_path() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks" / "suite.py"


def add_parser(p) -> None:
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes and repeats, no 1e8 row, no cold-compile phase (a smoke run)")
    p.add_argument("--out", help="output folder (default: the checkout's benchmarks/)")
    p.add_argument("--threads", type=int, default=None, help="threads for every peer (default: all cores)")
    p.add_argument("--no-compile-times", action="store_true",
                   help="skip the cold-compile phase (~4 min); the report reuses the stored compile_times.json")
    p.add_argument("--compile-only", action="store_true", help="only the cold-compile phase (writes compile_times.json)")
    p.add_argument("--only", choices=("midsize",),
                   help="run one phase alone (midsize: Adam at 1e4-1e6 elements, the fixed cost of step(), "
                        "thread wake-up, warm start); writes results_<phase>.md")
    p.set_defaults(func=run)


def run(args) -> int:
    path = suite_path()
    if not path.is_file():
        raise ValueError(f"symopt bench needs a source checkout: {path} not found")
    spec = importlib.util.spec_from_file_location("symopt_benchmarks_suite", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(args)

"""A non-editable install (a built wheel) finds generated/ and templates/ and works."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_install_runs_builtin_and_user_rules(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--disable-pip-version-check", "-q", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (target / "symopt" / "generated" / "__init__.py").exists()
    assert (target / "symopt" / "templates" / "optimizer_module.py.jinja").exists()
    code = (
        "import numpy as np, sympy as sp, symopt, sys\n"
        "assert symopt.__file__.startswith(sys.argv[1]), symopt.__file__\n"
        "p=[np.zeros(4)]; o=symopt.optimizer('notes.sgd', p, lr=0.5); o.step([np.ones(4)])\n"
        "assert p[0][0] == -0.5\n"
        "x, g = sp.symbols('x g'); lr = sp.Symbol('lr')\n"
        "r = symopt.Rule('wheel_gd', param=x, grad=g, hyper={lr: 0.25}, updates=[(x, x - lr*g)])\n"
        "q=[np.ones(3)]; symopt.optimizer(r, q).step([np.ones(3)]); assert q[0][0] == 0.75\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(target), "SYMOPT_CACHE_DIR": str(tmp_path / "cache"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    run = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"

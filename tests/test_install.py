"""A non-editable install (a built wheel) finds generated/ and templates/ and works -- also read-only.

The package is installed once (``pip install --target``).  Then:

* a fresh process imports the installed copy and runs a built-in and a user rule;
* the install is made **read-only for a child process**: the child runs in its own mount
  namespace (``unshare --mount``, plus ``--user --map-root-user`` when not root) where the
  folders are bind-mounted read-only, so every write fails with ``EROFS`` -- for root too,
  whom permission bits do not stop.  The child checks that writes really fail, imports
  symopt, runs ``adam`` (float64, 3 steps; NumPy's Adam, relative error <= 1e-12) and a
  user rule (heavy-ball momentum, 3 steps; NumPy, <= 1e-12), and records every warning:

  - ``home``: install read-only, home writable: numba caches in its user-wide folder,
    user rule modules go to ``~/.cache/symopt``; no warning;
  - ``fallback``: install and home read-only, a writable temporary folder: numba's cache and
    the user rule module go to the private ``$TMPDIR/symopt-cache-<uid>`` with exactly one
    ``CacheWarning``; a second process loads adam's kernel from that disk cache;
  - ``memory``: nothing writable (install, home, temporary folders, working folder): no
    disk cache at all, user rule module in memory, exactly one ``CacheWarning``.

If the machine does not let a process build a mount namespace with read-only bind
mounts, the read-only tests are skipped saying so: permission bits do not stop root, and
the test does not switch to another user (who might not be able to read the interpreter,
the venv or the install).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("install") / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--disable-pip-version-check", "-q", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    return target


def test_wheel_install_runs_builtin_and_user_rules(site, tmp_path):
    assert (site / "symopt" / "generated" / "__init__.py").exists()
    assert (site / "symopt" / "templates" / "optimizer_module.py.jinja").exists()
    code = (
        "import numpy as np, sympy as sp, symopt, sys\n"
        "assert symopt.__file__.startswith(sys.argv[1]), symopt.__file__\n"
        "p=[np.zeros(4)]; o=symopt.optimizer('notes.sgd', p, lr=0.5); o.step([np.ones(4)])\n"
        "assert p[0][0] == -0.5\n"
        "x, g = sp.symbols('x g'); lr = sp.Symbol('lr')\n"
        "r = symopt.Rule('wheel_gd', param=x, grad=g, hyper={lr: 0.25}, updates=[(x, x - lr*g)])\n"
        "q=[np.ones(3)]; symopt.optimizer(r, q).step([np.ones(3)]); assert q[0][0] == 0.75\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "SYMOPT_CACHE_DIR": str(tmp_path / "cache"),
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    run = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- read-only install
CHILD = textwrap.dedent('''
    import errno, json, os, sys, warnings
    warnings.simplefilter("always")
    record = warnings.catch_warnings(record=True)
    caught = record.__enter__()
    out = {"writes": {}}
    for label, folder in json.loads(sys.argv[1]).items():  # the folders this run must not be able to write
        try:
            with open(os.path.join(folder, ".symopt-write-probe"), "w"):
                pass
            out["writes"][label] = "written"
        except OSError as e:
            out["writes"][label] = errno.errorcode.get(e.errno, str(e.errno))

    import numpy as np, sympy as sp, symopt
    import numba
    out["symopt"] = symopt.__file__

    # adam, float64, three steps, against NumPy's Adam (torch's formula)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5))
    ref, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    opt = symopt.optimizer("adam", [x], lr=0.01, betas=(0.9, 0.99), eps=1e-8)
    for t in range(1, 4):
        g = rng.standard_normal((3, 5))
        opt.step([g])
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        ref = ref - 0.01 / (1 - 0.9**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.99**t) + 1e-8)
    out["adam_err"] = float(np.max(np.abs(x - ref) / np.abs(ref)))
    kernels = [k for k in vars(sys.modules["symopt.generated.adam"]).values()
               if isinstance(k, numba.core.dispatcher.Dispatcher) and k.signatures]
    out["adam_kernels"] = [{"name": k.__name__, "cache": type(k._cache).__name__,
                            "path": getattr(k._cache, "cache_path", None),
                            "hits": sum(k.stats.cache_hits.values()),
                            "misses": sum(k.stats.cache_misses.values())} for k in kernels]

    # a user rule: heavy-ball momentum, three steps, against NumPy
    p, gs, mm = sp.symbols("p g m"); lr, beta = sp.symbols("lr beta")
    rule = symopt.Rule("read only heavy ball", param=p, grad=gs, state={mm: 0}, hyper={lr: 0.1, beta: 0.9},
                       updates=[(mm, beta * mm + gs), (p, p - lr * mm)])
    y = np.linspace(-1.0, 1.0, 7)
    yref, mom = y.copy(), np.zeros(7)
    uopt = symopt.optimizer(rule, [y], lr=0.5)
    for k in range(3):
        g = np.cos(np.arange(7.0) + k)
        uopt.step([g])
        mom = 0.9 * mom + g
        yref = yref - 0.5 * mom
    out["user_err"] = float(np.max(np.abs(y - yref) / np.abs(yref)))
    out["user_module"] = getattr(uopt.module, "__file__", None)
    record.__exit__(None, None, None)
    out["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
    print("RESULT " + json.dumps(out))
''')


def _namespace_prefix() -> list:
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def _read_only(folders, argv) -> list:
    """``argv`` run in a mount namespace where each of ``folders`` is bind-mounted read-only."""
    mounts = " && ".join(f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))} && "
                         f"mount -o remount,bind,ro {shlex.quote(str(d))}" for d in folders)
    return [*_namespace_prefix(), "sh", "-c", f'{mounts} && exec "$@"', "sh", *argv]


@pytest.fixture(scope="module")
def read_only_works(tmp_path_factory):
    """Skips unless a child can be given read-only bind mounts that stop even root's writes."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("read-only install: no `unshare`/`mount` to give the child process read-only folders "
                    "(as root, permission bits would not stop its writes)")
    probe = tmp_path_factory.mktemp("ro-probe")
    run = subprocess.run(_read_only([probe], ["sh", "-c", f"touch {shlex.quote(str(probe / 'x'))}"]),
                         capture_output=True, text=True, timeout=60)
    if run.returncode == 0 or "Read-only file system" not in run.stderr:
        pytest.skip(f"read-only install: this machine does not allow a mount namespace with read-only bind "
                    f"mounts (unshare/mount said: {run.stderr.strip()[-300:] or run.returncode})")
    assert not (probe / "x").exists()


def _run_child(site, folders, env, cwd, must_not_write):
    child_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(site), **env}
    run = subprocess.run(_read_only(folders, [sys.executable, "-c", CHILD, json.dumps(must_not_write)]),
                         capture_output=True, text=True, timeout=300, env=child_env, cwd=cwd)
    assert run.returncode == 0, run.stderr[-4000:]
    line = [s for s in run.stdout.splitlines() if s.startswith("RESULT ")]
    assert line, run.stdout[-2000:] + run.stderr[-2000:]
    out = json.loads(line[0][len("RESULT "):])
    assert out["symopt"].startswith(str(site)), out["symopt"]
    assert out["writes"] == {k: "EROFS" for k in must_not_write}, out["writes"]  # the folders really are read-only
    assert out["adam_err"] <= 1e-12, out
    assert out["user_err"] <= 1e-12, out
    assert len(out["warnings"]) <= 1, out["warnings"]
    return out


def _fresh(tmp_path, *names):
    dirs = []
    for name in names:
        d = tmp_path / name
        d.mkdir()
        dirs.append(d)
    return dirs


def test_read_only_install_with_a_writable_home_needs_no_warning(site, tmp_path, read_only_works):
    home, tmp = _fresh(tmp_path, "home", "tmp")
    out = _run_child(site, [site], {"HOME": str(home), "TMPDIR": str(tmp)}, tmp_path,
                     {"install": str(site / "symopt" / "generated")})
    assert out["warnings"] == []
    assert out["user_module"].startswith(str(home / ".cache" / "symopt" / "kernels"))
    assert out["adam_kernels"] and all(k["cache"] == "FunctionCache" and k["path"].startswith(str(home / ".cache"))
                                       for k in out["adam_kernels"])
    assert list((home / ".cache" / "numba").rglob("*.nbi"))          # numba's user-wide cache was written


def test_read_only_install_and_home_fall_back_to_a_private_temp_folder(site, tmp_path, read_only_works):
    home, tmp = _fresh(tmp_path, "home", "tmp")
    folders = [site, home]
    env = {"HOME": str(home), "TMPDIR": str(tmp)}
    probes = {"install": str(site / "symopt" / "runtime"), "home": str(home)}
    fallback = tmp / "symopt-cache-0"  # uid 0 in the namespace: root, or the user mapped to root
    for run in ("cold", "warm"):
        out = _run_child(site, folders, env, tmp_path, probes)
        assert len(out["warnings"]) == 1, out["warnings"]
        category, message = out["warnings"][0]
        # one warning for the one fallback folder, whichever cache asks first (numba's or the user modules')
        assert category == "CacheWarning" and str(fallback) in message, message
        assert out["user_module"].startswith(str(fallback / "kernels")), out["user_module"]
        kernels = out["adam_kernels"]
        assert kernels and all(k["cache"] == "FunctionCache" and k["path"].startswith(str(fallback / "numba"))
                               for k in kernels), kernels
        if run == "cold":
            assert all(k["misses"] >= 1 for k in kernels), kernels
        else:  # the second process loads adam's compiled kernel from the fallback disk cache
            assert all(k["hits"] >= 1 and k["misses"] == 0 for k in kernels), kernels
    assert stat_private(fallback)


def stat_private(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path.stat().st_mode & 0o077) == 0


def test_nothing_writable_runs_without_a_disk_cache(site, tmp_path, read_only_works):
    home, tmp = _fresh(tmp_path, "home", "tmp")
    temps = [Path(d) for d in ("/tmp", "/var/tmp", "/usr/tmp") if Path(d).is_dir() and not Path(d).is_symlink()]
    folders = [site, home, tmp, *temps, tmp_path]
    probes = {"install": str(site / "symopt" / "generated"), "home": str(home), "tmpdir": str(tmp),
              **{d.name: str(d) for d in temps}, "cwd": str(tmp_path)}
    out = _run_child(site, folders, {"HOME": str(home), "TMPDIR": str(tmp)}, tmp_path, probes)
    assert len(out["warnings"]) == 1, out["warnings"]
    category, message = out["warnings"][0]
    assert category == "CacheWarning" and "kept in memory" in message, message
    assert out["user_module"] is None
    assert out["adam_kernels"] and all(k["cache"] == "NullCache" for k in out["adam_kernels"]), out["adam_kernels"]
    assert not any(home.iterdir()) and not any(tmp.iterdir())

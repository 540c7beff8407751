"""The user kernel cache under concurrency, corruption and read-only folders.

* Eight processes generate and use the same new user rule at the same moment (they
  meet at a file barrier right before ``symopt.optimizer``): all succeed, all compute
  the NumPy reference's result, and the cache holds exactly one module for the rule,
  sealed, with the right header hash, and no temporary files.
* A cached module that was edited (a line that would create a canary file),
  re-sealed with malicious content, truncated, emptied, or written by an older
  symopt is regenerated, never executed: the canary never appears and the file is
  restored to the fresh text.
* A cache folder that cannot be written falls back to the per-user temporary folder,
  and with no writable folder at all to an in-memory module (numba disk cache off),
  each with exactly one ``CacheWarning`` however many rules are loaded.
"""
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symopt
from symopt import cachedirs
from symopt.cachedirs import CacheWarning
from symopt.codegen.emit import read_header_hash, user_module
from symopt.files import SEAL_PREFIX, is_intact, seal
from symopt.rulebook.rule import Family

NPROC = 8

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import numpy as np, sympy as sp, symopt

    barrier, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    p, g, m = sp.symbols("p g m"); lr, beta = sp.symbols("lr beta")
    rule = symopt.Rule("concurrent heavy ball", param=p, grad=g, state={m: 0}, hyper={lr: 0.1, beta: 0.9},
                       updates=[(m, beta * m + g), (p, p - lr * m)])
    (barrier / me).touch()
    deadline = time.time() + 120
    while len(list(barrier.iterdir())) < n and time.time() < deadline:
        time.sleep(0.002)
    x = np.linspace(-1.0, 1.0, 7)
    opt = symopt.optimizer(rule, [x], lr=0.5)
    ref, mom = np.linspace(-1.0, 1.0, 7), np.zeros(7)
    for k in range(3):
        grad = np.cos(np.arange(7.0) + k)
        opt.step([grad])
        mom = 0.9 * mom + grad
        ref = ref - 0.5 * mom
    assert np.allclose(x, ref, rtol=1e-12, atol=0), (x, ref)
    print("ok", opt.module.__file__)
""")


def test_eight_processes_generate_and_use_one_module(tmp_path):
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    (tmp_path / "child.py").write_text(CHILD)
    env = {**os.environ, "SYMOPT_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(barrier), str(k), str(NPROC)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k in range(NPROC)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    files = {out.split()[1] for out, _ in outs}
    assert len(files) == 1, f"processes used different modules: {files}"
    kernels = cache / "kernels"
    modules = sorted(kernels.glob("*.py"))
    assert [m.name for m in modules] == [Path(files.pop()).name]
    assert is_intact(modules[0]) and read_header_hash(modules[0]) is not None
    leftovers = [f.name for f in kernels.iterdir() if f.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def _family(tag: str) -> Family:
    p, g, v = sp.symbols("p g v")
    lr = sp.Symbol("lr")
    rule = symopt.Rule(f"cache probe {tag}", param=p, grad=g, state={v: 0}, hyper={lr: 0.1},
                       updates=[(v, v + g * g), (p, p - lr * g / (sp.sqrt(v) + 1))])
    return Family.of(rule)


def _reseal(text: str) -> str:
    body = text[:text.rindex(SEAL_PREFIX)]
    return seal(body)


def _corruptions(canary: Path):
    evil = f"open({str(canary)!r}, 'w').write('ran')\n"
    return {
        "edited": lambda t: t.replace("\nimport math\n", f"\nimport math\n{evil}", 1),
        "edited and re-sealed": lambda t: _reseal(t.replace("\nimport math\n", f"\nimport math\n{evil}", 1)),
        "truncated": lambda t: t[: len(t) // 2],
        "empty": lambda t: "",
        "older symopt": lambda t: _reseal(t.replace("SYMOPT_VERSION = '", "SYMOPT_VERSION = '0.0.0.dev-", 1)
                                          .replace("INPUT_HASH = '", "INPUT_HASH = '00", 1)),
        "not utf-8": lambda t: t.encode("utf-8")[:100] + b"\xff\xfe" + t.encode("utf-8")[100:],
    }


@pytest.mark.parametrize("case", list(_corruptions(Path("x"))))
def test_damaged_cached_module_is_regenerated_never_run(tmp_path, monkeypatch, case):
    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(tmp_path / "cache"))
    canary = tmp_path / "canary"
    family = _family(f"{case} {time.time_ns()}")
    first = user_module(family)
    fresh = first.path.read_text(encoding="utf-8")
    damaged = _corruptions(canary)[case](fresh)
    if isinstance(damaged, bytes):
        first.path.write_bytes(damaged)
    else:
        first.path.write_text(damaged, encoding="utf-8")
    again = user_module(family)
    assert again.path == first.path and again.text == fresh
    assert first.path.read_text(encoding="utf-8") == fresh, "the damaged file was not replaced"
    if case == "edited":  # run it for real once: the optimizer builds from the regenerated module
        first.path.write_text(damaged, encoding="utf-8")
        x = np.ones(3)
        opt = symopt.optimizer(family, [x], lr=0.5)
        opt.step([np.full(3, 2.0)])
        assert np.allclose(x, 1 - 0.5 * 2 / (2 + 1))
    assert not canary.exists(), "code from a damaged cache file ran"


def _not_writable_dir(tmp_path: Path, name: str) -> Path:
    """A cache path no process can create: its parent is a regular file (fails even for root)."""
    blocker = tmp_path / f"{name}-is-a-file"
    blocker.write_text("")
    return blocker / "cache"


def _load_two_rules(tag):
    results = []
    for k in range(2):
        x = np.ones(4)
        opt = symopt.optimizer(_family(f"{tag} {k} {time.time_ns()}"), [x], lr=0.5)
        opt.step([np.full(4, 2.0)])
        assert np.allclose(x, 1 - 0.5 * 2 / (2 + 1))
        results.append(opt.module)
    return results


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(cachedirs, "_warned", set())


def test_unwritable_cache_falls_back_to_private_temp_folder_with_one_warning(tmp_path, monkeypatch,
                                                                              fresh_warnings):
    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(_not_writable_dir(tmp_path, "cache")))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mods = _load_two_rules("fallback")
    ours = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "cannot use the kernel cache folder" in str(ours[0].message)
    fallback = tmp_path / "tmp" / f"symopt-cache-{os.getuid()}"
    for mod in mods:
        assert Path(mod.__file__).parent == fallback / "kernels"
    assert stat.S_IMODE(os.stat(fallback).st_mode) & 0o077 == 0


def test_no_writable_folder_runs_from_memory_with_one_warning(tmp_path, monkeypatch, fresh_warnings):
    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(_not_writable_dir(tmp_path, "cache")))
    monkeypatch.setattr(tempfile, "tempdir", str(_not_writable_dir(tmp_path, "tmp")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mods = _load_two_rules("memory")
    ours = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "kept in memory" in str(ours[0].message)
    assert all(getattr(m, "__file__", None) is None for m in mods)


def test_unsafe_shared_fallback_folder_is_not_used(tmp_path, monkeypatch, fresh_warnings):
    """A fallback folder writable by others (planted in a shared /tmp) is never used."""
    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(_not_writable_dir(tmp_path, "cache")))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    planted = tmp_path / "tmp" / f"symopt-cache-{os.getuid()}"
    planted.mkdir(parents=True)
    os.chmod(planted, 0o777)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        um = user_module(_family(f"planted {time.time_ns()}"))
    assert um.path is None
    assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    assert not any(planted.iterdir())


def test_read_only_cache_with_an_intact_module_is_used_without_warning(tmp_path, monkeypatch, fresh_warnings):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(cache))
    family = _family(f"read-only {time.time_ns()}")
    made = user_module(family)
    for d in (cache / "kernels", cache):
        os.chmod(d, 0o555)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = user_module(family)
        assert again.path == made.path and again.text == made.text
        assert not [w for w in caught if issubclass(w.category, CacheWarning)]
        if os.geteuid() != 0:  # permission bits bind only non-root users: then a new rule must fall back
            monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
            (tmp_path / "tmp").mkdir()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                other = user_module(_family(f"read-only other {time.time_ns()}"))
            assert other.path is not None and other.path.parent.parent != cache
            assert len([w for w in caught if issubclass(w.category, CacheWarning)]) == 1
    finally:
        for d in (cache, cache / "kernels"):
            os.chmod(d, 0o755)


def test_seal_detects_any_change():
    text = seal("x = 1\n")
    digest = hashlib.sha256(b"x = 1\n").hexdigest()
    assert text.endswith(f"{digest}\n")


def test_module_from_another_generator_is_regenerated_never_reused(tmp_path, monkeypatch):
    """The input hash covers the code generator's own source: with another generator digest (as after
    an upgrade), user_module writes and returns a new module, even where a file from the old generator
    sits at the new module's path."""
    from symopt.codegen import render

    monkeypatch.setenv("SYMOPT_CACHE_DIR", str(tmp_path / "cache"))
    family = _family(f"generator {time.time_ns()}")
    old = user_module(family)
    monkeypatch.setattr(render, "generator_digest", lambda: "0" * 64)
    digest = render.family_hash(family)
    assert digest != old.digest
    stale = old.path.with_name(f"{old.name.rsplit('_', 1)[0]}_{digest[:16]}.py")
    stale.write_text(old.text, encoding="utf-8")  # intact and sealed, but generated by the old generator
    new = user_module(family)
    assert new.path == stale and new.digest == digest
    assert read_header_hash(new.path) == digest and f"INPUT_HASH = '{digest}'" in new.text
    body = [t[:t.rindex(SEAL_PREFIX)] for t in (new.text, old.text)]
    assert body[0].replace(digest, old.digest) == body[1]  # same rule: only the hashes differ
    assert old.path.read_text(encoding="utf-8") == old.text


def test_generator_digest_covers_planner_printers_render_emit_and_templates():
    from importlib import resources

    from symopt.codegen.render import generator_files

    labels = {label for label, _ in generator_files()}
    expected = {f"symopt.codegen/{n}.py" for n in ("plan", "printers", "render", "emit", "names", "audit")}
    expected |= {f"symopt.templates/{e.name}" for e in resources.files("symopt.templates").iterdir()
                 if e.name.endswith(".jinja")}
    assert expected <= labels and {"symopt/files.py", "symopt/functions.py", "symopt/frame_abi.py"} <= labels

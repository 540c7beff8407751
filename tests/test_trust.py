"""Trust boundaries (docs/security.md): what another local user, a crafted file or hostile text controls.

Each test names the item of the threat model it covers:

1. planted user modules (world-writable or foreign cache folder, a valid seal without the MAC,
   attribute chains the audit refuses);
2. planted numba cache index (a pickle that would run when unpickled);
3. ``chmod`` by name after a write (a swapped symlink);
4. a FIFO where a module should be;
5. expressions that make SymPy evaluate for minutes (nested powers, huge exponents);
6. a zip bomb in a checkpoint;
7. a load that fails after changing state (step 2**63-1, a read-only param);
8. gradients aliasing params or each other, params whose buffer changed;
9. truncated or empty numba cache entries;
10. every malformed checkpoint raises ``symopt.CheckpointError``; escapes in names; orphaned ``.tmp``.

Files of "another user" are planted as root with ``os.chown`` to a second uid (created with
``useradd`` when possible); the mode-based variants (a world-writable folder or file) run as any user.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import threading
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import symopt
from symopt import cachedirs
from symopt.cachedirs import CacheWarning
from symopt.codegen.audit import AuditError, audit_module
from symopt.codegen.emit import user_module
from symopt.files import atomic_write, is_intact, read_regular, seal, sign, signed
from symopt.rulebook.metadata import RuleError
from symopt.rulebook.parse import expr_from_data, parse_expression

SHAPES = [(3, 4), (5,)]


# ----------------------------------------------------------------------------- fixtures
def _other_uid() -> int | None:
    """A uid that is not ours, usable with os.chown (root only); None where the OS forbids it."""
    if not hasattr(os, "getuid") or os.getuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam("symopt_other").pw_uid
    except KeyError:
        pass
    if shutil.which("useradd"):
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "symopt_other"], capture_output=True,
                       check=False)
        try:
            return pwd.getpwnam("symopt_other").pw_uid
        except KeyError:
            pass
    return 54321  # root may chown to a uid that has no account


OTHER_UID = _other_uid()
needs_chown = pytest.mark.skipif(OTHER_UID is None, reason="planting a file owned by another uid needs root "
                                                           "(os.chown); the mode-based variant runs instead")


@pytest.fixture
def private(tmp_path, monkeypatch):
    """A fresh private fallback folder, secret key and warning memory, all under tmp_path."""
    tmp = tmp_path / "systmp"
    tmp.mkdir(mode=0o700)
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(cachedirs, "_keys", {})
    monkeypatch.setattr(cachedirs, "_warned", set())
    return tmp / f"symopt-cache-{os.getuid()}"


def _family():
    from symopt.rulebook.catalog import builtin_families

    return builtin_families()["sgd"]


def _ours(caught):
    return [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


# ----------------------------------------------------------------------------- item 1: planted modules
@pytest.mark.parametrize("how", ["world-writable", pytest.param("other owner", marks=needs_chown)])
def test_untrusted_cache_folder_is_passed_over_with_one_warning(tmp_path, private, how):
    shared = tmp_path / "shared"
    shared.mkdir()
    if how == "world-writable":
        os.chmod(shared, 0o1777)
        why = "writable by group or others"
    else:
        os.chown(shared, OTHER_UID, OTHER_UID)
        why = f"owned by uid {OTHER_UID}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = user_module(_family(), shared)
        user_module(_family(), shared)
    assert mod.path is not None and private in mod.path.parents, mod.path
    assert not any(shared.rglob("*.py")), "a module was written into the untrusted folder"
    msgs = _ours(caught)
    assert len(msgs) == 1 and str(shared) in msgs[0] and why in msgs[0], msgs


def _plant(path, text):
    os.chmod(path, 0o600)
    path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("forgery", ["resealed, no MAC", "MAC of another key", "stale MAC"])
def test_module_without_a_valid_mac_is_regenerated_never_run(tmp_path, private, forgery):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    mod = user_module(_family(), cache)
    assert signed(mod.text, cachedirs.secret_key()) and cachedirs._is_guarded(str(mod.path))
    body = mod.text[:mod.text.rstrip("\n").rfind("\n") + 1]       # the sealed module without its MAC
    lines = body.splitlines(keepends=True)[:-1]                  # without its seal
    evil = seal("".join(lines) + "CANARY = 'planted'\n")        # passes seal, hash and audit
    if forgery == "resealed, no MAC":
        planted = evil
    elif forgery == "MAC of another key":
        planted = sign(evil, os.urandom(32))
    else:  # the MAC line of the genuine file under the planted text
        planted = evil + mod.text.splitlines(keepends=True)[-1]
    _plant(mod.path, planted)
    again = user_module(_family(), cache)
    assert again.text == mod.text and "CANARY" not in again.text
    assert mod.path.read_text(encoding="utf-8") == mod.text, "the planted file was not replaced"


@pytest.mark.parametrize("code", [
    "numba.core.config.os.system('id')",
    "np.load(x, allow_pickle=True)",
    "np.ctypeslib.as_array(x)",
    "np.zeros(1).ctypes",
    "x.ctypes",
    "x.ctypes.data_as(None)",
    "np.ctypes.data",
    "math.__dict__",
    "x.tofile('/tmp/f')",
])
def test_audit_allows_only_the_attributes_generated_code_uses(code):
    text = f"import math\nimport numba\nimport numpy as np\n\n\ndef f(x):\n    return {code}\n"
    with pytest.raises(AuditError):
        audit_module(text)


def test_audit_accepts_what_the_generator_writes():
    text = ("import math\nimport numba\nimport numpy as np\n\n\n@numba.njit(cache=True)\n"
            "def f(x, out):\n    for i in numba.prange(x.shape[0]):\n"
            "        out[i] = np.float32(math.sqrt(x[i])) + np.sqrt(x[i]) * math.pi\n"
            "    return out, np.full(1, x.ctypes.data, dtype=np.int64)\n")  # an argument's address, as the kernels take it
    audit_module(text)


def test_secret_key_is_private_and_a_readable_key_is_not_used(tmp_path, private):
    key = cachedirs.secret_key()
    path = tmp_path / "config" / "symopt" / "cache-key"
    st = os.stat(path)
    assert len(key) == 32 and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid()
    os.chmod(path, 0o644)  # readable by others: no longer secret
    cachedirs._keys.clear()
    other = cachedirs.secret_key()
    assert other != key and (private / "cache-key").exists()


# ----------------------------------------------------------------------------- items 3, 4: writes and reads
def test_atomic_write_sets_the_mode_on_the_descriptor_not_the_name(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("secret")
    os.chmod(victim, 0o600)
    target = tmp_path / "module.py"
    real_fsync = os.fsync

    def swap(fd):  # an attacker replaces the temporary file by a link to the victim's private file
        for tmp in tmp_path.glob(".module.py.*.tmp"):
            tmp.unlink()
            tmp.symlink_to(victim)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", swap)
    atomic_write(target, "x = 1\n")
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600 and victim.read_text() == "secret"


def test_a_fifo_at_a_module_path_is_refused_without_blocking(tmp_path, private):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    mod = user_module(_family(), cache)
    mod.path.unlink()
    os.mkfifo(mod.path)
    with pytest.raises(OSError, match="not a regular file"):
        read_regular(mod.path, 1 << 20)
    assert not is_intact(mod.path)
    done = []
    worker = threading.Thread(target=lambda: done.append(user_module(_family(), cache)), daemon=True)
    worker.start()
    worker.join(60)
    assert done and done[0].text == mod.text and stat.S_ISREG(os.lstat(mod.path).st_mode)


def test_a_symlinked_module_is_not_followed(tmp_path, private):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    mod = user_module(_family(), cache)
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_text(mod.path.read_text())
    mod.path.unlink()
    mod.path.symlink_to(elsewhere)
    with pytest.raises(OSError):
        read_regular(mod.path, 1 << 20)


# ----------------------------------------------------------------------------- items 2, 9: numba's cache
_KERNEL = "import numba\n\n\n@numba.njit(cache=True)\ndef bump(x):\n    return x + 1\n"


_loaded = []


def _load_kernel(folder):
    """A fresh module object (fresh dispatcher and cache) from ``folder/kern.py``."""
    _loaded.append(folder)
    spec = importlib.util.spec_from_file_location(f"_trust_kern_{len(_loaded)}", folder / "kern.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def kernel_folder(tmp_path, private):
    folder = tmp_path / "src"
    folder.mkdir(mode=0o700)
    (folder / "kern.py").write_text(_KERNEL)
    cachedirs.trust_sources(folder)
    assert _load_kernel(folder).bump(1) == 2  # compiles and writes numba's cache
    files = sorted((folder / "__pycache__").glob("kern.bump-*"))
    assert {f.suffix for f in files} == {".nbi", ".nbc"}
    return folder


class _Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("how", ["group/world-writable", pytest.param("other owner", marks=needs_chown)])
def test_planted_numba_index_is_never_unpickled(kernel_folder, tmp_path, how):
    canary = tmp_path / "canary"
    index = next((kernel_folder / "__pycache__").glob("kern.bump-*.nbi"))
    index.write_bytes(pickle.dumps(_Canary(str(canary))) + pickle.dumps(("stamp", {})))
    if how == "group/world-writable":
        os.chmod(index, 0o666)
    else:
        os.chown(index, OTHER_UID, OTHER_UID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _load_kernel(kernel_folder).bump(41) == 42
    assert not canary.exists(), "numba unpickled a planted index"
    assert any("removed numba's cache file" in m and index.name in m for m in _ours(caught)), _ours(caught)


def test_planted_index_of_a_builtin_kernel_is_never_unpickled(tmp_path):
    """A world-writable index of adam's float64 kernel (its frame twin) in a NUMBA_CACHE_DIR of this user; a new process
    steps adam (the rest of the cache is copied from the checkout's, so only that kernel compiles)."""
    from numba.core.caching import _CacheLocator
    from symopt.generated import adam

    numba_dir = tmp_path / "numba"
    sub = numba_dir / _CacheLocator.get_suitable_cache_subpath(adam.__file__)
    sub.mkdir(parents=True, mode=0o700)
    os.chmod(numba_dir, 0o700)
    for f in (Path(adam.__file__).parent / "__pycache__").glob("adam.adam_*.nb[ic]"):
        shutil.copy(f, sub)
    line = adam.adam_f64_frame.py_func.__code__.co_firstlineno   # the optimizer's entry point
    index = sub / f"adam.adam_f64_frame-{line}.py{sys.version_info[0]}{sys.version_info[1]}{sys.abiflags}.nbi"
    canary = tmp_path / "canary"
    index.write_bytes(pickle.dumps(_Canary(str(canary))) + pickle.dumps(("stamp", {})))
    os.chmod(index, 0o666)
    code = ("import numpy as np, symopt\np = [np.ones(3)]\nopt = symopt.optimizer('adam', p, lr=0.5)\n"
            "opt.step([np.ones(3)])\nprint(repr(float(p[0][0])))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_dir), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert abs(float(out.stdout) - 0.5) < 1e-7 and not canary.exists(), "numba unpickled a planted index"
    assert "removed numba's cache file" in out.stderr and index.name in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("suffix,damage", [(".nbi", "empty"), (".nbi", "truncated"), (".nbc", "empty"),
                                           (".nbc", "truncated")])
def test_corrupt_numba_cache_entry_is_a_miss_and_rewritten(kernel_folder, suffix, damage):
    path = next((kernel_folder / "__pycache__").glob(f"kern.bump-*{suffix}"))
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _load_kernel(kernel_folder).bump(1) == 2
    assert any("empty, truncated or corrupt" in m for m in _ours(caught)), _ours(caught)
    assert path.exists() and path.stat().st_size > 0
    assert _load_kernel(kernel_folder).bump(2) == 3  # the rewritten entry loads in the next process too


def test_untrusted_numba_cache_dir_falls_back_to_the_private_folder(kernel_folder, tmp_path, private, monkeypatch):
    from numba.core import config

    shared = tmp_path / "numba-shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setattr(config, "CACHE_DIR", str(shared))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _load_kernel(kernel_folder).bump(1) == 2
    assert not any(shared.rglob("*.nbi")) and any((private / "numba").rglob("kern.bump-*.nbi"))
    msgs = _ours(caught)
    assert any(f"NUMBA_CACHE_DIR={shared}" in m and "writable by group or others" in m for m in msgs), msgs


def test_a_cache_folder_opened_to_others_after_its_first_use_is_passed_over(kernel_folder, tmp_path, monkeypatch):
    """The locator checks a folder's parents once a process; the folder itself (owner, mode) at every function."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))   # numba's user-wide folder, next in line
    pycache = kernel_folder / "__pycache__"
    os.chmod(pycache, 0o777)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _load_kernel(kernel_folder).bump(1) == 2
    finally:
        os.chmod(pycache, 0o700)
    assert any((tmp_path / "cache").rglob("kern.bump-*.nbi")), "the kernel was not cached in the next folder"
    msgs = _ours(caught)
    assert any(str(pycache) in m and "writable by group or others" in m for m in msgs), msgs


# ----------------------------------------------------------------------------- item 5: hostile text
@pytest.mark.parametrize("text,match", [
    ("((9**1000)**1000)**1000", "outside float64's range"),
    ("9**(10**12)", "too large for an exact power"),
    ("(2*t)**(10**12)", "too large for an exact power"),
    ("floor(exp(10**100))", "not finite or outside float64's range"),
    ("Mod(exp(10**50), 7)", "not finite or outside float64's range"),
    ("-" * 300 + "t", "nested more than"),
    ("exp(" * 120 + "t" + ")" * 120, "nested more than"),
])
def test_formula_text_cannot_make_sympy_evaluate_for_long(text, match):
    with pytest.raises(RuleError, match=match):
        parse_expression(text)


@pytest.mark.parametrize("data,match", [
    (["Pow", ["int", 9], ["int", 10**12]], "too large for an exact power"),
    (["Pow", ["Pow", ["int", 9], ["int", 1000]], ["int", 1000]], "outside float64's range"),
    (["floor", ["exp", ["int", 10**100]]], "not finite"),
    (["int", 10**400], "outside float64's range"),
    (["Not"] * 1 + [["Not", ["sym", "t"]]] * 20000, "larger than"),
])
def test_stored_expressions_are_bounded_before_they_are_built(data, match):
    with pytest.raises(RuleError, match=match):
        expr_from_data(data)


@pytest.mark.parametrize("text,step", [("1/(t-1)", 1), ("log(5 - t)", 5), ("1/(t - 37)", 37), ("sqrt(3 - t)", 4)])
def test_schedule_undefined_at_a_step_is_refused_when_built(text, step):
    with pytest.raises(ValueError, match=rf"(undefined|not finite) at step t={step}\b"):
        symopt.schedule.expr(text)


# ----------------------------------------------------------------------------- items 6, 7, 10: checkpoints
def _adam(steps=(7, 1)):
    params = [np.linspace(-1, 1, int(np.prod(s))).reshape(s) for s in SHAPES]
    opt = symopt.optimizer("adam", params, lr=symopt.schedule.cosine(1e-2, total_steps=50))
    for k in range(max(steps)):
        opt.step([np.full(s, 0.1 * (k + 1)) if k < n else None for s, n in zip(SHAPES, steps)])
    return params, opt


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def _rezip(path, members, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _meta(members):
    return json.loads(str(np.lib.format.read_array(io.BytesIO(members["meta.npy"]))[()]))


def _with_meta(members, meta=None, text=None):
    return {**members, "meta.npy": _npy(np.array(text if text is not None else json.dumps(meta)))}


def _schedule_meta(members, expr, name="cosine"):
    meta = _meta(members)
    meta["groups"][0]["hyper"]["lr"] = {"schedule": {"expr": expr, "name": name, "params": {}, "horizon": 10}}
    return _with_meta(members, meta)


def _header(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip_bomb(members):
    """``state_0_0`` of the right header, followed by 64 MB of zeros (about 64 KB deflated)."""
    return {**members, "state_0_0.npy": _header((3, 4)) + b"\0" * (64 * 2**20)}


def _huge_header(members):
    """``state_0_0`` whose .npy header declares 10**12 x 4 values (the data of 3 x 4)."""
    data = members["state_0_0.npy"][len(_header((3, 4))):]
    return {**members, "state_0_0.npy": _header((10**12, 4)) + data}


def _huge_shape(members):
    meta = _meta(members)
    meta["shapes"][0] = [10**6, 10**6, 10**6]
    return _with_meta(members, meta)


MALFORMED = {
    "truncated": lambda path, m: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path, m: path.write_bytes(b""),
    "not a zip": lambda path, m: path.write_bytes(b"import os; os.system('touch canary')\n" * 10),
    "unsupported compression": lambda path, m: _rezip(path, m, zipfile.ZIP_BZIP2),
    "zip bomb member": lambda path, m: _rezip(path, _zip_bomb(m), zipfile.ZIP_DEFLATED),
    "huge declared shape": lambda path, m: _rezip(path, _huge_shape(m)),
    "huge .npy header shape": lambda path, m: _rezip(path, _huge_header(m)),
    "deep JSON": lambda path, m: _rezip(path, _with_meta(m, text="[" * 100000 + "]" * 100000)),
    "10**400": lambda path, m: _rezip(path, _with_meta(m, text=json.dumps(_meta(m)).replace(
        '"skipped_steps": 0', '"skipped_steps": 1' + "0" * 400))),
    "1e400 hyperparameter": lambda path, m: _rezip(path, _with_meta(m, text=json.dumps(_meta(m)).replace(
        '"eps": 1e-08', '"eps": 1e400'))),
    "schedule Pow(9, 10**12)": lambda path, m: _rezip(path, _schedule_meta(m, ["Pow", ["int", 9], ["int", 10**12]])),
    "schedule 1/(t-1)": lambda path, m: _rezip(path, _schedule_meta(
        m, ["Pow", ["Add", ["sym", "t"], ["int", -1]], ["int", -1]])),
    "schedule of an unknown node": lambda path, m: _rezip(path, _schedule_meta(m, ["eval", ["sym", "t"]])),
    "rule name with escapes": lambda path, m: _rezip(path, _with_meta(m, {**_meta(m), "rule": "adam\x1b[2J"})),
    "step 2**63-1": lambda path, m: _rezip(path, {**m, "step.npy": _npy(np.array([2**63 - 1, 1], np.int64))}),
    "step out of range for floats": lambda path, m: _rezip(path, {**m, "step.npy": _npy(np.array([2**53, 1]))}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_every_malformed_checkpoint_is_a_checkpoint_error_and_changes_nothing(tmp_path, case):
    params, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    MALFORMED[case](path, _members(path))
    before_params = [p.copy() for p in params]
    before_state = {j: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
                    for j, e in opt.state.items()}
    before_groups = repr(opt.param_groups)
    tracemalloc.start()
    try:
        with pytest.raises(symopt.CheckpointError):
            opt.load(path)
        target = [np.full(s, 3.0) for s in SHAPES]
        with pytest.raises(symopt.CheckpointError):
            symopt.load(path, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB allocated while refusing the file"
    assert all(np.all(p == 3.0) for p in target)
    assert all(np.array_equal(a, b) for a, b in zip(params, before_params))
    assert repr(opt.param_groups) == before_groups and opt.state[0]["step"] == 7 and opt.state[1]["step"] == 1
    for j, entry in opt.state.items():
        assert all(np.array_equal(entry[k], before_state[j][k]) for k in opt.state_keys)
    assert not (tmp_path / "canary").exists()


def test_a_fifo_checkpoint_is_refused_without_blocking(tmp_path):
    path = tmp_path / "ck.npz"
    os.mkfifo(path)
    with pytest.raises(symopt.CheckpointError, match="not a regular file"):
        symopt.load(path, [np.zeros(s) for s in SHAPES])


def test_only_the_needed_members_are_read(tmp_path):
    params, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    members = _members(path)
    members["junk.npy"] = b"\0" * (256 * 2**20)  # 256 MB of zeros: ~256 KB deflated, never decompressed
    _rezip(path, members, zipfile.ZIP_DEFLATED)
    target = [np.zeros(s) for s in SHAPES]
    tracemalloc.start()
    try:
        resumed = symopt.load(path, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20 and all(np.array_equal(a, b) for a, b in zip(target, params))
    assert resumed.step_counts.tolist() == [7, 1]


def test_load_state_dict_with_a_huge_step_changes_nothing():
    params, opt = _adam()
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2**63 - 1
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"] + 1.0
    before = opt.state_dict()
    with pytest.raises(ValueError, match="outside 0..2"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert opt.step_counts.tolist() == [7, 1]
    assert all(np.array_equal(after["state"][j][k], before["state"][j][k]) for j in (0, 1) for k in opt.state_keys)


def test_load_into_a_read_only_param_changes_nothing(tmp_path):
    _, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    target = [np.zeros(s) for s in SHAPES]
    opt2 = symopt.optimizer("adam", target, lr=symopt.schedule.cosine(1e-2, total_steps=50))
    target[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\] became read-only"):
        opt2.load(path)
    assert opt2.step_counts.tolist() == [0, 0] and all(np.all(p == 0) for p in target)
    assert not np.any(opt2.state[0]["exp_avg"])


def test_escapes_in_a_schedule_name_are_neutralised_in_reprs(tmp_path):
    _, opt = _adam()
    path = tmp_path / "ck.npz"
    symopt.save(path, opt)
    members = _members(path)
    meta = _meta(members)
    meta["groups"][0]["hyper"]["lr"]["schedule"]["name"] = "\x1b]0;owned\x07\x1b[2Jcosine"
    meta["groups"][0]["hyper"]["lr"]["schedule"]["params"] = {"\x1b[31mpeak": 0.01}
    _rezip(path, _with_meta(members, meta))
    resumed = symopt.load(path, [np.zeros(s) for s in SHAPES])
    text = repr(resumed.param_groups)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b]0;owned" in text


def test_orphaned_temporary_files_of_killed_saves_are_removed(tmp_path):
    _, opt = _adam()
    path = tmp_path / "ck.npz"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".ck.npz.{dead.pid}.abc123.tmp"
    orphan.write_bytes(b"\0" * 4096)
    live = tmp_path / f".ck.npz.{os.getppid()}.def456.tmp"  # a save still running in a live process
    live.write_bytes(b"\0")
    other = tmp_path / f".other.npz.{dead.pid}.x.tmp"
    other.write_bytes(b"\0")
    symopt.save(path, opt)
    assert not orphan.exists() and live.exists() and other.exists()
    assert symopt.load(path, [np.zeros(s) for s in SHAPES]).step_counts.tolist() == [7, 1]


# ----------------------------------------------------------------------------- item 8: aliasing
def _two():
    """Two params that are views of one buffer with a gap between them (so that a shifted view of a
    param stays inside the buffer)."""
    base = np.linspace(0, 1, 40)
    params = [base[:16].reshape(4, 4), base[20:26]]
    return base, params, symopt.optimizer("adam", params)


@pytest.mark.parametrize("case", ["its own param", "another param", "a shifted view of its own param",
                                  "each other", "each other, shifted"])
def test_gradients_overlapping_params_or_each_other_are_refused_before_anything_is_written(case):
    base, params, opt = _two()
    opt.step([np.ones((4, 4)), np.ones(6)])
    before = opt.state_dict()
    snapshot = [p.copy() for p in params]
    buf = np.zeros(64)
    grads = {
        "its own param": [params[0], np.ones(6)],
        "another param": [np.ones((4, 4)), base[3:9]],
        "a shifted view of its own param": [np.ones((4, 4)), base[21:27]],
        "each other": [buf[:16].reshape(4, 4), buf[:6]],
        "each other, shifted": [buf[:16].reshape(4, 4), buf[15:21]],
    }[case]
    with pytest.raises(ValueError, match=r"grads\[\d\] shares memory with (params|grads)\[\d\]"):
        opt.step(grads)
    assert all(np.array_equal(a, b) for a, b in zip(params, snapshot))
    after = opt.state_dict()
    assert opt.step_counts.tolist() == [1, 1]
    assert all(np.array_equal(after["state"][j][k], before["state"][j][k]) for j in (0, 1) for k in opt.state_keys)
    opt.step([np.ones((4, 4)), np.ones(6)])  # the next step with separate grads runs
    assert opt.step_counts.tolist() == [2, 2]


def test_step_at_with_an_aliasing_address_is_refused():
    _, params, opt = _two()
    addr = params[0].__array_interface__["data"][0]
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with params\[0\]"):
        opt.step_at([None, addr + 8])
    assert opt.step_counts.tolist() == [0, 0]


@pytest.mark.parametrize("change", ["reshaped", "replaced buffer", "read-only"])
def test_a_param_whose_buffer_changed_is_refused(change):
    _, params, opt = _two()
    if change == "reshaped":
        params[0].shape = (2, 8)
    elif change == "replaced buffer":
        params[1].__setstate__((1, (6,), np.dtype(np.float64), False, np.arange(6.0).tobytes()))
    else:
        params[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[\d\] (no longer uses the buffer|became read-only)"):
        opt.step([np.ones((4, 4)), np.ones(6)])
    assert opt.step_counts.tolist() == [0, 0]


@pytest.mark.parametrize("change", ["grad re-pointed at a param", "grad strides", "grad dtype", "grad reshaped",
                                    "param read-only", "param reshaped", "param replaced buffer"])
def test_changes_after_a_step_with_the_same_grads_are_caught(change):
    """The fast path of step() remembers the grads it checked (their addresses, then the words of the arrays'
    structs); a change to the very same grad or param objects after such a step is still refused, and
    nothing is written."""
    base, params, opt = _two()
    buf = np.zeros(40)
    grads = [buf[:16].reshape(4, 4), buf[20:26]]
    buf[:] = 1e-2
    for _ in range(3):  # the second call with the same arrays remembers their words, the third checks them by these
        opt.step(grads)
    snapshot = [p.copy() for p in params]
    before = opt.state_dict()
    if change == "grad re-pointed at a param":
        grads[1] = base[20:26]  # the same list, one entry now params[1] itself
        match = r"grads\[1\] shares memory with params\[1\]"
    elif change == "grad strides":
        with warnings.catch_warnings():  # NumPy 2.4 deprecates setting strides; it still changes them in place
            warnings.simplefilter("ignore", DeprecationWarning)
            grads[1].strides = (16,)  # every other element of buf[20:32]: same shape, not contiguous
        match = r"grads\[1\] is not C-contiguous"
    elif change == "grad dtype":
        grads[1].dtype = np.int64  # same itemsize and shape
        match = r"grads\[1\] has dtype int64"
    elif change == "grad reshaped":
        grads[0].shape = (2, 8)
        match = r"grads\[0\] has shape \(2, 8\)"
    elif change == "param read-only":
        params[0].flags.writeable = False
        match = r"params\[0\] became read-only"
    elif change == "param reshaped":
        params[1].shape = (3, 2)
        match = r"params\[1\] no longer uses the buffer"
    else:
        params[1].__setstate__((1, (6,), np.dtype(np.float64), False, np.arange(6.0).tobytes()))
        match = r"params\[1\] no longer uses the buffer"
    with pytest.raises((ValueError, TypeError), match=match):
        opt.step(grads)
    assert opt.step_counts.tolist() == [3, 3]
    if change != "param replaced buffer":
        assert all(np.array_equal(a.ravel(), b.ravel()) for a, b in zip(params, snapshot))
    after = opt.state_dict()
    assert all(np.array_equal(after["state"][j][k].ravel(), before["state"][j][k].ravel())
               for j in (0, 1) for k in opt.state_keys)


def test_a_grad_resized_in_place_is_read_at_its_new_address():
    """A grad object that keeps its identity but moves to another buffer (same shape, dtype) after a
    remembered step is read at its new address: the step equals one with a fresh copy."""
    _, params, opt = _two()
    ref = symopt.optimizer("adam", [p.copy() for p in params])
    grads = [np.full((4, 4), 1e-2), np.full(6, 1e-2)]
    for _ in range(3):
        opt.step(grads)
        ref.step([g.copy() for g in grads])
    new = np.linspace(-1, 1, 6)
    grads[1].__setstate__((1, (6,), np.dtype(np.float64), False, new.tobytes()))
    opt.step(grads)
    ref.step([grads[0].copy(), new])
    assert all(np.array_equal(a, b) for a, b in zip(opt.params, ref.params))


def test_new_grads_at_recycled_ids_and_a_param_reshaped_back_step_like_copies():
    """New grad arrays at every step (NumPy often puts them at the ids and addresses of the last ones) and a
    param reshaped and back between steps: each step reads the values it is given, as with fresh copies."""
    _, params, opt = _two()
    ref = symopt.optimizer("adam", [p.copy() for p in params])
    for k in range(6):
        opt.step([np.full((4, 4), 1e-2 * (k - 2)), np.linspace(-k, k, 6)])
        ref.step([np.full((4, 4), 1e-2 * (k - 2)), np.linspace(-k, k, 6)])
        if k == 3:
            params[0].shape = (2, 8)
            params[0].shape = (4, 4)
    assert opt.step_counts.tolist() == [6, 6]
    assert all(np.array_equal(x, y) for x, y in zip(opt.params, ref.params))


def test_grad_sets_in_turn_are_read_at_their_addresses_and_checked_after_a_move():
    """Two sets of grads passed in turn (their pointer readers are kept by id): each step reads the set
    it is given, a grad of one set moved to another buffer in place is read at its new address, and a
    set re-pointed at a param is refused with nothing written."""
    base, params, opt = _two()
    ref = symopt.optimizer("adam", [p.copy() for p in params])
    a = [np.full((4, 4), 1e-2), np.full(6, -2e-2)]
    b = [np.full((4, 4), -3e-2), np.full(6, 4e-2)]
    for grads in (a, b, a, b):
        opt.step(grads)
        ref.step([g.copy() for g in grads])
    assert all(np.array_equal(x, y) for x, y in zip(opt.params, ref.params))
    new = np.linspace(-1, 1, 6)
    a[1].__setstate__((1, (6,), np.dtype(np.float64), False, new.tobytes()))
    for grads in (a, b):
        opt.step(grads)
        ref.step([g.copy() for g in grads])
    assert all(np.array_equal(x, y) for x, y in zip(opt.params, ref.params))
    snapshot = [p.copy() for p in params]
    b[1] = base[20:26]
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with params\[1\]"):
        opt.step(b)
    assert all(np.array_equal(x, y) for x, y in zip(params, snapshot))


def test_step_counts_that_differ_after_loading_step_each_param_at_its_own_count():
    """The common step count kept beside the per-param counts follows load_state_dict and None grads."""
    _, params, opt = _two()
    sd = opt.state_dict()
    sd["state"][0]["step"], sd["state"][1]["step"] = 7, 1
    opt.load_state_dict(sd)
    singles = [symopt.optimizer("adam", [p.copy()]) for p in params]
    for s, n in zip(singles, (7, 1)):
        one = s.state_dict()
        one["state"][0]["step"] = n
        s.load_state_dict(one)
    g = [np.full((4, 4), 1e-2), np.full(6, -1e-2)]
    for grads in (g, [g[0], None], g):
        opt.step(grads)
        for s, gj in zip(singles, grads):
            if gj is not None:
                s.step([gj])
    assert opt.step_counts.tolist() == [10, 3]
    assert all(np.array_equal(p, s.params[0]) for p, s in zip(opt.params, singles))


def test_remembered_gradient_addresses_step_like_fresh_gradients():
    """Sets of grads reused in turn (their checked address tables are kept), a step with a None grad
    (the thorough path) and step_at in between: the same result as fresh copies at every step."""
    _, params, opt = _two()
    ref_params = [p.copy() for p in params]
    ref = symopt.optimizer("adam", ref_params)
    rng = np.random.default_rng(5)
    sets = [[rng.standard_normal((4, 4)), rng.standard_normal(6)] for _ in range(3)]
    for k, which in enumerate([0, 1, 0, 2, "skip", 1, "at", 0, 2, 1]):
        if which == "skip":
            opt.step([sets[0][0], None])
            ref.step([sets[0][0].copy(), None])
        elif which == "at":
            opt.step_at([g.__array_interface__["data"][0] for g in sets[2]])
            ref.step([g.copy() for g in sets[2]])
        else:
            opt.step(sets[which])
            ref.step([g.copy() for g in sets[which]])
        assert all(np.array_equal(a, b) for a, b in zip(params, ref_params)), f"differs after step {k}"
    assert opt.step_counts.tolist() == ref.step_counts.tolist() == [10, 9]

"""The checkpoint file format behind ``symopt.save(path, opt)`` and ``symopt.load(path, params)``.

A checkpoint is one ``.npz`` file (NumPy's zip of arrays) that never needs pickle:
it is read with ``np.load(path, allow_pickle=False)`` and its metadata is JSON
text.  It holds

* ``meta``: a 0-d string array with JSON: the format name and version, the symopt
  version, the rule's public name, the variant, the variant's formula hash (a hash
  of its SymPy equations), the dtype, each param's shape, the param groups (which
  params, every hyperparameter value), the state keys, ``on_nonfinite`` and the
  number of skipped steps;
* ``step``: the int64 step count of every param;
* ``state_<k>_<j>``: state buffer ``k`` (the ``k``-th entry of ``meta["state_keys"]``)
  of param ``j``, in the optimizer's dtype; a factored rule's ``meta["state_kinds"]`` gives
  each one's shape (``row``: ``(…, m, 1)``...) and ``meta["layouts"]`` each param's layout
  (``matrix``: row/column states, ``vector``: full-shape), and a state the param's layout does
  not keep is absent;
* ``param_<j>``: the values of param ``j`` when the checkpoint was written (unless
  ``save(..., params=False)``).

Floats go through JSON as ``repr`` text, which reads back to the same double, and
state and params are stored in their own dtype, so a resumed run steps bit for bit
like an uninterrupted one.

Reading trusts nothing in the file (docs/security.md): :func:`read` opens a regular file,
reads and checks the metadata under hard limits (:data:`MAX_META_BYTES`, JSON depth,
integer sizes, counts, shapes, printable names) and the step counts; the state and param
arrays are read by :meth:`Reader.arrays` only after the metadata fits the optimizer, only
the members needed, each one's declared size (zip directory, then ``.npy`` header) checked
to be exactly what its shape needs before anything is decompressed, into new arrays; the
optimizer then checks the whole state before it modifies anything.  Another rule, variant
or formula (formula hash), another number or shape of params, and every malformed file
(truncated, not a zip, a zip bomb, a huge shape, deep JSON, out-of-range numbers, a schedule
that cannot be rebuilt) raise :class:`CheckpointError` naming the problem; another dtype
``TypeError``.  Files are written atomically (temporary file + rename), so a crash while
saving leaves the previous checkpoint; the next save removes the temporary file a killed
save left behind (:func:`symopt.files.atomic_write`).
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile

import numpy as np

from .._version import __version__
from ..files import atomic_write
from . import scheduled
from .matrix import state_shape

__all__ = ["CheckpointError", "Reader", "load_into", "read", "regroup", "saved_groups", "saved_rule", "set_schedule_codec",
           "write"]

FORMAT = "symopt-checkpoint"
FORMAT_VERSION = 1
#: State shapes a checkpoint may declare (``meta["state_kinds"]``, written for factored rules only).
STATE_KINDS = ("full", "row", "col", "vector")
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class CheckpointError(ValueError):
    """A checkpoint is malformed, or does not fit the optimizer/params it is loaded into
    (``symopt.CheckpointError``)."""


_schedule_codec = None


def set_schedule_codec(to_data, from_data) -> None:
    """How scheduled hyperparameters travel through the JSON metadata (they are SymPy expressions,
    so the codec lives above the runtime; ``symopt/__init__.py`` registers it).

    ``to_data(schedule)`` returns a JSON-ready dict, or None for a schedule type it cannot store;
    ``from_data(data)`` rebuilds the schedule (``TypeError``/``ValueError`` for malformed data).
    """
    global _schedule_codec
    _schedule_codec = (to_data, from_data)


def _plain(value, key: str = "value"):
    """A JSON-ready copy of a hyperparameter value (tuples become lists; a
    :class:`symopt.schedule.Schedule` becomes ``{"schedule": ...}`` with its exact expression)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value is None or isinstance(value, str):  # a choice (torch's adjust_lr_fn)
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v, key) for v in value]
    if scheduled.is_schedule(value):
        spec = None if _schedule_codec is None else _schedule_codec[0](value)
        if spec is None:
            raise TypeError(f"save: {key!r} is a {type(value).__name__} schedule; only symopt.schedule schedules "
                            f"can be stored in a checkpoint")
        try:
            json.dumps(spec)
        except (TypeError, ValueError):
            raise TypeError(f"save: the schedule of {key!r} has parameters that are not plain data") from None
        return {"schedule": spec}
    return float(value)


def _restore(value, path, key):
    """A hyperparameter value read back from JSON (a schedule is rebuilt from its expression)."""
    if isinstance(value, list):
        return [_restore(v, path, key) for v in value]
    if isinstance(value, dict):
        spec = value.get("schedule")
        if set(value) != {"schedule"} or not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            _fail(path, f"hyperparameter {key!r} holds a malformed value")
        horizon = spec.get("horizon")
        if horizon is not None and (type(horizon) is not int or horizon < 1):
            _fail(path, f"the schedule of {key!r} has a malformed horizon")
        if _schedule_codec is None:
            _fail(path, f"the schedule of {key!r} cannot be rebuilt without symopt.schedule")
        try:
            return _schedule_codec[1](spec)
        except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError) as exc:
            _fail(path, f"the schedule of {key!r} cannot be rebuilt: {type(exc).__name__}: {str(exc)[:200]}")
    if value is None or (type(value) is str and len(value) <= 64 and value.isprintable()):
        return value          # a choice (torch's adjust_lr_fn); the optimizer checks it is one of the options
    if type(value) not in (int, float, bool):
        _fail(path, f"hyperparameter {key!r} holds a {type(value).__name__}, not a number or a choice")
    return value


def write(path, opt, *, params: bool = True) -> None:
    """Write ``opt``'s state, step counts, hyperparameters and (``params=True``) param values to ``path``.

    ``opt`` is a :class:`symopt.runtime.optimizer.Optimizer` (read through its public
    interface); ``path`` is written exactly as given (no suffix is added), atomically.
    """
    tensors = opt.params
    keys = list(opt.state_keys)
    state = opt.state
    groups = []
    start = 0
    for group in opt.param_groups:
        n = len(group["params"])
        groups.append({"params": list(range(start, start + n)),
                       "hyper": {k: _plain(v, k) for k, v in group.items() if k != "params"}})
        start += n
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "symopt_version": __version__,
        "rule": opt.rule_name, "variant": opt.variant, "formula_hash": opt.formula_hash,
        "dtype": str(opt.dtype), "shapes": [list(p.shape) for p in tensors], "groups": groups,
        "state_keys": keys, "on_nonfinite": opt.on_nonfinite, "skipped_steps": int(opt.skipped_steps),
        "has_params": bool(params),
    }
    kinds = opt.state_kinds
    if any(kind != "full" for kind in kinds.values()):  # a factored rule: row/col states of their own shapes
        meta["state_kinds"] = [kinds[key] for key in keys]
        meta["layouts"] = list(opt.factored_layouts)  # per param: "matrix" (row/col states) or "vector"
        meta["factored_axes"] = [list(ax) for ax in opt.factored_axes]  # per param: its matrices' (row, col) axes
    mkeys = [list(opt.matrix_state_keys(j)) for j in range(len(tensors))]
    if any(mkeys):  # a preconditioned rule's matrix states, per param, each of its own shape
        meta["matrix_state_keys"] = mkeys
        meta["matrix_state_shapes"] = [[list(s) for s in opt.matrix_state_shapes(j)] for j in range(len(tensors))]
    arrays = {"meta": np.array(json.dumps(meta)),
              "step": np.array([state[j]["step"] for j in range(len(tensors))], dtype=np.int64)}
    for j in range(len(tensors)):
        for k, key in enumerate(keys):
            if key in state[j]:  # a factored rule keeps some states for some param shapes only
                value = state[j][key]
                arrays[f"state_{k}_{j}"] = np.ascontiguousarray(value).reshape(value.shape)  # 0-d stays 0-d
        for k, key in enumerate(mkeys[j]):
            arrays[f"matrix_{k}_{j}"] = np.ascontiguousarray(state[j][key])
        if params:
            arrays[f"param_{j}"] = tensors[j]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def _fail(path, message: str, exc=CheckpointError):
    raise exc(f"checkpoint {os.fspath(path)!s}: {message}")


# Hard limits on what a checkpoint may declare, checked before anything is decompressed or allocated.
MAX_META_BYTES = 1 << 20        # the JSON metadata
MAX_HEADER_BYTES = 1 << 16      # an .npy header
MAX_JSON_DEPTH = 32             # nesting of the metadata (a schedule's expression is checked by its codec)
MAX_PARAMS = 1 << 20
MAX_NDIM = 32
MAX_ELEMENTS = 1 << 40          # of one param (the params passed must have the same shapes anyway)
MAX_NAME = 200                  # characters of a rule, variant, state key or hyperparameter name
MAX_STEP = 2**53 - 1            # step counts are exact in the float64 scalar functions
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
#: Everything a malformed file can make the readers below raise.
_MALFORMED = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError,
              KeyError, TypeError, IndexError, OverflowError, RecursionError, UnicodeDecodeError, struct.error,
              RuntimeError)


def _name_ok(x) -> bool:
    """A short printable name (no control characters: no terminal escape sequences)."""
    return isinstance(x, str) and 0 < len(x) <= MAX_NAME and x.isprintable()


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"the integer {text[:24]}... is out of range")
    return int(text)


def _json_depth(obj) -> int:
    depth, stack = 0, [(obj, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            depth = max(depth, d)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return depth


def _open_regular(path):
    """A binary file object of the regular file ``path`` (``FileNotFoundError`` passes through; a FIFO,
    device or folder is a :class:`CheckpointError`, found without blocking)."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            _fail(path, "is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _member(zf: zipfile.ZipFile, name: str):
    """The directory entry of ``<name>.npy`` (None if absent), checked: a plain method, not encrypted."""
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        return None
    if info.compress_type not in _ZIP_METHODS or info.flag_bits & 0x1:
        raise ValueError(f"entry {name!r} is encrypted or uses an unsupported compression")
    return info


def _read_member(zf: zipfile.ZipFile, info, dtype, shape, what: str) -> np.ndarray:
    """A new array of ``dtype``/``shape`` from an ``.npy`` entry whose declared sizes (zip directory,
    then ``.npy`` header) match exactly, checked before anything is decompressed or allocated."""
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if not nbytes + 10 <= info.file_size <= nbytes + 10 + MAX_HEADER_BYTES:
        raise ValueError(f"{what} declares {info.file_size} bytes in the zip directory, expected {nbytes} plus a header")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            h_shape, fortran, h_dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=MAX_HEADER_BYTES)
        elif version in ((2, 0), (3, 0)):
            h_shape, fortran, h_dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=MAX_HEADER_BYTES)
        else:
            raise ValueError(f"{what} has .npy version {version}")
        if h_dtype != dtype or tuple(h_shape) != tuple(shape) or (fortran and len(shape) > 1):
            raise ValueError(f"{what} is {h_dtype}{list(h_shape)}, expected {dtype}{list(shape)}")
        out = np.empty(shape, dtype=dtype)
        view, done = memoryview(out).cast("B"), 0
        while done < nbytes:
            n = fh.readinto(view[done:])
            if not n:
                raise ValueError(f"{what} is truncated")
            done += n
        if fh.read(1):  # also reads to the end of the entry, where zipfile checks its CRC
            raise ValueError(f"{what} holds more data than its header declares")
    return out


def _read_meta(zf: zipfile.ZipFile, path) -> dict:
    info = _member(zf, "meta")
    if info is None:
        _fail(path, "has no 'meta' entry (not written by symopt.save)")
    if info.file_size > MAX_META_BYTES + MAX_HEADER_BYTES:
        _fail(path, f"'meta' declares {info.file_size} bytes; at most {MAX_META_BYTES}")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        shape, _fortran, dtype = reader(fh, max_header_size=MAX_HEADER_BYTES)
        if shape != () or dtype.kind != "U" or dtype.hasobject or dtype.itemsize > MAX_META_BYTES:
            _fail(path, "'meta' must be a 0-d string array")
        raw = fh.read(dtype.itemsize + 1)
    if len(raw) != dtype.itemsize:
        _fail(path, "'meta' is truncated")
    text = str(np.frombuffer(raw, dtype=dtype)[0])
    try:
        meta = json.loads(text, parse_int=_json_int)
    except RecursionError:
        _fail(path, "'meta' is nested too deeply")
    except ValueError as exc:
        _fail(path, f"'meta' is not JSON ({exc})")
    if _json_depth(meta) > MAX_JSON_DEPTH:
        _fail(path, f"'meta' is nested more than {MAX_JSON_DEPTH} levels deep")
    return meta


def _check_meta(meta, path) -> None:
    """Types, ranges and names of the metadata (the schedules' expressions are checked by their codec)."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(path, f"'meta' does not describe a {FORMAT}")
    if meta.get("format_version") != FORMAT_VERSION:
        _fail(path, f"format version {meta.get('format_version')!r}; this symopt reads version {FORMAT_VERSION}")
    for key, kind in (("rule", str), ("variant", str), ("formula_hash", str), ("dtype", str), ("shapes", list),
                      ("groups", list), ("state_keys", list), ("skipped_steps", int), ("has_params", bool)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool) is not (kind is bool):
            _fail(path, f"meta[{key!r}] is missing or not a {kind.__name__}")
    for key in ("rule", "variant", "formula_hash"):
        if not _name_ok(meta[key]):
            _fail(path, f"meta[{key!r}] is not a short printable name")
    if meta["dtype"] not in _DTYPES:
        _fail(path, f"dtype {meta['dtype']!r} is not float32 or float64")
    if not 0 <= meta["skipped_steps"] <= MAX_STEP:
        _fail(path, "meta['skipped_steps'] is out of range")
    if meta.get("on_nonfinite", "raise") not in ("raise", "skip", "ignore"):
        _fail(path, "meta['on_nonfinite'] is not 'raise', 'skip' or 'ignore'")
    if len(meta["shapes"]) > MAX_PARAMS or len(meta["groups"]) > MAX_PARAMS:
        _fail(path, f"declares more than {MAX_PARAMS} params or groups")
    for j, s in enumerate(meta["shapes"]):
        if (not isinstance(s, list) or len(s) > MAX_NDIM
                or not all(type(d) is int and 0 <= d <= MAX_ELEMENTS for d in s)
                or np.prod(s, dtype=object) > MAX_ELEMENTS):
            _fail(path, f"shape of param {j} is malformed: {str(s)[:80]}")
    keys = meta["state_keys"]
    if len(keys) > 64 or not all(_name_ok(k) for k in keys):
        _fail(path, "state keys must be short printable strings")
    kinds = meta.get("state_kinds", ["full"] * len(keys))
    if not isinstance(kinds, list) or len(kinds) != len(keys) or not all(k in STATE_KINDS for k in kinds):
        _fail(path, f"meta['state_kinds'] must list one of {STATE_KINDS} per state key")
    layouts = meta.get("layouts", [None] * len(meta["shapes"]))
    if not isinstance(layouts, list) or len(layouts) != len(meta["shapes"]) or not all(
            lay is None or lay == ("matrix" if len(s) >= 2 else "vector") or lay == "vector"
            for lay, s in zip(layouts, meta["shapes"])):
        _fail(path, "meta['layouts'] must give 'matrix' (only for a param of two or more dimensions) or 'vector' "
                    "per param")
    mkeys, mshapes = meta.get("matrix_state_keys", []), meta.get("matrix_state_shapes", [])
    if not isinstance(mkeys, list) or (mkeys and len(mkeys) != len(meta["shapes"])) or not all(
            isinstance(ks, list) and len(ks) <= 2 * MAX_NDIM and all(_name_ok(k) for k in ks) for ks in mkeys):
        _fail(path, "matrix state keys must be a list per param of short printable strings")
    if mkeys and (not isinstance(mshapes, list) or len(mshapes) != len(meta["shapes"]) or not all(
            isinstance(ss, list) and len(ss) == len(ks) and all(
                isinstance(s, list) and len(s) == 2 and all(type(d) is int and 0 <= d <= MAX_ELEMENTS for d in s)
                and s[0] * s[1] <= MAX_ELEMENTS for s in ss) for ss, ks in zip(mshapes, mkeys))):
        _fail(path, "matrix state shapes are malformed")
    seen = []
    for gi, g in enumerate(meta["groups"]):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or not isinstance(g.get("hyper"), dict):
            _fail(path, f"param group {gi} is malformed")
        for k in g["hyper"]:
            if not _name_ok(k):
                _fail(path, f"param group {gi} has a hyperparameter name that is not a short printable string")
        seen += g["params"]
    n = len(meta["shapes"])
    if seen != list(range(n)):
        _fail(path, f"param groups list params {str(seen)[:80]}, expected 0..{n - 1} in order")


class Reader:
    """An open checkpoint: ``meta`` and ``step`` checked (:func:`read`); the arrays are read by
    :meth:`arrays` only for the shapes they must have, into new arrays.  Use as a context manager."""

    def __init__(self, path):
        self.path = path
        fh = _open_regular(path)
        try:
            self._zip = zipfile.ZipFile(fh)
        except BaseException:
            fh.close()
            raise
        self._fh = fh
        try:
            self.meta = _read_meta(self._zip, path)
            _check_meta(self.meta, path)
            n = len(self.meta["shapes"])
            info = _member(self._zip, "step")
            if info is None:
                _fail(path, f"'step' must be {n} non-negative int64 step counts")
            try:
                step = _read_member(self._zip, info, np.dtype("<i8"), (n,), "'step'")
            except ValueError as exc:
                _fail(path, f"'step' must be {n} non-negative int64 step counts ({exc})")
            if ((step < 0) | (step > MAX_STEP)).any():
                _fail(path, f"'step' must be {n} non-negative int64 step counts below 2**53")
            self.step = step
        except BaseException:
            self.close()
            raise

    def __getitem__(self, key):  # ck["meta"], ck["step"]
        return {"meta": self.meta, "step": self.step}[key]

    def arrays(self, params: bool) -> tuple:
        """``(state, params)``: ``{j: {key: array}}`` and ``{j: array}`` (None unless ``params`` and saved)."""
        dtype = _DTYPES[self.meta["dtype"]]
        state, saved = {}, ({} if params and self.meta["has_params"] else None)
        kinds = self.meta.get("state_kinds", ["full"] * len(self.meta["state_keys"]))
        layouts = self.meta.get("layouts", [None] * len(self.meta["shapes"]))
        axes = self.meta.get("factored_axes", [None] * len(self.meta["shapes"]))
        for j, shape in enumerate(self.meta["shapes"]):
            entry = {}
            for k, (key, kind) in enumerate(zip(self.meta["state_keys"], kinds)):
                want = state_shape(kind, shape, layouts[j], axes[j])
                info = _member(self._zip, f"state_{k}_{j}")
                if want is None:  # not kept for this param's shape (a factored rule)
                    if info is not None:
                        _fail(self.path, f"state {key!r} of param {j} is stored, but a param of shape {shape} "
                                         f"does not keep it")
                    continue
                if info is None:
                    _fail(self.path, f"state {key!r} of param {j} is missing")
                entry[key] = _read_member(self._zip, info, dtype, want, f"state {key!r} of param {j}")
            for k, key in enumerate(self.meta["matrix_state_keys"][j] if self.meta.get("matrix_state_keys") else []):
                info = _member(self._zip, f"matrix_{k}_{j}")
                if info is None:
                    _fail(self.path, f"matrix state {key!r} of param {j} is missing")
                mshape = tuple(self.meta["matrix_state_shapes"][j][k])
                entry[key] = _read_member(self._zip, info, dtype, mshape, f"matrix state {key!r} of param {j}")
            state[j] = entry
            if saved is not None:
                info = _member(self._zip, f"param_{j}")
                if info is None:
                    _fail(self.path, f"param {j} is missing or not {dtype}{list(shape)}")
                saved[j] = _read_member(self._zip, info, dtype, tuple(shape), f"param {j}")
        return state, saved

    def close(self) -> None:
        self._zip.close()
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _guarded(path, fn, *args):
    """``fn(*args)`` with every error a malformed file can cause turned into a :class:`CheckpointError`."""
    try:
        return fn(*args)
    except (CheckpointError, FileNotFoundError):
        raise
    except _MALFORMED as exc:
        _fail(path, f"not a readable .npz without pickled objects ({type(exc).__name__}: {str(exc)[:200]})")


def read(path) -> Reader:
    """The open checkpoint at ``path`` with its metadata and step counts checked; raises
    :class:`CheckpointError` on anything malformed (``FileNotFoundError`` if there is no file)."""
    return _guarded(path, Reader, path)


def saved_groups(ck: dict, module, path) -> list:
    """Each saved group's hyperparameters for the rule of generated ``module``: JSON lists back as
    tuples (``betas``), schedules rebuilt."""
    meta = ck["meta"]
    tuple_keys = {h["key"] for h in module.FAMILY["hyper"] if h["index"] is not None}
    out = []
    for g in meta["groups"]:
        hyper = {}
        for k, v in g["hyper"].items():
            v = _restore(v, path, k)
            hyper[k] = tuple(v) if isinstance(v, list) and k in tuple_keys else v
        out.append(hyper)
    return out


def _check_fits(path, ck: dict, opt, tensors) -> None:
    meta = ck["meta"]
    if meta["rule"] != opt.rule_name:
        _fail(path, f"holds the state of rule {meta['rule']!r}, not {opt.rule_name!r}")
    if meta["variant"] != opt.variant:
        _fail(path, f"holds variant {meta['variant']!r} of {meta['rule']!r}, the optimizer runs {opt.variant!r}")
    if meta["formula_hash"] != opt.formula_hash:
        _fail(path, f"was saved from a different formula of {meta['rule']!r} (formula hash "
                    f"{meta['formula_hash'][:12]}..., this rule's is {opt.formula_hash[:12]}...); "
                    f"its state would not mean the same thing")
    if meta["dtype"] != str(opt.dtype):
        _fail(path, f"holds {meta['dtype']} state, the params are {opt.dtype}", TypeError)
    shapes = [tuple(s) for s in meta["shapes"]]
    if len(shapes) != len(tensors):
        _fail(path, f"holds {len(shapes)} params, got {len(tensors)}")
    for j, (s, p) in enumerate(zip(shapes, tensors)):
        if s != p.shape:
            _fail(path, f"param {j} has shape {s} in the checkpoint, got an array of shape {p.shape}")
    if len(meta["groups"]) != len(opt.param_groups) or any(
            len(g["params"]) != len(mine["params"]) for g, mine in zip(meta["groups"], opt.param_groups)):
        _fail(path, "param groups differ (number of groups or params per group)")
    if meta["state_keys"] != list(opt.state_keys):
        _fail(path, f"state keys {meta['state_keys']} differ from the rule's")
    mkeys = [list(opt.matrix_state_keys(j)) for j in range(len(tensors))]
    if meta.get("matrix_state_keys", []) != (mkeys if any(mkeys) else []) or meta.get("matrix_state_shapes", []) != (
            [[list(s) for s in opt.matrix_state_shapes(j)] for j in range(len(tensors))] if any(mkeys) else []):
        _fail(path, "matrix states (keys or shapes) differ from the rule's")


def _state_dict(ck, state: dict, opt, path) -> dict:
    meta = ck["meta"]
    hyper = saved_groups(ck, opt.module, path)
    return {
        "state": {j: {"step": int(ck["step"][j]), **state[j]} for j in state},
        "param_groups": [{**h, "params": g["params"]} for h, g in zip(hyper, meta["groups"])],
        "symopt": {"rule": meta["rule"], "variant": meta["variant"], "formula_hash": meta["formula_hash"],
                   "version": meta.get("symopt_version"), "dtype": meta["dtype"],
                   "skipped_steps": int(meta["skipped_steps"])},
    }


def load_into(opt, path, *, restore_params: bool = True, checkpoint: Reader | None = None) -> None:
    """Load a checkpoint into an existing optimizer (same rule, formula, dtype and shapes).

    With ``restore_params`` (and a checkpoint that holds them), the params are
    overwritten in place with the saved values.  ``checkpoint``: ``path`` already opened
    by :func:`read`.  The metadata is checked against the optimizer first, then the
    arrays are read into new arrays (only those of the right shapes, sizes checked
    from the zip directory), then the optimizer checks the whole state; only then is
    anything modified.  Nothing changes if any check fails.
    """
    if checkpoint is None:
        with read(path) as ck:
            return load_into(opt, path, restore_params=restore_params, checkpoint=ck)
    ck = checkpoint
    tensors = opt.params
    _check_fits(path, ck, opt, tensors)
    state, saved = _guarded(path, ck.arrays, restore_params)
    if saved is not None:
        opt.check_buffers()
    try:
        opt.load_state_dict(_state_dict(ck, state, opt, path))  # checks everything before modifying anything
    except CheckpointError:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        _fail(path, str(exc))
    if saved is not None:
        for j, p in enumerate(tensors):
            np.copyto(p, saved[j])


def saved_rule(ck: dict, rule, path):
    """The rule to resume with: the saved built-in name when ``rule`` is None (a user rule must be
    passed again), else ``rule`` (a name must be the saved one)."""
    from .kernels import builtin_names

    meta = ck["meta"]
    if rule is None:
        if meta["rule"] not in builtin_names():
            _fail(path, f"holds user rule {meta['rule']!r}; pass it again: symopt.load(path, params, rule)")
        return meta["rule"]
    if isinstance(rule, str) and rule != meta["rule"]:
        _fail(path, f"holds the state of rule {meta['rule']!r}, not {rule!r}")
    return rule


def regroup(ck: dict, params, path) -> list:
    """``params`` as the saved param groups (without hyperparameters): a flat list of arrays is
    split as saved, a list of param-group dicts must have the saved number of groups."""
    meta = ck["meta"]
    if isinstance(params, np.ndarray):
        raise TypeError("params must be a list of arrays (or of param-group dicts), not a single array")
    items = list(params)
    if items and all(isinstance(x, dict) for x in items):
        if len(items) != len(meta["groups"]):
            _fail(path, f"holds {len(meta['groups'])} param groups, got {len(items)}")
        return items
    sizes = [len(g["params"]) for g in meta["groups"]]
    if len(items) != sum(sizes):
        _fail(path, f"holds {sum(sizes)} params, got {len(items)}")
    groups, start = [], 0
    for size in sizes:
        groups.append({"params": items[start:start + size]})
        start += size
    return groups

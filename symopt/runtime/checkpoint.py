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
  of param ``j``, in the optimizer's dtype;
* ``param_<j>``: the values of param ``j`` when the checkpoint was written (unless
  ``save(..., params=False)``).

Floats go through JSON as ``repr`` text, which reads back to the same double, and
state and params are stored in their own dtype, so a resumed run steps bit for bit
like an uninterrupted one.  Loading checks everything before it modifies anything:
another rule, another variant or a changed formula (formula hash), another dtype,
another number or shape of params, a missing or malformed entry all raise
``ValueError``/``TypeError`` naming the problem.  Files are written atomically
(temporary file + rename), so a crash while saving leaves the previous checkpoint.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from .._version import __version__
from ..files import atomic_write
from . import scheduled

__all__ = ["CheckpointError", "load_into", "read", "regroup", "saved_groups", "saved_rule", "set_schedule_codec",
           "write"]

FORMAT = "symopt-checkpoint"
FORMAT_VERSION = 1
_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the optimizer/params it is loaded into."""


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
        except (TypeError, ValueError) as exc:
            _fail(path, f"the schedule of {key!r} cannot be rebuilt: {exc}")
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
    arrays = {"meta": np.array(json.dumps(meta)),
              "step": np.array([state[j]["step"] for j in range(len(tensors))], dtype=np.int64)}
    for j in range(len(tensors)):
        for k, key in enumerate(keys):
            arrays[f"state_{k}_{j}"] = np.ascontiguousarray(state[j][key])
        if params:
            arrays[f"param_{j}"] = tensors[j]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def _fail(path, message: str, exc=CheckpointError):
    raise exc(f"checkpoint {os.fspath(path)!s}: {message}")


def read(path) -> dict:
    """The checked contents of a checkpoint: ``{"meta": dict, "step": array, "state": {j: {key: array}},
    "params": {j: array} | None}``.  Raises :class:`CheckpointError` on anything malformed."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            files = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError) as exc:
        _fail(path, f"not a readable .npz without pickled objects ({type(exc).__name__}: {exc})")
    if "meta" not in files:
        _fail(path, "has no 'meta' entry (not written by symopt.save)")
    raw = files["meta"]
    if raw.shape != () or raw.dtype.kind != "U":
        _fail(path, "'meta' must be a 0-d string array")
    try:
        meta = json.loads(str(raw[()]))
    except ValueError as exc:
        _fail(path, f"'meta' is not JSON ({exc})")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(path, f"'meta' does not describe a {FORMAT}")
    if meta.get("format_version") != FORMAT_VERSION:
        _fail(path, f"format version {meta.get('format_version')!r}; this symopt reads version {FORMAT_VERSION}")
    for key, kind in (("rule", str), ("variant", str), ("formula_hash", str), ("dtype", str), ("shapes", list),
                      ("groups", list), ("state_keys", list), ("skipped_steps", int), ("has_params", bool)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool) is not (kind is bool):
            _fail(path, f"meta[{key!r}] is missing or not a {kind.__name__}")
    if meta["dtype"] not in _DTYPES:
        _fail(path, f"dtype {meta['dtype']!r} is not float32 or float64")
    dtype = _DTYPES[meta["dtype"]]
    shapes = []
    for j, s in enumerate(meta["shapes"]):
        if not isinstance(s, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in s):
            _fail(path, f"shape of param {j} is malformed: {s!r}")
        shapes.append(tuple(s))
    n = len(shapes)
    keys = meta["state_keys"]
    if not all(isinstance(k, str) for k in keys):
        _fail(path, "state keys must be strings")
    step = files.get("step")
    if step is None or step.dtype != np.int64 or step.shape != (n,) or (step < 0).any():
        _fail(path, f"'step' must be {n} non-negative int64 step counts")
    seen = []
    for gi, g in enumerate(meta["groups"]):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or not isinstance(g.get("hyper"), dict):
            _fail(path, f"param group {gi} is malformed")
        seen += g["params"]
    if sorted(seen) != list(range(n)) or seen != list(range(n)):
        _fail(path, f"param groups list params {seen}, expected 0..{n - 1} in order")
    state = {}
    params = {} if meta["has_params"] else None
    for j, shape in enumerate(shapes):
        entry = {}
        for k, key in enumerate(keys):
            arr = files.get(f"state_{k}_{j}")
            if arr is None:
                _fail(path, f"state {key!r} of param {j} is missing")
            if arr.dtype != dtype or arr.shape != shape:
                _fail(path, f"state {key!r} of param {j} is {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}")
            entry[key] = arr
        state[j] = entry
        if params is not None:
            arr = files.get(f"param_{j}")
            if arr is None or arr.dtype != dtype or arr.shape != shape:
                _fail(path, f"param {j} is missing or not {dtype}{list(shape)}")
            params[j] = arr
    return {"meta": meta, "step": step, "state": state, "params": params}


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


def _state_dict(ck: dict, opt, path) -> dict:
    meta = ck["meta"]
    hyper = saved_groups(ck, opt.module, path)
    return {
        "state": {j: {"step": int(ck["step"][j]), **ck["state"][j]} for j in ck["state"]},
        "param_groups": [{**h, "params": g["params"]} for h, g in zip(hyper, meta["groups"])],
        "symopt": {"rule": meta["rule"], "variant": meta["variant"], "formula_hash": meta["formula_hash"],
                   "version": meta.get("symopt_version"), "dtype": meta["dtype"],
                   "skipped_steps": int(meta["skipped_steps"])},
    }


def load_into(opt, path, *, restore_params: bool = True, checkpoint: dict | None = None) -> None:
    """Load a checkpoint into an existing optimizer (same rule, formula, dtype and shapes).

    With ``restore_params`` (and a checkpoint that holds them), the params are
    overwritten in place with the saved values.  ``checkpoint``: the contents of
    ``path`` when already :func:`read`.  Nothing changes if any check fails.
    """
    ck = read(path) if checkpoint is None else checkpoint
    tensors = opt.params
    _check_fits(path, ck, opt, tensors)
    opt.load_state_dict(_state_dict(ck, opt, path))  # validates hyperparameters before modifying anything
    if restore_params and ck["params"] is not None:
        for j, p in enumerate(tensors):
            np.copyto(p, ck["params"][j])


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

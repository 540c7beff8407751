"""torch.optim's state-dict format, table-driven, for :class:`symopt.torch.Optimizer`.

A torch.optim ``state_dict()`` is ``{"state": {i: {...}}, "param_groups": [...]}``:
state is keyed by the parameter's index in the groups, names its entries per
algorithm, and keeps ``step`` as a 0-d tensor in torch's *default* dtype.  The
torch-compatible rules use torch's state names (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
``exp_inf``, ``mu_product``, ``acc_delta``), so the conversion is the same for
every family except for what :class:`TorchFormat` records:

======== ========== ============= =============== ============================================
rule     torch      ``step``      scalar state    notes
======== ========== ============= =============== ============================================
sgd      SGD        not kept      --              only ``momentum_buffer`` (momentum != 0)
adam     Adam       0-d tensor    --              ``max_exp_avg_sq`` with amsgrad
adamw    AdamW      0-d tensor    --              groups carry ``decoupled_weight_decay=True``
adagrad  Adagrad    0-d tensor    --              state exists from construction (step 0)
rmsprop  RMSprop    0-d tensor    --              ``momentum_buffer``/``grad_avg`` by option
adamax   Adamax     0-d tensor    --
nadam    NAdam      0-d tensor    mu_product      symopt keeps ``mu_product`` per element
radam    RAdam      0-d tensor    --
adadelta Adadelta   0-d tensor    --
======== ========== ============= =============== ============================================

Any other rule (``notes.*``, Optax-defined, user rules) uses the generic format:
``step`` as a 0-d tensor and every state entry shaped like its parameter (a matrix
state with its own shape), named by the rule's state keys; ``soap`` writes its matrix
states ``GG_0, GG_1, Q_0, Q_1`` as pytorch-optimizer's lists ``GG`` and ``Q``
(:data:`PEER_FORMATS`) with pytorch-optimizer's step per group, ``shampoo_beta=None`` and
per-param copies of two hyperparameters, so that checkpoints load both ways.

Param groups are written with torch's keys: the rule's hyperparameters plus the
torch class's implementation switches (``foreach``, ``fused``, ``capturable``,
``differentiable``) at torch's defaults, so ``torch.optim.<Class>`` loads them
unchanged; switches a group carries (given at construction or loaded) are written as
they are.  When loading, those switches are kept and otherwise ignored, and a torch hyperparameter
the rule does not have is accepted only at the value that makes the rule's math
the same (``weight_decay=0``, ``amsgrad=False``, ...; AdamW's
``decoupled_weight_decay=True``); anything else fails naming the key.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "TorchFormat", "TORCH_FORMATS", "PEER_FORMATS", "GENERIC", "torch_format", "scalar_dtype", "IMPLEMENTATION_KEYS",
    "PASSIVE_KEYS", "NEUTRAL", "check_group_keys", "entry_to_torch", "entry_from_torch", "pack_list_state",
]

#: torch.optim keywords that choose an implementation, not the math.
IMPLEMENTATION_KEYS = frozenset({"foreach", "fused", "capturable", "differentiable"})
#: Group keys that carry no hyperparameter (torch's own bookkeeping, user labels).
PASSIVE_KEYS = frozenset({"param_names", "initial_lr", "name"})
#: torch.optim hyperparameters and the value at which a rule without them computes the same step.
NEUTRAL = {
    "weight_decay": 0.0, "maximize": False, "amsgrad": False, "momentum": 0.0, "dampening": 0.0,
    "nesterov": False, "centered": False, "lr_decay": 0.0, "decoupled_weight_decay": False,
    "initial_accumulator_value": 0.0,
}
#: Every hyperparameter keyword of torch.optim's classes above.
TORCH_HYPERS = frozenset(NEUTRAL) | {"lr", "betas", "eps", "alpha", "rho", "momentum_decay"}


@dataclass(frozen=True)
class TorchFormat:
    """How one torch.optim class lays out its state (see the module docstring's table).

    ``torch_class`` names the class in ``torch.optim`` (None: the generic format);
    ``step_in_state``: torch keeps ``step`` per param (SGD does not);
    ``scalar_state``: keys torch keeps as one 0-d tensor per param in its default
    dtype (symopt keeps them per element); ``eager_state``: torch creates the state
    of every param at construction, so it appears in ``state_dict()`` before the
    first step (Adagrad); ``list_state``: keys kept as one list of tensors per param
    (pytorch-optimizer's SOAP: ``GG``, ``Q``), which symopt keeps as ``<key>_0``, ``<key>_1``, ...
    Loading the peer's own checkpoints: ``group_step``: it counts steps per param group
    (``group["step"]``, pytorch-optimizer's ``BaseOptimizer``), the step of a state entry without
    one; ``copied_state``: hyperparameters it also copies into each param's state (ignored when
    loading, the groups' values rule); ``none_values``: ``(key, value, (fallback key, index))``, a
    group's ``None`` for ``key`` is symopt's ``value`` and means the fallback's value (SOAP's
    ``shampoo_beta=None``, β₂, is ``-1``).  :meth:`write_peer` writes that layout, so the peer
    loads symopt's checkpoints too.
    """

    torch_class: str | None
    step_in_state: bool = True
    scalar_state: tuple = ()
    eager_state: bool = False
    list_state: tuple = ()
    group_step: bool = False
    copied_state: tuple = ()
    none_values: tuple = ()

    def peer_group(self, group: dict) -> tuple:
        """A saved param group as symopt reads it, and its step count (None if it keeps none): the
        group's ``step`` taken out (:attr:`group_step`), :attr:`none_values` filled in."""
        group = dict(group)
        step = group.pop("step", None) if self.group_step else None
        for key, value, _ in self.none_values:
            if key in group and group[key] is None:
                group[key] = value
        return group, step

    def write_peer(self, groups: list, state: dict) -> None:
        """The peer's own layout added to a torch-format ``groups`` and ``state`` (in place): each
        group's ``step`` (the largest of its params'), :attr:`none_values` as ``None``, and the
        :attr:`copied_state` hyperparameters in each param's state (``None``: its fallback's value)."""
        for group in groups:
            entries = [state[j] for j in group["params"] if j in state]
            if self.group_step:
                group["step"] = max((int(e["step"]) for e in entries if "step" in e), default=0)
            copied = {key: group[key] for key in self.copied_state}
            for key, value, (fallback, index) in self.none_values:
                if key in group and _same(group[key], value):
                    group[key] = None
                    if key in copied:
                        copied[key] = group[fallback][index] if index is not None else group[fallback]
            for entry in entries:
                entry.update(copied)

    def torch_defaults(self) -> dict:
        """The torch class's ``defaults`` (its keyword arguments with torch's default values)."""
        return dict(_torch_defaults(self.torch_class)) if self.torch_class else {}

    def implied(self, rule_keys) -> dict:
        """torch hyperparameters the rule fixes: AdamW's ``decoupled_weight_decay=True``."""
        return {k: v for k, v in self.torch_defaults().items()
                if k not in rule_keys and k not in IMPLEMENTATION_KEYS}

    def group_extras(self, rule_keys) -> dict:
        """Keys (with torch's defaults) that torch's groups have and the rule's do not."""
        return {k: v for k, v in self.torch_defaults().items() if k not in rule_keys}


GENERIC = TorchFormat(None)

#: Built-in rule name -> torch.optim layout.  A rule listed here is resumable from a
#: checkpoint of the torch class, and writes checkpoints that class loads.
TORCH_FORMATS = {
    "sgd": TorchFormat("SGD", step_in_state=False),
    "adam": TorchFormat("Adam"),
    "adamw": TorchFormat("AdamW"),
    "adagrad": TorchFormat("Adagrad", eager_state=True),
    "rmsprop": TorchFormat("RMSprop"),
    "adamax": TorchFormat("Adamax"),
    "nadam": TorchFormat("NAdam", scalar_state=("mu_product",)),
    "radam": TorchFormat("RAdam"),
    "adadelta": TorchFormat("Adadelta"),
    "adafactor": TorchFormat("Adafactor"),
}
#: Built-in rules that follow a class of another torch library: its state layout (not a torch.optim
#: class, so no torch defaults).  pytorch-optimizer's SOAP keeps its statistics and eigenbases as
#: lists, one matrix per side.
PEER_FORMATS = {
    "soap": TorchFormat(None, list_state=("GG", "Q"), group_step=True,
                        copied_state=("precondition_frequency", "shampoo_beta"),
                        none_values=(("shampoo_beta", -1.0, ("betas", 1)),)),
}


def torch_format(rule) -> TorchFormat:
    """The layout for a built-in rule name; :data:`GENERIC` for other names and user rules."""
    if not isinstance(rule, str):
        return GENERIC
    return TORCH_FORMATS.get(rule) or PEER_FORMATS.get(rule, GENERIC)


@functools.lru_cache(maxsize=None)
def _torch_defaults(cls_name: str) -> tuple:
    cls = getattr(torch.optim, cls_name)
    probe = cls([torch.zeros(1, requires_grad=True)])
    return tuple(probe.defaults.items())


def scalar_dtype() -> torch.dtype:
    """torch's dtype for scalar state (``step``, ``mu_product``): float64 iff that is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        a = a.item() if a.numel() == 1 else a
    if isinstance(a, (bool, np.bool_)) or isinstance(b, bool):
        return bool(a) == bool(b) if isinstance(a, (bool, np.bool_, numbers.Real)) else False
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_group_keys(group: dict, rule_keys, fmt: TorchFormat, where: str, rule_name: str,
                     *, strict: bool) -> None:
    """Refuse group keys that would change the math without the rule knowing.

    ``strict`` (construction): only the rule's keys, implementation switches,
    passive keys and the torch class's implied values are accepted.  Otherwise
    (loading a checkpoint, whose groups carry all of torch's keywords) a torch
    hyperparameter the rule lacks is also accepted at its :data:`NEUTRAL` value.
    """
    implied = fmt.implied(rule_keys)
    for key, value in group.items():
        if key == "params" or key in rule_keys or key in IMPLEMENTATION_KEYS or key in PASSIVE_KEYS:
            continue
        if key in implied:
            if not _same(value, implied[key]):
                raise ValueError(f"{where}: {key}={value!r}, but rule {rule_name!r} always computes "
                                 f"{key}={implied[key]!r} (torch.optim.{fmt.torch_class})")
            continue
        if not strict and key in NEUTRAL:
            if not _same(value, NEUTRAL[key]):
                raise ValueError(f"{where}: {key}={value!r}, but rule {rule_name!r} has no hyperparameter {key!r} "
                                 f"(it computes the step of {key}={NEUTRAL[key]!r}); was the state_dict saved by "
                                 f"another optimizer?")
            continue
        if strict or key in TORCH_HYPERS:
            known = ", ".join(sorted(rule_keys)) or "(none)"
            raise (TypeError if strict else ValueError)(
                f"{where}: rule {rule_name!r} has no hyperparameter {key!r}; its hyperparameters are: {known}")


def _as_step(value, pid) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"state of param {pid}: 'step' must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"state of param {pid}: 'step' must be a number or a scalar tensor, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0 or x != int(x):
        raise ValueError(f"state of param {pid}: invalid 'step' {value!r} (a non-negative whole number)")
    return int(x)


def _as_array(value, pid, key) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise TypeError(f"state {key!r} of param {pid} is a sparse tensor")
        value = value.detach().cpu()
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"state {key!r} of param {pid} has dtype {value.dtype}")
        return value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"state {key!r} of param {pid} has dtype {arr.dtype}")
    return arr


def entry_from_torch(entry, pid, keys, shape, fmt: TorchFormat, label: str, shapes: dict | None = None,
                     group_step=None):
    """One param's torch-format state -> ``(step, {key: array})``, or None for "not started".

    ``keys`` are the state keys of the rule variant (e.g. ``exp_avg``,
    ``exp_avg_sq``); a missing one raises ``ValueError`` naming it.  Values of
    :attr:`TorchFormat.scalar_state` keys are broadcast to the param's shape.  ``shapes``: the
    keys whose arrays have a shape of their own (a factored rule's ``row_var``, a preconditioned
    rule's matrix states).  ``group_step``: the step of an entry without one
    (:attr:`TorchFormat.group_step`).
    """
    shapes = shapes or {}
    if not isinstance(entry, dict):
        raise ValueError(f"state of param {pid} must be a dict, got {type(entry).__name__}")
    entry = {k: v for k, v in entry.items() if k not in fmt.copied_state}
    if "step" not in entry and group_step is not None:
        entry["step"] = group_step
    for name in fmt.list_state:     # "GG": [a, [], b] -> "GG_0": a, "GG_2": b ([]: an axis without one)
        value = entry.pop(name, None)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"state of param {pid}: {name!r} must be a list of tensors, got {type(value).__name__}")
        entry.update({f"{name}_{k}": v for k, v in enumerate(value)
                      if not (isinstance(v, (list, tuple)) and len(v) == 0)})
    keys = list(keys)
    for key, value in entry.items():
        if key != "step" and key not in keys and value is not None:
            raise ValueError(f"state of param {pid} has {key!r}, which {label} does not keep (it keeps "
                             f"{', '.join(keys) or 'no state'}); was it saved by another optimizer or with "
                             f"other options?")
    present = [k for k in keys if entry.get(k) is not None]
    if "step" in entry and entry["step"] is not None:
        step = _as_step(entry["step"], pid)
    elif fmt.step_in_state:
        raise ValueError(f"state of param {pid} is missing key 'step' ({label} keeps step, "
                         f"{', '.join(keys)})")
    else:
        # torch.optim.SGD keeps no step: a momentum buffer exists from the first step on
        step = 1 if present else 0
    if not present and not fmt.step_in_state:
        return None
    for key in keys:
        if key not in present:
            raise ValueError(f"state of param {pid} is missing key {key!r} ({label} keeps "
                             f"{', '.join(['step'] * fmt.step_in_state + keys)})")
    arrays = {}
    for key in keys:
        arr = _as_array(entry[key], pid, key)
        if key in fmt.scalar_state and arr.size == 1 and arr.shape != tuple(shape):
            arr = np.full(shape, arr.reshape(()), dtype=arr.dtype)
        want = tuple(shapes.get(key, shape))
        if arr.shape != want:
            expected = f"expected {want}, " if key in shapes else ""     # a state of a shape of its own
            raise ValueError(f"state {key!r} of param {pid} has shape {arr.shape}, {expected}the param has "
                             f"{tuple(shape)}")
        arrays[key] = arr
    return step, arrays


def entry_to_torch(step: int, arrays: dict, fmt: TorchFormat, sdtype: torch.dtype, ndim: int = 0):
    """One param's symopt state (``arrays`` are copies the caller owns) -> torch's format, or None.

    A param that has not been stepped has no entry, as in torch.optim, unless the
    torch class creates state eagerly (Adagrad).  A :attr:`TorchFormat.list_state` is a list of one
    entry per axis of the ``ndim``-D param, ``[]`` for an axis without one (pytorch-optimizer's SOAP).
    """
    if step == 0 and not fmt.eager_state:
        return None
    out = {}
    if fmt.step_in_state:
        out["step"] = torch.tensor(float(step), dtype=sdtype)
    for key, arr in arrays.items():
        if key in fmt.scalar_state:
            # every element holds the same number; a zero-size param's value is never used
            out[key] = torch.tensor(float(arr.reshape(-1)[0]) if arr.size else 1.0, dtype=sdtype)
        else:
            out[key] = torch.from_numpy(arr)
    pack_list_state(out, fmt, ndim)
    return out or None


def pack_list_state(out: dict, fmt: TorchFormat, naxes: int) -> None:
    """The :attr:`TorchFormat.list_state` keys of one param's torch-format state packed in place into
    lists over its ``naxes`` axes: ``"GG_0": a, "GG_2": b`` -> ``"GG": [a, [], b]`` (pytorch-optimizer's SOAP)."""
    for name in fmt.list_state:
        parts = {int(k[len(name) + 1:]): k for k in list(out) if k.startswith(f"{name}_") and k[len(name) + 1:].isdigit()}
        out[name] = [out.pop(parts[k]) if k in parts else [] for k in range(max([naxes - 1, *parts]) + 1)]


def plain_value(value, key):
    """A hyperparameter value as the runtime and the scalar functions take it: Python numbers (a
    one-element tensor read once), tuples of them."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"hyperparameter {key!r} must be a number or a one-element tensor, "
                            f"got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, (tuple, list)):
        return tuple(plain_value(v, key) for v in value)
    return value

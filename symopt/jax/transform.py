"""``symopt.jax.transform(rule, **hyper)``: a symopt rule as an ``optax.GradientTransformation``.

* **Params and state are pytrees.**  ``init(params)`` makes one state pytree per state entry of
  the rule (``exp_avg``, ``exp_avg_sq``...), shaped like ``params``; ``update(grads, state,
  params)`` flattens the three the same way and runs the generated step over the leaves.
  The returned updates are ``new_param − param`` (``optax.apply_updates`` adds them).
* **Per-step scalars are computed inside the jitted update** by the generated ``jax.numpy``
  scalar function from the step count (float64 with ``jax_enable_x64``, else float32), so
  nothing is traced again when they change.
* **Hyperparameters live in the state** (``state.hyperparams``, keyed by the rule's keywords:
  ``{"lr": ..., "betas": (..., ...)}``) as in ``optax.inject_hyperparams``: set a new value
  there between steps, or give a callable of the step count (an Optax schedule: called with
  the number of steps taken, 0-based, as ``inject_hyperparams`` does) or a ``symopt.schedule``
  (evaluated at the 1-based step in ``jax.numpy``; its range is checked at t = 1 only) to
  ``transform``.
  Structural options (``amsgrad``, momentum ≠ 0...) select the variant once, at ``transform``.
* **Non-finite gradients** (``on_nonfinite``): ``"skip"`` (default) works like
  ``optax.apply_if_finite``: when any gradient value is NaN/inf the updates are zero, the
  state and step count stay as they were and ``state.notfinite_count`` counts the step;
  ``"ignore"`` checks nothing.  (``"raise"`` needs a value on the host: not inside ``jit``.)
* **Dtypes**: float32 and float64 params compute in their own dtype; bfloat16/float16 params in
  float32, with state in float32.
* **Matrix rules** (Muon): each leaf, at least 2-D, is the matrix ``d0 × (d1⋯)``; the Newton–Schulz
  iteration runs in the compute dtype as a ``lax.fori_loop`` over the traced count.  A choice
  keyword (``adjust_lr_fn``) is fixed at ``transform``; ``state.hyperparams`` holds its position.
* **Factored rules** (Adafactor): each leaf's layout (:func:`~symopt.runtime.matrix.factored_layout`:
  a stack of matrices over two of its axes, :func:`~symopt.runtime.matrix.factored_axes` -- the last
  two, or Optax's two largest for ``adafactor_optax`` -- or full-shape states) follows from its shape and
  ``min_dim_size_to_factor``, which is therefore fixed at ``transform`` (not in ``state.hyperparams``).
  A state a leaf's layout does not keep is an empty array ``(0,)`` in that state pytree; row states
  have the leaf's shape with the column axis 1 (``(…, m, 1)``), column states with the row axis 1.
  ``eps=(None, …)`` is the machine epsilon of the leaf's dtype.  An optional hyperparameter given as
  None is None in ``state.hyperparams`` too.
* **Preconditioned rules** (Shampoo, SOAP): every axis of a leaf (merged where the rule merges them)
  may keep matrix states; which do, and how axes merge, follows from the hyperparameters given to
  ``transform`` (:func:`~symopt.runtime.preconditioned.axes_layout`, as pytorch-optimizer decides at a
  param's first step) and is fixed then.  Each matrix state (``GG``, ``Q``...) is one more pytree of
  ``state.state``, after the elementwise ones: per leaf a tuple over its axes of ``d × d`` arrays
  (None for an axis without one), starting at ``c·I``.  ``jnp.linalg.eigh``/``qr`` run in the compute
  dtype, each under ``lax.cond`` on its per-step flag, so a step that does not refresh them does not
  compute them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..runtime import kernels, scheduled
from ..runtime.matrix import factored_axes, factored_layout, state_shape
from ..runtime.optimizer import _Spec
from ..runtime.preconditioned import axes_layout, initial_diagonals

__all__ = ["transform", "SymoptState"]


class SymoptState(NamedTuple):
    """The state of :func:`transform`: step count, hyperparameters, the rule's state pytrees."""

    count: jnp.ndarray            # steps taken (int32)
    hyperparams: dict             # keyword -> value (arrays; tuples for betas-like keywords)
    state: tuple                  # one pytree like params per state entry of the rule
    notfinite_count: jnp.ndarray  # steps skipped for a non-finite gradient (int32)


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _compute_dtype(x):
    return x.dtype if x.dtype in (jnp.float32, jnp.float64) else jnp.float32


def transform(rule, *, on_nonfinite: str = "skip", **hyper) -> optax.GradientTransformation:
    """An ``optax.GradientTransformation`` stepping ``rule`` (a built-in name or a symopt.Rule).

    Keywords are the rule's hyperparameters with torch.optim's names (``lr``, ``betas``,
    ``eps``...); a float hyperparameter may be a callable of the step count (an Optax
    schedule).  See the module docstring.
    """
    if on_nonfinite not in ("skip", "ignore"):
        raise ValueError(f"on_nonfinite must be 'skip' or 'ignore' in JAX (a NaN cannot raise inside jax.jit), "
                         f"got {on_nonfinite!r}")
    module = kernels.load(rule)
    jmod = kernels.load_backend(rule, "jax")      # refuses, by name, a rule with no generated JAX module
    spec = _Spec(module)
    for key in hyper:
        if key not in spec.defaults:
            raise spec.unknown(key, spec.name)
    values = {**spec.defaults, **hyper}
    # Callables of the step count: an Optax schedule gets the steps taken (0-based), a symopt.schedule
    # the 1-based step t, printed in jax.numpy by its jax_function().
    schedules = {}
    for k, v in values.items():
        if scheduled.is_schedule(v):
            fn = v.jax_function()
            schedules[k] = lambda count, fn=fn: fn(count + 1)
        elif callable(v):
            schedules[k] = v
    fixed = {k: (float(values[k](1)) if scheduled.is_schedule(values[k]) else
                 schedules[k](0) if k in schedules else v) for k, v in values.items()}
    choices = {h["key"]: h["name"] for h in spec.hyper if h["kind"] == "choice"}
    # None (an optional hyperparameter left out, e.g. Adafactor's eps=(None, 1e-3)) stays None
    number = lambda x: None if x is None else float(x)
    fixed = {k: (tuple(number(x) for x in v) if isinstance(v, (tuple, list)) else
                 v if isinstance(v, bool) or k in choices else number(v)) for k, v in fixed.items()}
    checked = spec.values(fixed, spec.name)
    variant = spec.variant_index(checked, spec.name)
    vinfo = spec.variants[variant]
    prefix = vinfo["prefix"]
    scalar_fn = getattr(jmod, f"{prefix}_scalars")
    step_fn = getattr(jmod, f"{prefix}_step")
    inits = getattr(module, f"{prefix}_state_init")(*[checked[n] for n in vinfo["init_hyper"]])
    by_name = {h["name"]: h for h in spec.hyper}
    hyper_args = [(by_name[n]["key"], by_name[n]["index"], n) for n in vinfo["hyper"]]
    check = on_nonfinite == "skip"
    # a factored rule: the hyperparameter that fixes each leaf's layout (and state shapes) is not traced
    factored = vinfo.get("factored")
    min_key = factored and factored.get("min_dim_key")
    if min_key is not None and min_key in schedules:
        raise TypeError(f"{spec.name}: {min_key} fixes which params are factored and their state shapes; give a "
                        f"number, not a schedule")
    min_dim = None if min_key is None else float(fixed[min_key])

    def layout(p, where="") -> str:
        return factored_layout(jnp.shape(p), min_dim, where or spec.name)

    # a preconditioned rule: each leaf's axes, which keep matrix states and their c·I, from the first
    # step's scalars of the values given here (host floats, the Numba module's scalar function)
    precond = vinfo.get("matrix", {}).get("every_axis", False)
    first = getattr(module, f"{prefix}_scalars")(1.0, *[checked[n] for n in vinfo["hyper"]]) if precond else None
    nmat = len(vinfo["matrix"]["states"]) if precond else 0

    def axes(p, j=0):
        return axes_layout(module, vinfo, jnp.shape(p), first, spec.name, j)

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        if "matrix" in vinfo and not precond:
            flat = [p for p in leaves if jnp.ndim(p) < 2]
            if flat:
                raise ValueError(f"{spec.name} reads each param as a matrix (at least 2-D: d0 × (d1⋯)), got shape "
                                 f"{jnp.shape(flat[0])}; route other params to another transform (optax.partition)")
        state = []
        layouts = [layout(p, f"{spec.name}: params leaf {j}") for j, p in enumerate(leaves)] if factored else None
        for k, init in enumerate(inits):
            kind = vinfo["state"][k].get("shape", "full")
            shapes = [jnp.shape(p) if layouts is None else
                      state_shape(kind, jnp.shape(p), layouts[j], factored_axes(jnp.shape(p), min_dim))
                      for j, p in enumerate(leaves)]
            shapes = [(0,) if shape is None else shape for shape in shapes]   # a state this leaf's layout does not keep
            state.append(treedef.unflatten([
                (jnp.asarray(p, _compute_dtype(p)) if isinstance(init, str)
                 else jnp.full(shape, init, _compute_dtype(p))) for p, shape in zip(leaves, shapes)]))
        if precond:      # the matrix states: per leaf, c·I on each kept axis, None on the others
            layouts = [axes(p, j) for j, p in enumerate(leaves)]
            for c in initial_diagonals(vinfo, first):
                state.append(treedef.unflatten([
                    tuple(c * jnp.eye(d, dtype=_compute_dtype(p)) if kept[k] else None for k, d in enumerate(dims))
                    for p, (dims, kept) in zip(leaves, layouts)]))
        hp = {}
        for k, v in values.items():
            if k in schedules or k == min_key:
                continue
            if k in choices:    # a choice keyword (Muon's adjust_lr_fn): the position of its value, as the rule reads it
                hp[k] = jnp.asarray(checked[choices[k]], _float())
                continue
            # an optional hyperparameter given as None is None here too (no leaf): the rule reads its NONE value
            array = lambda x: None if x is None else jnp.asarray(x, _float())
            hp[k] = (tuple(array(x) for x in v) if isinstance(v, (tuple, list))
                     else jnp.asarray(v) if isinstance(v, bool) else array(v))
        return SymoptState(jnp.zeros((), jnp.int32), hp, tuple(state), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"symopt.jax.transform({spec.name!r}) needs params: tx.update(grads, state, params)")
        g_leaves, treedef = jax.tree.flatten(updates)
        p_leaves = treedef.flatten_up_to(params)
        s_leaves = [treedef.flatten_up_to(s) for s in state.state]
        fdt = _float()
        hp = {k: (schedules[k](state.count) if k in schedules else min_dim if k == min_key else state.hyperparams[k])
              for k in values}
        args = [hp[k] if i is None else hp[k][i] for k, i, _ in hyper_args]
        args = [checked[n] if a is None else a for a, (_, _, n) in zip(args, hyper_args)]   # None: NONE value
        t = (state.count + 1).astype(fdt)
        scal = scalar_fn(t, *[jnp.asarray(a, fdt) if not isinstance(a, bool) else a for a in args])
        ok = None
        if check:
            ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in g_leaves])) if g_leaves else jnp.bool_(True)

        def run(operands):
            """The rule's step over every leaf, grouped by compute dtype: (updates, new state leaves)."""
            ps, gs, ss, sc = operands
            outs = [None] * len(ps)
            states = [list(x) for x in ss]
            nel = len(ss) - nmat     # the elementwise states; then a preconditioned rule's matrix states
            by_dtype: dict = {}
            for j, p in enumerate(ps):
                by_dtype.setdefault(_compute_dtype(p), []).append(j)
            for cd, idx in by_dtype.items():
                # a factored rule: each leaf's layout, matrix axes and dtype's machine epsilon (static Python data)
                static = (() if factored is None else
                          (tuple(layout(ps[j]) for j in idx),
                           tuple(factored_axes(jnp.shape(ps[j]), min_dim) for j in idx),
                           tuple(float(jnp.finfo(ps[j].dtype).eps) for j in idx)))
                if precond:     # the matrix states per leaf (a tuple per state) and the leaf's axes
                    static = ([tuple(tuple(None if m is None else jnp.asarray(m, cd) for m in x[j]) for x in ss[nel:])
                               for j in idx],)
                    static = (*static, [jnp.asarray(x, fdt) for x in sc], fdt, tuple(axes(ps[j])[0] for j in idx))
                else:
                    static = ([jnp.asarray(x, fdt) for x in sc], fdt, *static)
                out = step_fn([jnp.asarray(ps[j], cd) for j in idx], [jnp.asarray(gs[j], cd) for j in idx],
                              *[[jnp.asarray(x[j], cd) for j in idx] for x in ss[:nel]], *static)
                for j, new in zip(idx, out):
                    outs[j] = (new[0] - jnp.asarray(ps[j], cd)).astype(ps[j].dtype)
                    for k, n in enumerate(new[1:1 + nel]):
                        states[k][j] = n.astype(ss[k][j].dtype)
                    for k, ms in enumerate(new[1 + nel:][0] if precond else ()):
                        states[nel + k][j] = tuple(None if m is None else m.astype(old.dtype)
                                                   for m, old in zip(ms, ss[nel + k][j]))
            return outs, states

        def skip(operands):
            """A non-finite gradient: zero updates, the state as it was (optax.apply_if_finite)."""
            ps, _, ss, _ = operands
            return [jnp.zeros_like(p) for p in ps], [list(x) for x in ss]

        operands = (p_leaves, g_leaves, s_leaves, list(scal))
        # lax.cond runs one branch: the check costs one read of the grads, not a select over every output.
        new_updates, new_state = run(operands) if ok is None else jax.lax.cond(ok, run, skip, operands)
        count = state.count + (1 if ok is None else ok.astype(jnp.int32))
        bad = state.notfinite_count + (0 if ok is None else (~ok).astype(jnp.int32))
        new = SymoptState(count, state.hyperparams, tuple(treedef.unflatten(s) for s in new_state), bad)
        return treedef.unflatten(new_updates), new

    return optax.GradientTransformation(init_fn, update_fn)

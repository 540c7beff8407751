"""Rendering the reduction passes of rules with reductions (see :mod:`.reduce_plan`).

Only families with a variant whose plan has reductions are touched: their module
gets, after the usual content, one ``<prefix>_reduce_<dtype>`` kernel (serial and
``_parallel``) per such variant, rendered from ``templates/reduce_kernels.py.jinja``;
their elementwise kernels read the per-tensor scalars as extra columns of the
scalar table (``s<k>`` for ``k >= nscalars``).  Every other module is rendered
exactly as before, byte for byte.

Names in the reduction kernels: ``s<k>`` per-step and per-tensor scalars in the
kernel dtype, ``_d<k>`` per-step scalars in float64 (finalize step), ``_r<k>``
reduction values, ``_g<k>`` global sums, ``_a<k>`` accumulators, ``_e*``/``_f*``
CSE temporaries -- never a user name (user identifiers never start with ``_``,
and ``s<k>`` is reserved).
"""

from __future__ import annotations

import sympy as sp

from .names import comment_text, docstring_text
from .printers import KernelPrinter

REDUCE_TEMPLATE = "reduce_kernels.py.jinja"
_DTYPES = (("f32", "float32", "_ptr_f32", 4), ("f64", "float64", "_ptr_f64", 8))


def has_reduction_plans(plans) -> bool:
    return any(getattr(p, "reduction", None) is not None for p in plans)


def family_has_reductions(family) -> bool:
    from ..rulebook.reduction import has_reductions

    return any(has_reductions(rule) for _, rule in family.variants)


def name_tensor_scalars(plan, elem_names: dict) -> int:
    """Name the per-tensor scalars ``s<nscalars + k>`` in the elementwise kernel; returns their count."""
    ns = len(plan.scalars)
    for k, sym in enumerate(plan.reduction.tensor_scalars):
        elem_names[sym] = f"s{ns + k}"
    return len(plan.reduction.tensor_scalars)


def runtime_info(plan, prefix: str) -> dict:
    """Plain data for ``FAMILY["variants"][k]["reduce"]`` (read by runtime/reduction.py)."""
    info = plan.reduction
    return {
        "kernel": f"{prefix}_reduce",
        "ntensor": len(info.tensor_scalars),
        "nred": len(info.reductions),
        "stages": len(info.stages),
        "scopes": [r.scope for r in info.reductions],
    }


def _reduction_doc(plan) -> list:
    info = plan.reduction
    lines = []
    for k, r in enumerate(info.reductions):
        lines.append(docstring_text(f"r{k} = {r.scope} {r.op} of {sp.sstr(r.arg)}  (pass {r.stage})"))
    ns = len(plan.scalars)
    for st in info.stages:
        resolved: dict = {}
        for sym, e in st.tensor_temps:
            resolved[sym] = e.xreplace(resolved)
        for sym, e in st.tensor_outputs:
            col = ns + list(info.tensor_scalars).index(sym)
            lines.append(docstring_text(f"s{col} = {sp.sstr(e.xreplace(resolved))}"))
    return lines


def variant_context(rule, plan, prefix: str, state_ids: dict) -> dict:
    """Template context of one variant's reduction kernels."""
    info = plan.reduction
    ns = len(plan.scalars)
    col_of = {sym: ns + k for k, sym in enumerate(info.tensor_scalars)}
    scalar_col = {sym: k for k, sym in enumerate(plan.scalars)}
    elem_names = {rule.param: "param_i", rule.grad: "grad_i"}
    src = {rule.param: "param_c", rule.grad: "grad_c"}
    for s in plan.state:
        elem_names[s] = f"{state_ids[s]}_i"
        src[s] = f"{state_ids[s]}_c"
    for sym, k in scalar_col.items():
        elem_names[sym] = f"s{k}"
    for sym, col in col_of.items():
        elem_names[sym] = f"s{col}"
    red_names = {r.sym: f"_r{k}" for k, r in enumerate(info.reductions)}

    stages = []
    kernel_stages = {suffix: [] for suffix, *_ in _DTYPES}
    max_width = 1
    for st in info.stages:
        temps = list(st.element_temps)
        names = dict(elem_names)
        for sym, _ in temps:
            names[sym] = sym.name  # _e0, _e1 ... (numbered_symbols)
        used = set()
        for e in [*st.element_exprs, *(x for _, x in temps)]:
            used |= e.free_symbols
        loads = [(f"s{scalar_col[s]}", scalar_col[s]) for s in plan.scalars if s in used]
        loads += [(f"s{col_of[s]}", col_of[s]) for s in info.tensor_scalars if s in used]
        pointer_views = [(src[s], "pptr" if s == rule.param else "gptr") for s in st.reads
                         if s in (rule.param, rule.grad)]
        state_views = [(src[s], state_ids[s]) for s in st.reads if s in state_ids]
        element_loads = [(elem_names[s], src[s]) for s in st.reads]
        accs = [(f"_a{q}", q) for q in range(len(st.reductions))]
        max_width = max(max_width, len(st.reductions))
        for suffix, dtype, *_ in _DTYPES:
            pr = KernelPrinter(names, dtype)
            kernel_stages[suffix].append({
                "temps": [(names[s], pr.doprint(e)) for s, e in temps],
                "sums": [(f"_a{q}", pr.doprint(e)) for q, e in enumerate(st.element_exprs)],
            })
        # Finalize: reduction values, then per-tensor scalars, in float64.
        fin_names = {}
        fused = set()
        for sym, e in [*st.tensor_temps, *st.tensor_outputs]:
            fused |= e.free_symbols
        values = []
        for k, r in enumerate(info.reductions):
            if r.sym not in fused:
                continue
            name = red_names[r.sym]
            fin_names[r.sym] = name
            if r.scope == "tensor":
                code = f"_red[j, {k}]" + (" / _count[j]" if r.op == "mean" else "")
            else:
                code = f"_g{k}" + (" / _total" if r.op == "mean" else "")
            values.append((name, code))
        finalize_loads = []
        for s in plan.scalars:
            if s in fused:
                fin_names[s] = f"_d{scalar_col[s]}"
                finalize_loads.append((fin_names[s], scalar_col[s]))
        for sym, _ in st.tensor_temps:
            fin_names[sym] = sym.name  # _f0, _f1 ...
        fp = KernelPrinter(fin_names, "float64")
        stages.append({
            "index": st.index,
            "comment": comment_text(", ".join(f"r{k} ({info.reductions[k].scope} {info.reductions[k].op})"
                                              for k in st.reductions)),
            "loads": loads,
            "pointer_views": pointer_views,
            "state_views": state_views,
            "element_loads": element_loads,
            "accumulators": accs,
            "part_to_red": [(q, k) for q, k in enumerate(st.reductions)],
            "globals": [(f"_g{k}", k) for k in st.reductions if info.reductions[k].scope == "global"],
            "red_values": values,
            "finalize_loads": finalize_loads,
            "finalize_temps": [(fin_names[s], fp.doprint(e)) for s, e in st.tensor_temps],
            "finalize_stores": [(col_of[s], fp.doprint(e)) for s, e in st.tensor_outputs],
        })
    kernels = []
    for suffix, dtype, ptr, itemsize in _DTYPES:
        pr = KernelPrinter({}, dtype)
        for parallel in (False, True):
            kernels.append({
                "name": f"{prefix}_reduce_{suffix}" + ("_parallel" if parallel else ""),
                "dtype": dtype, "ptr": ptr, "itemsize": itemsize, "parallel": parallel,
                "range": "numba.prange" if parallel else "range", "ctor": pr.ctor,
                "stages": kernel_stages[suffix],
                "doc": docstring_text(f"Reduction passes of {rule.name}, {dtype}"
                                      + (", chunks in parallel threads." if parallel else ", serial.")),
            })
    return {
        "comment_name": comment_text(rule.name),
        "nstages": len(info.stages),
        "nred": len(info.reductions),
        "ntensor": len(info.tensor_scalars),
        "nscalars": ns,
        "max_width": max_width,
        "state_args": [state_ids[s] for s in plan.state],
        "reduction_doc": _reduction_doc(plan),
        "stages": stages,
        "kernels": kernels,
    }


def render_reductions(env, family, plans, prefixes, state_ids_of) -> str:
    """Text appended to the module of ``family``: the reduction kernels of its variants ('' if none)."""
    variants = [variant_context(rule, plan, prefix, state_ids_of(rule))
                for (_, rule), plan, prefix in zip(family.variants, plans, prefixes)
                if plan.reduction is not None]
    if not variants:
        return ""
    return env.get_template(REDUCE_TEMPLATE).render(variants=variants)

"""What each report page shows, read back from the stage that made it.

One function per kind of page returns the plain data its template prints (every math as
``<math>``, every code block highlighted, every user text left for the template to escape):

* :func:`family_page` -- a rule: docs and symbol table, the update equations of every
  variant, the derivation read from the variant's :class:`~symopt.codegen.plan.KernelPlan`
  (step 1's substituted outputs, the hoisted per-step scalars, the CSE'd element code, the
  operation counts before and after), the generated kernel beside it, ``symopt verify``'s
  table and the peers, a trajectory, and the conventions of the same rule side by side;
* :func:`plan_page` (a KernelPlan alone), :func:`schedule_page`, :func:`transform_page`,
  :func:`nn_page` (a loss or activation: derivative, the candidate forms the planner weighed,
  the kernel bodies) and :func:`gradient_page` (``symopt.gradient``: the reverse-mode sweeps).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sympy as sp

from ..codegen.plan import KernelPlan, UpdatedValue, make_plan
from ..codegen.plan_factored import make_factored_plan
from ..codegen.plan_matrix import RESULT, WORK, MatrixPlan, is_matrix_rule, make_matrix_plan
from ..codegen.plan_preconditioned import (
    PreconditionedPlan,
    is_preconditioned_rule,
    make_preconditioned_plan,
    result_buffer,
    work_buffer,
)
from ..rulebook.factored import is_factored_rule
from ..provenance import PEER_TOLERANCE, RULE_PEERS, peer_label
from ..rulebook.display import base_latex, subscripted, update_rows
from ..rulebook.metadata import t as T_STEP
from ..rulebook.rule import Family, Rule
from . import plots
from .highlight import highlight
from .mathml import equations, math

#: Built-in rules that are one rule written in several conventions (the source notes, torch,
#: Optax and research variants); each page shows the others beside it, the differing terms marked.
CONVENTIONS = (
    ("notes.sgd", "sgd"),
    ("notes.adagrad", "adagrad"),
    ("notes.rmsprop", "rmsprop"),
    ("notes.adam", "adam", "adamw"),
    ("adabelief", "adabelief_rectified"),
    ("lion", "cautious_lion"),
)

_ARROWS = {r"\leftarrow": "←", "=": "="}


def figure(svg_or_note, caption: str = "") -> dict:
    """A plot for the templates: ``{"svg": …}``, or ``{"note": …}`` where it could not be drawn."""
    return {"svg": svg_or_note, "caption": caption} if hasattr(svg_or_note, "__html__") else {"note": svg_or_note}
_TEMP = re.compile(r"_([a-z])(\d+)")


# ----------------------------------------------------------------------------- names
def _display_names(rule: Rule, symbols) -> dict:
    """LaTeX names of plan symbols: the rule's own (θ_{t−1}, g_t, β₁), ``e_{3}`` for ``_e3``, ``ũ_{0}``
    for an updated value."""
    names = {s: base_latex(rule, s) for s in [*rule.hyper, *rule.temporaries]}
    for s in (rule.param, *rule.state):
        names[s] = subscripted(base_latex(rule, s), "t-1")
    names[rule.grad] = subscripted(base_latex(rule, rule.grad), "t")
    for s in symbols:
        if s in names:
            continue
        m = _TEMP.fullmatch(s.name)
        if isinstance(s, UpdatedValue) and m:
            names[s] = rf"\tilde{{u}}_{{{m.group(2)}}}"
        elif m:
            names[s] = f"{m.group(1)}_{{{m.group(2)}}}"
    return names


def _temp_names(pairs) -> dict:
    """``e_{3}`` for a CSE temporary ``_e3`` (and ``_k``, ``_c``...) among the targets of ``pairs``."""
    out = {}
    for sym, _ in pairs:
        m = _TEMP.fullmatch(sym.name)
        if m:
            out[sym] = f"{m.group(1)}_{{{m.group(2)}}}"
    return out


def _new_name(rule: Rule, sym) -> str:
    """The LaTeX name of an output: θ_t, m_t."""
    return subscripted(base_latex(rule, sym), "t") if sym in (rule.param, *rule.state) else base_latex(rule, sym)


def _symbols_of(*groups) -> set:
    out = set()
    for pairs in groups:
        for item in pairs:
            for e in item if isinstance(item, tuple) else (item,):
                if isinstance(e, sp.Basic):
                    out |= e.free_symbols | ({e} if isinstance(e, sp.Symbol) else set())
    return out


# ----------------------------------------------------------------------------- rules
def symbol_table(family: Family) -> list:
    """One row per math symbol: the symbol, its keyword, default, valid range and meaning."""
    rows = []
    rule0 = family.default_rule
    rows.append({"symbol": math(rule0.param, {rule0.param: base_latex(rule0, rule0.param)}), "keyword": "params",
                 "default": "", "range": "", "doc": "the parameter θ (one value per element)"})
    rows.append({"symbol": math(rule0.grad, {rule0.grad: base_latex(rule0, rule0.grad)}), "keyword": "grads",
                 "default": "", "range": "", "doc": "the gradient, given to step()"})
    for sym, h in family.hyper.items():
        owner = next((r for _, r in family.variants if sym in r.hyper), None)
        latex = base_latex(owner, sym) if owner is not None else sp.latex(sym)
        key = (h.key or sym.name) + ("" if h.index is None else f"[{h.index}]")
        option = sym in family.options
        rows.append({"symbol": math(sym, {sym: latex}), "keyword": key, "default": repr(h.default),
                     "range": h.range_text(), "doc": h.doc or ("selects a variant" if option else "")})
    return rows


def state_table(rule: Rule) -> list:
    names = _display_names(rule, ())
    out = []
    for sym, st in rule.state.items():
        init = sp.sympify(st.init)
        out.append({"symbol": math(sym, {sym: base_latex(rule, sym)}), "key": rule.state_key(sym),
                    "init": math(init, {**names, rule.param: subscripted(base_latex(rule, rule.param), "0")}),
                    "doc": st.doc})
    return out


def update_equations(rule: Rule, highlight_terms=()) -> str:
    rows = [(left, _ARROWS.get(arrow, arrow), rhs, names) for left, arrow, rhs, names in update_rows(rule)]
    return equations(rows, highlight=highlight_terms)


def derivation(plan: KernelPlan) -> dict:
    """The plan's steps as equations: substituted outputs, per-step scalars, element code, counts."""
    rule = plan.rule
    syms = _symbols_of(plan.substituted, plan.scalar_temps, plan.element_temps, plan.outputs,
                       [(s,) for s in plan.scalars])
    if plan.reduction is not None:
        for st in plan.reduction.stages:
            syms |= _symbols_of(st.element_temps, st.tensor_temps, st.tensor_outputs)
    names = _display_names(rule, syms)
    lhs = lambda sym: _new_name(rule, sym) if sym in (rule.param, *rule.state) else names.get(sym, sp.latex(sym))
    out = {
        "substituted": equations([(lhs(s), "=", e, names) for s, e in plan.substituted]),
        "scalars": equations([(names.get(s, sp.latex(s)), "=", e, {**names, T_STEP: "t"})
                              for s, e in [*plan.scalar_temps, *zip(plan.scalars, plan.scalar_exprs)]])
        if plan.scalars else None,
        "elements": equations([(names.get(s, sp.latex(s)), "=", e, names) for s, e in plan.element_temps]
                              + [(lhs(s), "=", e, names) for s, e in plan.outputs]),
        "ops_before": plan.substituted_op_count, "ops_after": plan.op_count,
        "scalar_ops": plan.scalar_op_count, "n_scalars": len(plan.scalars),
        "n_temps": len(plan.element_temps), "reads": ", ".join(rule.state_key(s) if s in rule.state else s.name
                                                               for s in plan.reads),
        "reductions": None,
    }
    if plan.reduction is not None:
        rows = []
        for spec in plan.reduction.reductions:
            what = ("Σ over the tensor" if spec.scope == "tensor" else "Σ over every tensor") + (
                ", mean" if spec.op == "mean" else "")
            rows.append((names.get(spec.sym, sp.latex(spec.sym)), "=", spec.arg, names, what, spec.stage))
        finals = []
        for st in plan.reduction.stages:
            finals += [(names.get(s, sp.latex(s)), "=", e, names) for s, e in (*st.tensor_temps, *st.tensor_outputs)]
        out["reductions"] = {
            "sums": [{"eq": equations([r[:4]]), "what": r[4], "stage": r[5]} for r in rows],
            "tensor": equations(finals) if finals else None,
        }
    return out


def matrix_derivation(plan: MatrixPlan) -> dict:
    """A matrix rule's plan (:mod:`~symopt.codegen.plan_matrix`) in the form of :func:`derivation`:
    pass 0 (updates before the iteration, the start value into the workspace W, its sums), the
    per-tensor scalars, the iteration in BLAS, pass 1 (the update reading the result X_k)."""
    rule = plan.rule
    p0, p1 = plan.passes
    syms = _symbols_of(plan.scalar_temps, [(s,) for s in plan.scalars], p0.element_temps, p0.stores, p0.sums,
                       plan.tensor_scalars, p1.element_temps, p1.stores)
    names = _display_names(rule, syms)
    names.update({WORK: "W", RESULT: "X_{k}"})
    lhs = lambda sym: _new_name(rule, sym) if sym in (rule.param, *rule.state) else names.get(sym, sp.latex(sym))
    it = plan.iteration
    n = sp.Symbol("n")
    x, a = sp.MatrixSymbol("X", n, n), sp.MatrixSymbol("A", n, n)
    poly = sp.MatAdd(*[sp.MatMul(q, sp.MatPow(a, k) if k else sp.Identity(n), x)
                       for k, q in enumerate(it.coefficients) if q != 0])
    iteration = [("X_{0}", "=", it.scale * sp.MatrixSymbol("W", n, n), names),
                 ("A", "=", x * x.T, {**names, x: "X_{j}"}),
                 ("X_{j+1}", "=", poly, {**names, x: "X_{j}"}),
                 ("k", "=", it.count, names)]
    body = lambda ps: ([(names.get(s, sp.latex(s)), "=", e, names) for s, e in ps.element_temps]
                       + [(lhs(s), "=", e, names) for s, e in ps.stores])
    return {
        "substituted": equations(iteration),
        "scalars": equations([(names.get(s, sp.latex(s)), "=", e, {**names, T_STEP: "t"})
                              for s, e in [*plan.scalar_temps, *zip(plan.scalars, plan.scalar_exprs)]])
        if plan.scalars else None,
        "elements": equations(body(p0) + body(p1)),
        "ops_before": plan.op_count, "ops_after": plan.op_count, "scalar_ops": 0,
        "n_scalars": len(plan.scalars), "n_temps": len(p0.element_temps) + len(p1.element_temps),
        "reads": ", ".join(sorted({rule.state_key(s) if s in rule.state else s.name for s in (*p0.reads, *p1.reads)})),
        "reductions": {
            "sums": [{"eq": equations([(names.get(r, sp.latex(r)), "=", e, names)]),
                      "what": "Σ over the matrix" + (", mean" if op == "mean" else ""), "stage": 0}
                     for (r, e), (_, op) in zip(p0.sums, plan.reductions)],
            "tensor": equations([(names.get(u, sp.latex(u)), "=", e, names) for u, e in plan.tensor_scalars])
            if plan.tensor_scalars else None,
        },
    }


def factored_derivation(plan) -> dict:
    """A factored rule's plan (:mod:`~symopt.codegen.plan_factored`) in the form of :func:`derivation`:
    per layout, each pass's sums, the row/column updates and per-matrix means after it, the
    per-tensor scalars and the final pass's stores."""
    rule = plan.rule
    rows, sums, tensor = [], [], []
    for lay in plan.layouts:
        syms = _symbols_of(plan.scalar_temps, [(s,) for s in plan.scalars],
                           *[lp.temps for lp in lay.loops], *[lp.stores for lp in lay.loops],
                           *[[(s, e) for s, _, _, e in lp.sums] for lp in lay.loops],
                           *[st.row_stores + st.col_stores + st.tensor_scalars for st in lay.stages],
                           *[[(s, e) for s, _, e in st.means] for st in lay.stages])
        names = _display_names(rule, syms)
        lhs = lambda sym: _new_name(rule, sym) if sym in (rule.param, *rule.state) else names.get(sym, sp.latex(sym))
        for k, lp in enumerate(lay.loops):
            for s, scope, op, e in lp.sums:
                what = {"tensor": "over the tensor", "row": "over each row", "col": "over each column"}[scope]
                sums.append({"eq": equations([(names.get(s, sp.latex(s)), "=", e, names)]),
                             "what": f"{lay.name} params: {'mean' if op == 'mean' else 'Σ'} {what}", "stage": k})
            rows += [(names.get(s, sp.latex(s)), "=", e, names) for s, e in lp.temps]
            rows += [(lhs(s), "=", e, names) for s, e in lp.stores]
            if k < len(lay.stages):
                st = lay.stages[k]
                tensor += [(names.get(s, sp.latex(s)), "=", e, names) for s, e in st.tensor_scalars]
                rows += [(lhs(s), "=", e, names) for s, e in st.row_stores + st.col_stores]
                rows += [(names.get(s, sp.latex(s)), "=", e, names) for s, _, e in st.means]
    names = _display_names(rule, _symbols_of(plan.scalar_temps, [(s,) for s in plan.scalars]))
    return {
        "substituted": equations(rows),
        "scalars": equations([(names.get(s, sp.latex(s)), "=", e, {**names, T_STEP: "t"})
                              for s, e in [*plan.scalar_temps, *zip(plan.scalars, plan.scalar_exprs)]])
        if plan.scalars else None,
        "elements": equations(rows),
        "ops_before": plan.op_count, "ops_after": plan.op_count, "scalar_ops": 0,
        "n_scalars": len(plan.scalars), "n_temps": sum(len(lp.temps) for lay in plan.layouts for lp in lay.loops),
        "reads": ", ".join(sorted({rule.state_key(s) if s in rule.state else s.name for lay in plan.layouts
                                   for lp in lay.loops for s in lp.reads if s in (rule.param, rule.grad, *rule.state)})),
        "reductions": {"sums": sums, "tensor": equations(tensor) if tensor else None},
    }


def preconditioned_derivation(plan: PreconditionedPlan) -> dict:
    """A preconditioned rule's plan (:mod:`~symopt.codegen.plan_preconditioned`) in the form of
    :func:`derivation`: the element passes (each ending with a value's start G_k into its workspace)
    and, after each, the matrix states' BLAS/LAPACK operations and the value P_k."""
    rule = plan.rule
    syms = _symbols_of(plan.scalar_temps, [(s,) for s in plan.scalars],
                       *[part for p in plan.passes for part in (p.element_temps, p.stores)])
    names = _display_names(rule, syms)
    nvalues = len(plan.stages) - 1
    names.update({work_buffer(k): f"G_{{{k}}}" for k in range(nvalues)})
    names.update({result_buffer(k): f"P_{{{k}}}" for k in range(nvalues)})
    lhs = lambda sym: _new_name(rule, sym) if sym in (rule.param, *rule.state) else names.get(sym, sp.latex(sym))
    r, c = sp.symbols("r c")
    gs = [sp.MatrixSymbol(f"G_{{{k}}}", r, c) for k in range(nvalues)]
    # a state kept per axis k is shown as <key>_k, d_k × d_k, against the unfolding G_(k)
    mats = [sp.MatrixSymbol(key.replace("_", r"\_") + ("_{k}" if side == "axes" else ""),
                            *((c, c) if side == "cols" else (r, r)))
            for key, side, _ in plan.matrix_states]
    body = lambda ps: ([(names.get(s, sp.latex(s)), "=", e, names) for s, e in ps.element_temps]
                       + [(lhs(s), "=", e, names) for s, e in ps.stores])
    rows_ = []
    for k, (ps, stage) in enumerate(zip(plan.passes, plan.stages)):
        rows_ += body(ps)
        for op in stage.ops:
            target = mats[op.target]
            if op.kind == "gram":
                alpha, beta = op.coefficients
                g = gs[op.source]
                rhs = beta * target + alpha * (g.T * g if op.side == "cols" else g * g.T)
            elif op.kind == "inverse_root":   # the order c · n^e (n: the param's number of axes)
                c_root, e_root = op.coefficients
                rhs = sp.MatPow(mats[op.source], -1 / (c_root * sp.Symbol("n") ** e_root))
            else:
                rhs = sp.Function("eigenbasis")(mats[op.source], target, op.reorder, op.coefficients[0])
            rows_.append((sp.latex(target), "=", rhs, {**names, T_STEP: "t"}))
        pr = stage.product
        if pr is not None:
            side = lambda j, tr: [] if j is None else [mats[j].T if tr else mats[j]]
            rows_.append((f"P_{{{k}}}", "=", sp.MatMul(*side(pr.left, pr.left_transposed), gs[k],
                                                       *side(pr.right, pr.right_transposed)), names))
    return {
        "substituted": equations(rows_),
        "scalars": equations([(names.get(s, sp.latex(s)), "=", e, {**names, T_STEP: "t"})
                              for s, e in [*plan.scalar_temps, *zip(plan.scalars, plan.scalar_exprs)]])
        if plan.scalars else None,
        "elements": equations([row for ps in plan.passes for row in body(ps)]),
        "ops_before": plan.op_count, "ops_after": plan.op_count, "scalar_ops": 0,
        "n_scalars": len(plan.scalars), "n_temps": sum(len(p.element_temps) for p in plan.passes),
        "reads": ", ".join(sorted({rule.state_key(s) if s in rule.state else s.name
                                   for p in plan.passes for s in p.reads if s not in plan.buffers})),
        "reductions": {"sums": [], "tensor": None},
    }


def _header(source: str) -> dict:
    """The generated module's header lines (``# key: value``) as a dict."""
    out = {}
    for line in source.splitlines()[:12]:
        m = re.match(r"# ([a-z ]+?):\s+(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
        m = re.match(r"# Generated by symopt (\S+)", line)
        if m:
            out["version"] = m.group(1)
    return out


def _functions(source: str, names) -> str:
    """The source of the module-level functions ``names`` (decorators included), in file order."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    parts = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            parts.append("".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(parts)


def _family_data(source: str) -> dict:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FAMILY" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("the generated module has no FAMILY")


def module_source(family: Family, builtin: bool) -> tuple:
    """``(source, where)``: the checked-in module of a built-in rule, else the module the
    generator renders for this family (what a user rule runs)."""
    if builtin:
        from ..runtime.kernels import load_builtin

        path = load_builtin(family.name).__file__
        with open(path, encoding="utf-8") as fh:
            return fh.read(), f"generated/{path.replace(chr(92), '/').rsplit('/', 1)[-1]}"
    from ..codegen.render import render_family

    return render_family(family), "the user cache ($SYMOPT_CACHE_DIR), generated on first use"


def backend_sources(family: Family, builtin: bool) -> list:
    """``[{name, module, where, header}]`` of the array backends' modules of ``family`` (torch, JAX):
    the checked-in ones of a built-in rule, else what the generator renders; none for a matrix plan without an
    array template."""
    from ..codegen.render import TARGETS, has_array_module, render_array_family

    if not has_array_module(family):
        return []
    out = []
    for name, target in TARGETS.items():
        if builtin:  # read as text: importing it would import torch or JAX
            from .. import generated

            path = Path(generated.__file__).parent / name / f"{generated.RULES[family.name]}.py"
            source, where = path.read_text(encoding="utf-8"), f"generated/{name}/{path.name}"
        else:
            source, where = render_array_family(family, target), f"the user cache (kernels-{name}/)"
        out.append({"name": {"torch": "PyTorch", "jax": "JAX"}.get(name, name), "module": highlight(source),
                    "where": where, "header": _header(source)})
    return out


def verification(family: Family, samples: int) -> list:
    """``symopt verify``'s rows for every variant and dtype (mpmath at 50 digits)."""
    from ..verify.check import (verify_factored_variant, verify_matrix_variant, verify_preconditioned_variant,
                                verify_variant)

    rows = []
    for _, rule in family.variants:
        for dtype in ("float32", "float64"):
            r = (verify_factored_variant(family, rule, dtype) if is_factored_rule(rule)
                 else verify_preconditioned_variant(family, rule, dtype) if is_preconditioned_rule(rule)
                 else verify_matrix_variant(family, rule, dtype) if is_matrix_rule(rule)
                 else verify_variant(family, rule, dtype, samples=samples))
            rows.append({"variant": r.variant, "dtype": r.dtype, "error": f"{r.max_error:.3e}",
                         "tolerance": f"{r.tolerance:.0e}", "ok": r.ok, "samples": r.samples})
    return rows


def peers(family: Family) -> list:
    tol = PEER_TOLERANCE.get(family.group, {})
    return [{"library": peer_label(key), "tolerance": ", ".join(f"{d} {v:.0e}" for d, v in tol.items())}
            for key in RULE_PEERS.get(family.name, ())]


def siblings(name: str) -> list:
    out = []
    for group in CONVENTIONS:
        if name in group:
            out += [n for n in group if n != name and n not in out]
    return out


# ----------------------------------------------------------------------------- conventions
def _canonical(rule: Rule, family: Family) -> dict:
    """Symbols by role, so that two conventions compare term by term: hyperparameters by keyword,
    state by symbol name, θ and g."""
    out = {rule.param: sp.Symbol("〈param〉"), rule.grad: sp.Symbol("〈grad〉")}
    for sym in rule.hyper:
        h = family.hyper[sym]
        out[sym] = sp.Symbol(f"〈{h.key or sym.name}[{h.index}]〉")
    for sym in rule.state:
        out[sym] = sp.Symbol(f"〈state {sym.name}〉")
    return out


def _keys(family: Family, rule: Rule) -> set:
    return {(family.hyper[s].key or s.name, family.hyper[s].index) for s in rule.hyper}


def resolved_updates(family: Family, rule: Rule, common: set) -> list:
    """``(key, lhs, rhs)``: each state's update and the param's, temporaries and gradient
    rebindings substituted, keywords outside ``common`` at their defaults."""
    fixed = {}
    for s in rule.hyper:
        h = family.hyper[s]
        if (h.key or s.name, h.index) not in common:
            v = h.default
            fixed[s] = sp.Integer(int(v)) if isinstance(v, bool) or float(v).is_integer() else sp.Float(v)
    env: dict = {}
    order = []
    for lhs, rhs in rule.updates:
        rhs = rhs.xreplace(fixed).xreplace(env) if env else rhs.xreplace(fixed)
        if lhs in rule.state:
            order.append((lhs.name, lhs, rhs))
        else:
            env[lhs] = rhs
    order.append(("θ", rule.param, env.get(rule.param, rule.param)))
    return order


def differing(a, b) -> list:
    """The sub-expressions of ``a`` that differ from ``b``, as finely as the trees allow."""
    if a == b:
        return []
    if type(a) is type(b) and a.args and b.args:
        if isinstance(a, (sp.Add, sp.Mul)):
            ra, rb = list(a.args), list(b.args)
            for x in list(ra):
                if x in rb:
                    ra.remove(x)
                    rb.remove(x)
            if len(ra) == len(rb) == 1:
                return differing(ra[0], rb[0])
            return ra
        if len(a.args) == len(b.args):
            return [d for x, y in zip(a.args, b.args) for d in differing(x, y)]
    return [a]


def _marks(terms) -> set:
    """Highlighted nodes: each term, and for a divisor also the denominator the printer draws."""
    out = set()
    for d in terms:
        out.add(d)
        if isinstance(d, sp.Pow) and d.exp.is_number and d.exp < 0:
            out.add(d.base ** (-d.exp))
    return out


def conventions(family: Family, others: list) -> list:
    """Columns of the same rule in each convention, each term that differs from this page's rule marked."""
    from ..rulebook.catalog import family as builtin_family

    fams = [family] + [builtin_family(n) for n in others]
    rules = [f.default_rule for f in fams]
    common = set.intersection(*[_keys(f, r) for f, r in zip(fams, rules)])
    resolved = [resolved_updates(f, r, common) for f, r in zip(fams, rules)]
    canon = [{k: e.xreplace(_canonical(r, f)) for k, _, e in res} for f, r, res in zip(fams, rules, resolved)]
    columns = []
    for k, (f, r, res) in enumerate(zip(fams, rules, resolved)):
        inverse = {v: s for s, v in _canonical(r, f).items()}
        ref = canon[0] if k else (canon[1] if len(canon) > 1 else canon[0])
        rows, marked = [], set()
        names = _display_names(r, ())
        assigned = set()
        for key, lhs, rhs in res:
            other = ref.get(key)
            diffs = differing(canon[k][key], other) if other is not None else [canon[k][key]]
            marked |= _marks(d.xreplace(inverse) for d in diffs)
            seen = {**names, **{s: subscripted(base_latex(r, s), "t") for s in assigned}}
            rows.append((_new_name(r, lhs), "=", rhs, seen))
            assigned.add(lhs)
        columns.append({"name": f.name, "source": f.source, "equations": equations(rows, highlight=marked),
                        "fixed": sorted({h.key or s.name for s, h in f.hyper.items()
                                         if (h.key or s.name, h.index) not in common and s in r.hyper})})
    return columns


# ----------------------------------------------------------------------------- pages
def family_page(family: Family, *, builtin: bool, samples: int = 50, plot: bool = True) -> dict:
    """Everything a rule page shows (see the module doc)."""
    source, where = module_source(family, builtin)
    data = _family_data(source)
    variants = []
    for (when, rule), vdata in zip(family.variants, data["variants"]):
        matrix, factored, preconditioned = is_matrix_rule(rule), is_factored_rule(rule), is_preconditioned_rule(rule)
        plan = (make_factored_plan(rule) if factored else make_preconditioned_plan(rule) if preconditioned
                else make_matrix_plan(rule) if matrix else make_plan(rule))
        prefix = vdata["prefix"]
        fn_names = ([f"{prefix}_scalars", f"{prefix}_state_init", f"{prefix}_f64_matrix", f"{prefix}_f64_vector"]
                    if factored else
                    [f"{prefix}_scalars", *(f"{prefix}_f64_pass{k}" for k in range(len(plan.passes))),
                     "_inverse_root", *(["_eigenbasis"] if not all(plan.symmetric) else []), f"{prefix}_f64"]
                    if preconditioned else
                    [f"{prefix}_scalars", f"{prefix}_tensor_scalars", f"{prefix}_f64_pass0", f"{prefix}_f64",
                     f"{prefix}_f64_pass1"] if matrix else
                    [f"{prefix}_scalars", f"{prefix}_state_init", f"{prefix}_f64", f"{prefix}_reduce_f64"])
        cond_names = {s: base_latex(next((r for _, r in family.variants if s in r.hyper), rule), s)
                      if any(s in r.hyper for _, r in family.variants) else sp.latex(s) for s in when.free_symbols}
        variants.append({
            "name": rule.name, "default": when == sp.true,
            "condition": None if when == sp.true else math(when, cond_names),
            "options": sorted({family.hyper[s].key or s.name for s in when.free_symbols}),
            "equations": update_equations(rule), "state": state_table(rule),
            "derivation": (factored_derivation(plan) if factored else preconditioned_derivation(plan) if preconditioned
                           else matrix_derivation(plan) if matrix
                           else derivation(plan)),
            "kernel": highlight(_functions(source, fn_names)),
        })
    others = siblings(family.name) if builtin else []
    matrix_family = any(is_matrix_rule(r) or is_factored_rule(r) or is_preconditioned_rule(r)
                        for _, r in family.variants)
    return {
        "kind": "rule", "title": family.name, "family": family, "builtin": builtin,
        "doc_summary": family.doc.partition("\n\n")[0], "doc_more": family.doc.partition("\n\n")[2],
        "symbols": symbol_table(family), "variants": variants,
        "module": highlight(source), "module_where": where, "header": _header(source),
        "backends": backend_sources(family, builtin),
        "verification": verification(family, samples) if samples else [], "samples": samples,
        "peers": peers(family),
        "plot": (figure(plots.matrix_trajectory(family)) if matrix_family else
                 figure(plots.trajectory(family, others), plots.TRAJECTORY_CAPTION)) if plot else None,
        "conventions": conventions(family, others) if others else [],
    }


def plan_page(plan: KernelPlan) -> dict:
    rule = plan.rule
    return {"kind": "plan", "title": f"plan of {rule.name}", "rule": rule, "equations": update_equations(rule),
            "derivation": derivation(plan)}


def schedule_page(schedule, *, doc: str = "", plot: bool = True) -> dict:
    return {"kind": "schedule", "title": repr(schedule), "schedule_name": f"schedule.{schedule.name}", "doc": doc,
            "formula": equations([(r"\eta_{t}", "=", schedule.expr, {T_STEP: "t"})]),
            "plot": figure(plots.schedule(schedule)) if plot else None}


def transform_page(name: str, make, base: Rule) -> dict:
    """A transform composed with plain gradient descent: the updates it adds, the rule it makes."""
    from ..rulebook.compose import compose

    rule = compose(base, make())
    return {"kind": "transform", "title": f"transform.{name}", "name": name, "doc": (make.__doc__ or "").strip(),
            "base": update_equations(base), "equations": update_equations(rule),
            "symbols": symbol_table(Family.of(rule)), "derivation": derivation(make_plan(rule))}


def nn_page(spec, *, plot: bool = True) -> dict:
    """A loss or activation: definition, derivative, the forms the planner weighed, kernel bodies."""
    from ..codegen.plan_gradients import plan_elementwise, plan_rowwise
    from ..rulebook.nn.spec import Rowwise

    names = {s: spec.latex_names.get(s.name, sp.latex(s)) for s in spec.hyper}
    out = {"kind": spec.kind, "title": f"{spec.kind}.{spec.name}", "spec": spec, "rowwise": isinstance(spec, Rowwise),
           "plot": figure(plots.nn_function(spec)) if plot else None}
    if isinstance(spec, Rowwise):
        plan = plan_rowwise(spec)
        out["derived"] = [{"label": k, "math": math(e, names, display=True)} for k, e in spec.derived.items()]
        kernels = []
        for kname, k in plan.kernels.items():
            rows = []
            for step in k.steps:
                if step[0] == "reduce":
                    rows.append((sp.latex(step[1]), "=", sp.Function(step[2])(step[3]), names))
                elif step[0] == "row":
                    rows.append((sp.latex(step[1]), "=", step[2], names))
                else:
                    names = {**names, **_temp_names(step[1])}
                    rows += [(names[s], "=", e, names) for s, e in step[1]]
                    rows.append((r"\mathrm{out}_{j}", "=", step[2], names))
            kernels.append({"name": kname, "ops": k.ops, "equations": equations(rows) if rows else None})
        out["kernels"] = kernels
        return out
    plan = plan_elementwise(spec)
    if spec.output is not None:
        names[spec.output] = spec.latex_names.get(spec.output.name, "y")
    out.update({
        "definition": math(spec.expr, names, display=True),
        "kernel_form": math(plan.forward, names, display=True) if plan.forward != spec.expr else None,
        "raw": math(plan.raw, names, display=True), "reference": math(plan.reference, names, display=True),
        "derivative": math(plan.display, names, display=True),
        "chosen": plan.chosen, "forward_ops": plan.forward_ops, "derivative_ops": plan.derivative_ops,
        "raw_ops": plan.raw_ops,
        "candidates": [{"label": c.label, "math": math(c.expr, names), "ops": c.ops, "error": f"{c.max_err:.2e}",
                        "accepted": c.accepted, "chosen": c.label == plan.chosen} for c in plan.candidates],
        "kernels": [_body(k, temps, outs, names) for k, (temps, outs) in plan.bodies.items()],
    })
    return out


def _body(name: str, temps, outs, names: dict) -> dict:
    """One CSE'd kernel body: its temporaries and outputs as equations, and its operation count."""
    names = {**names, **_temp_names(temps)}
    return {"name": name, "ops": sum(int(sp.count_ops(e)) for _, e in temps) + sum(int(sp.count_ops(e)) for e in outs),
            "equations": equations([(names[s], "=", e, names) for s, e in temps]
                                   + [(r"\mathrm{out}", "=", e, names) for e in outs])}


def gradient_page(grad, max_symbols: int = 8) -> dict:
    """``symopt.gradient``: the expression, its partial derivatives, and the reverse-mode plan."""
    program = grad.program
    partials = None
    if grad.n <= max_symbols:
        parts: dict = {s: [] for s in grad.wrt}
        for g in program.groups:
            resolved: dict = {}
            for s, e in (*g.sweep.forward, *g.sweep.reverse):
                resolved[s] = e.xreplace(resolved)
            per = [d.xreplace(resolved) for d in g.sweep.grads]
            for row, consts in zip(g.index, g.exact_consts):
                sub = {p: grad.wrt[int(i)] for p, i in zip(g.inputs, row)}
                sub.update(dict(zip(g.params, consts)))
                for p, i, d in zip(g.inputs, row, per):
                    parts[grad.wrt[int(i)]].append(d.xreplace(sub))
        partials = equations([(rf"\frac{{\partial f}}{{\partial {sp.latex(s)}}}", "=", sp.Add(*parts[s]), {})
                              for s in grad.wrt])
    groups = []
    for k, g in enumerate(program.groups):
        groups.append({
            "template": math(g.template, display=True), "terms": len(g.index),
            "forward": equations([(sp.latex(s), "=", e, {}) for s, e in g.sweep.forward]) if g.sweep.forward else None,
            "reverse": equations([(sp.latex(s), "=", e, {}) for s, e in g.sweep.reverse]) if g.sweep.reverse else None,
            "grads": equations([(rf"\frac{{\partial t}}{{\partial {sp.latex(p)}}}", "=", d, {})
                                for p, d in zip(g.inputs, g.sweep.grads)]),
            "forward_ops": g.forward_ops, "reverse_ops": g.reverse_ops})
    return {"kind": "gradient", "title": "symopt.gradient", "expr": math(grad.expr, display=True), "n": grad.n,
            "partials": partials, "groups": groups, "forward_ops": grad.forward_ops,
            "reverse_ops": grad.reverse_ops, "ratio": f"{grad.ops_ratio:.2f}", "terms": program.n_terms}

"""The table of built-in rules that the rule tests run over (as torch's ``optim_db``).

One :class:`RuleInfo` per rule of ``symopt.rules()`` in :data:`RULE_DB`, holding what the
tests know of it:

* ``reference``: the hand-written NumPy reference step (``tests/references/``; the calling
  convention is in ``tests/references/__init__.py``), and ``reference_cases``: the keyword
  sets the reference-step test runs beside the defaults;
* ``peer_cases``: keyword combinations run side by side with a peer library
  (:class:`PeerCase`: which library, symopt's keywords, how to build the peer with its
  keyword mapping); the libraries are :data:`symopt.provenance.RULE_PEERS`, which
  ``tests/test_rule_db.py`` holds equal to the libraries of these cases;
* ``torch_optim``: the ``torch.optim`` class whose keywords and defaults the rule copies;
* ``tolerance``: the largest :func:`conftest.rel_err` accepted, per test kind and dtype
  (a dtype absent from a kind is not compared in it);
* ``known_issues``: the discrepancies the property tests found, each with the rule that
  keeps its trigger out of the drawn inputs.

Tests: ``test_torch_parity.py``, ``test_optax_parity.py``, ``test_research_parity.py``,
``test_notes.py`` (peer cases), ``test_reference_steps.py`` and ``test_properties.py``
(reference), ``test_verify.py``, ``test_resume.py``; ``test_rule_db.py`` keeps the table
complete.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from references import notes, optax_compat, research, torch_compat

import symopt
from symopt.provenance import PEER_TOLERANCE, RULE_PEERS
from symopt.rulebook.factored import is_factored_rule
from symopt.rulebook.preconditioned import Preconditioned

F32, F64 = np.float32, np.float64


@dataclass(frozen=True)
class PeerCase:
    """One keyword combination that symopt and a peer library run side by side.

    ``build`` makes the peer from the loaded libraries ``lib`` (a namespace: ``torch``, ``po``
    for pytorch-optimizer, ``sf`` for schedulefree, ``optax``, ``jnp``): ``build(lib, params)``
    returns a torch-style optimizer over ``params`` (torch, pytorch-optimizer, schedulefree),
    ``build(lib)`` an Optax ``GradientTransformation``; for ``"notes"`` it is the notes'
    transcription, a step function as in ``tests/references``.  ``group0``: extra keys of a
    first param group holding the first tensor (the others are in a second group with the
    defaults); ``change``: ``{key: value}`` set on every param group halfway through the run;
    ``dtypes``: the dtypes the case runs in; ``note``: how the peer's convention differs, if it does.
    """

    library: str
    kwargs: Mapping
    build: Callable
    group0: Mapping | None = None
    change: Mapping | None = None
    dtypes: tuple = (F64,)
    note: str = ""


@dataclass(frozen=True)
class KnownIssue:
    """A discrepancy the property tests found, and ``exclude(name, kw, dtype, grads, fam) ->
    (kw, grads)``: the drawn example with the issue's trigger replaced."""

    title: str
    text: str
    exclude: Callable


@dataclass(frozen=True)
class RuleInfo:
    """What the tests know of one built-in rule (see the module doc)."""

    name: str
    reference: Callable | None
    reference_cases: tuple = ()
    peer_cases: tuple = ()
    tolerance: Mapping | None = None
    known_issues: tuple = ()
    torch_optim: str | None = None
    matrix: bool = False    # reads params as matrices (an Iterate, row/col statistics): not in ELEMENTWISE

    @property
    def group(self) -> str:
        return symopt.family(self.name).group

    @property
    def peers(self) -> tuple:
        """The peer libraries this rule is compared with (:data:`symopt.provenance.RULE_PEERS`)."""
        return RULE_PEERS.get(self.name, ())


# ------------------------------------------------------------------------------ tolerances
#: Per test kind: params and state after every step, against
#: "reference": the NumPy reference step over 20 steps (float64: 20 · 1e-12 of rounding
#:     differences of ~1e-16 per operation, with a wide margin; float32: float32 rounding over
#:     20 steps), max-norm;  "reference displacement": θ_t − θ_0 against it, max-norm (not in
#:     float32, where the params' own rounding is ~1e-5 of a displacement of ~0.1);
#: "peer": the peer's trajectory over 100 steps (30 for the notes): params elementwise, state
#:     max-norm; torch's params and state elementwise in float64 and max-norm in float32 (a
#:     param passing near zero keeps only its absolute error there);
#: "peer displacement": θ_t − θ_0 against the peer's, max-norm;
#: "verify": ``symopt verify``'s own tolerance against 50-digit mpmath.
_COMMON = {"reference": {F64: 2e-11, F32: 1e-4}, "reference displacement": {F64: 2e-11},
           "verify": {F32: 2e-5, F64: 1e-12}}
#: "peer" per group is :data:`symopt.provenance.PEER_TOLERANCE` (the report shows it beside the peer).
_PEER = {group: {np.dtype(d).type: tol for d, tol in tols.items()} for group, tols in PEER_TOLERANCE.items()}
_GROUP_TOLERANCE = {
    # the notes: float32 starts from the same values as the float64 transcription, so its error
    # is float32 rounding over 30 steps (2^-22 at |θ| ≈ 2.5 per step, against a displacement of ~0.1)
    "notes": {"peer": _PEER["notes"], "peer displacement": {F64: 1e-10, F32: 1e-4}},
    "torch": {"peer": _PEER["torch"]},
    "optax": {"peer": _PEER["optax"], "peer displacement": {F64: 1e-9}},
    "research": {"peer": _PEER["research"], "peer displacement": {F64: 1e-9}},
    # matrix rules: tests/test_matrix.py (float64 transcription 1e-9, torch.optim.Muon in bfloat16 5e-3)
    "matrix": {"peer": _PEER["matrix"]},
}


# ----------------------------------------------------------------------------- known issues
@functools.cache
def lerp_weights(name) -> frozenset:
    """(key, index) of every hyperparameter inside the weight w of an update m <- m + w (x - m)."""
    import sympy as sp

    fam = symopt.family(name)
    found = set()
    for _, rule in fam.variants:
        for _, rhs in rule.updates:
            for node in sp.preorder_traversal(rhs):
                if not isinstance(node, sp.Add):
                    continue
                for x in [a for a in node.args if isinstance(a, sp.Symbol)]:
                    for term in node.args:
                        if not isinstance(term, sp.Mul):
                            continue
                        diffs = [f for f in term.args if isinstance(f, sp.Add) and -x in f.args]
                        if diffs:
                            weight = sp.Mul(*[f for f in term.args if f is not diffs[0]])
                            found |= {s for s in weight.free_symbols if s in fam.hyper}
    return frozenset((fam.hyper[s].key or s.name, fam.hyper[s].index) for s in found)


def _lerp_weights_at_least_half(name, kw, dtype, grads, fam):
    for key, index in lerp_weights(name):
        if key in kw:
            value = kw[key] if index is None else kw[key][index]
            if isinstance(value, float) and value < 0.5:
                value = 0.5 + value / 2
                kw = {**kw, key: value if index is None else
                      tuple(value if i == index else v for i, v in enumerate(kw[key]))}
    return kw, grads


def _reduction_eps_not_zero(name, kw, dtype, grads, fam):
    if any("reduce" in v for v in fam["variants"]):
        for h in fam["hyper"]:
            if h["kind"] == "float" and h["index"] is None and "eps" in h["key"] and kw.get(h["key"]) == 0:
                kw = {**kw, h["key"]: h["default"]}
    return kw, grads


def _centered_eps_not_zero(name, kw, dtype, grads, fam):
    if kw.get("centered") and kw.get("eps") == 0:
        kw = {**kw, "eps": 1e-8}
    return kw, grads


def _no_gradient_near_underflow(name, kw, dtype, grads, fam):
    small = math.sqrt(float(np.finfo(dtype).tiny)) * 1e4
    return kw, [[np.where(np.abs(g) < small, np.zeros_like(g), g) for g in gs] for gs in grads]


LERP = KnownIssue(
    "lerp",
    "Many rules write an EMA as m + w (x - m) (torch's lerp_ formula for w < 0.5 only). For w > 0.5 (a β "
    "below 0.5) that loses accuracy relative to the result, and at w = 1 (β = 0) it gives m + (x - m), which "
    "loses x entirely when |x| << |m| (float32: |x| < 6e-8 |m|); torch switches to x - (1 - w)(x - m) for "
    "w >= 0.5 and returns x.  Excluded: the hyperparameters inside such a weight are drawn >= 0.5 for the "
    "rules that have the pattern (found in their SymPy updates).",
    _lerp_weights_at_least_half)
REDUCTIONS_EPS_ZERO = KnownIssue(
    "reductions, eps = 0",
    "With eps = 0, g / sqrt(v) for a float32 g whose square falls below the normal range is huge or inf, and "
    "a reduction (RMS clipping, norms) carries it to every element of the tensor -- in a different way than "
    "the float32 NumPy reference, whose products underflow in another order.  Excluded: for rules with "
    "reduction passes, an eps keyword of exactly 0 is drawn as its default.",
    _reduction_eps_not_zero)
CAUTIOUS_UNDERFLOW = KnownIssue(
    "cautious",
    "The cautious mask is Heaviside(-Δ·g) with Δ = lr·u: Δ·g (and u itself, for eps = 0) underflows for "
    "gradients near the bottom of the dtype's range, so such an element counts as disagreeing and rescales "
    "the whole tensor's step (a count: one flip moves every element by ~1/n).  Excluded: |g| < 1e4·sqrt(tiny) "
    "is drawn as 0.",
    _no_gradient_near_underflow)
RMSPROP_CENTERED_EPS_ZERO = KnownIssue(
    "rmsprop centered, eps = 0",
    "The centered variance v - m² can round to 0 or below in float32 (torch's "
    "square_avg.addcmul(grad_avg, grad_avg, value=-1) as well); with eps = 0 the step is then inf or NaN "
    "where the float64 reference is finite.  Excluded: eps = 0 with centered=True is drawn as 1e-8.",
    _centered_eps_not_zero)
#: Issues whose trigger each rule detects itself (the lerp pattern, reduction passes): every rule has them.
_EVERY_RULE = (LERP, REDUCTIONS_EPS_ZERO)


# ------------------------------------------------------------------------------- peer cases
def _torch_optim_case(cls, group0=None, change=None, **kw):
    """torch.optim.<cls>(params, foreach=False, **kw): the same keywords, the single-tensor path the
    rules are read from; float64 and float32."""
    return PeerCase("torch", kw, lambda lib, params: getattr(lib.torch.optim, cls)(params, foreach=False, **kw),
                    group0=group0, change=change, dtypes=(F64, F32))


def _notes_rule(name, fn, lr, reference_case):
    """A notes rule: its transcription is both the reference step and the peer, run at a learning
    rate (the notes give none) with the rule's defaults in both dtypes, and with the reference
    case's other hyperparameters in float64."""
    other = {k: v for k, v in reference_case.items() if k != "lr"}
    return RuleInfo(name, fn, (reference_case,), (PeerCase("notes", dict(lr=lr), fn, dtypes=(F64, F32)),
                                                  PeerCase("notes", dict(lr=lr, **other), fn, dtypes=(F64,))))


def _po(make, **kw):
    """A pytorch-optimizer case: ``make(po, params)``."""
    return PeerCase("pytorch-optimizer", kw, lambda lib, params: make(lib.po, params))


def _sf(make, **kw):
    return PeerCase("schedulefree", kw, lambda lib, params: make(lib.sf, params), note="train mode; the param is y")


def _ox(make, note="", **kw):
    """An Optax case: ``make(optax, jnp)`` returns the transformation."""
    return PeerCase("optax", kw, lambda lib: make(lib.optax, lib.jnp), note=note)


def _qhadam_f64(torch, opt):
    """pytorch-optimizer keeps QHAdam's weights Σβ^i in float32 tensors (1e-8 relative); start them in float64."""
    for group in opt.param_groups:
        for p in group["params"]:
            opt.state[p].update(beta1_weight=torch.zeros(1, dtype=torch.float64),
                                beta2_weight=torch.zeros(1, dtype=torch.float64),
                                exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    return opt


def _adafactor_f64(optax, jnp, lr, **kw):
    """optax.adafactor(factored=False) with its decay 1 − t^(−0.8) computed in float64 (Optax: float32)."""
    from optax._src import factorized

    def decay64(i, exponent=0.8):
        return 1.0 - jnp.asarray(i + 1, jnp.float64) ** (-exponent)

    return optax.chain(
        factorized.scale_by_factored_rms(factored=False, decay_rate=kw.get("decay_rate", 0.8),
                                         decay_rate_fn=decay64, epsilon=1e-30),
        optax.clip_by_block_rms(kw.get("clipping_threshold", 1.0)),
        optax.scale_by_learning_rate(lr, flip_sign=False),
        optax.scale_by_param_block_rms(),
        optax.add_decayed_weights(kw.get("weight_decay_rate", 0.0)),
        optax.scale(-1.0),
    )


def _adafactor_optax_f64(optax, jnp, lr, min_dim, **kw):
    """optax.adafactor(factored=True) as its chain, with the decay 1 − t^(−c) in float64 (Optax: float32)."""
    from optax._src import factorized

    def decay64(i, exponent=0.8):
        return 1.0 - jnp.asarray(i + 1, jnp.float64) ** (-exponent)

    tx = [factorized.scale_by_factored_rms(True, kw.get("decay_rate", 0.8), kw.get("decay_offset", 0), min_dim,
                                           kw.get("eps", 1e-30), decay_rate_fn=decay64)]
    if kw.get("clipping_threshold", 1.0) is not None:
        tx.append(optax.clip_by_block_rms(kw.get("clipping_threshold", 1.0)))
    tx.append(optax.scale_by_learning_rate(lr, flip_sign=False))
    if kw.get("multiply_by_parameter_scale", True):
        tx.append(optax.scale_by_param_block_rms())
    if kw.get("momentum") is not None:
        tx.append(optax.ema(kw["momentum"], debias=False, accumulator_dtype=jnp.float64))
    if kw.get("weight_decay_rate") is not None:
        tx.append(optax.add_decayed_weights(kw["weight_decay_rate"], mask=kw.get("weight_decay_mask")))
    return optax.chain(*tx, optax.scale(-1.0))


def _torch_rule(name, cls, reference, reference_cases, cases, known_issues=()):
    """A torch-compatible rule: ``torch.optim.<cls>`` runs every case of ``cases``."""
    return RuleInfo(name, reference, tuple(reference_cases), tuple(_torch_optim_case(cls, **kw) for kw in cases),
                    known_issues=known_issues, torch_optim=cls)


# Torch cases: every variant, every option at a non-default value, a param-group case and a
# mid-run hyperparameter change.
_RECORDS = [
    _notes_rule("notes.gd", notes.gd, 0.02, dict(lr=0.3)),
    _notes_rule("notes.sgd", notes.sgd, 0.02, dict(lr=0.002)),
    _notes_rule("notes.adagrad", notes.adagrad, 0.02, dict(lr=0.1, eps=1e-4)),
    _notes_rule("notes.rmsprop", notes.rmsprop, 0.02, dict(lr=0.02, gamma=0.5, eps=1e-6)),
    _notes_rule("notes.adam", notes.adam, 0.005, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-7)),
    _notes_rule("notes.adam_warmup", notes.adam_warmup, 0.005, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-5)),
    _torch_rule("sgd", "SGD", torch_compat.sgd, [
        dict(lr=0.05, weight_decay=0.1, maximize=True),
        dict(lr=0.05, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    ], [
        dict(),
        dict(lr=0.05),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, maximize=True),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.05, momentum=0.5, dampening=0.1, weight_decay=0.01, maximize=True),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
        dict(lr=0.05, momentum=0.9, change=dict(lr=0.01, momentum=0.5, dampening=0.5)),
    ]),
    _torch_rule("adam", "Adam", torch_compat.adam, [
        dict(lr=0.01, amsgrad=True, weight_decay=0.1, maximize=True),
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True),
    ], [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99)),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, maximize=True, eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True, maximize=True),
        dict(lr=0.01, weight_decay=0.1, amsgrad=True, group0=dict(lr=0.03, betas=(0.5, 0.9))),
    ]),
    _torch_rule("adamw", "AdamW", torch_compat.adamw, [
        dict(lr=0.01, amsgrad=True, maximize=True, eps=1e-6),
        dict(lr=0.01, weight_decay=0.0),
    ], [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, weight_decay=0.0, maximize=True, eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True),
    ]),
    _torch_rule("adagrad", "Adagrad", torch_compat.adagrad, [
        dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.5, weight_decay=0.1, maximize=True),
    ], [
        dict(),
        dict(lr=0.1, lr_decay=0.01),
        dict(lr=0.1, initial_accumulator_value=0.5),
        dict(lr=0.1, weight_decay=0.1, maximize=True, eps=1e-6),
        dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1, weight_decay=0.01, maximize=True,
             change=dict(lr_decay=0.0)),
    ]),
    _torch_rule("rmsprop", "RMSprop", torch_compat.rmsprop, [
        dict(lr=0.01, momentum=0.9), dict(lr=0.01, centered=True, alpha=0.9),
        dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, maximize=True),
    ], [
        dict(),
        dict(lr=0.01, centered=True),
        dict(lr=0.003, momentum=0.9),
        dict(lr=0.003, centered=True, momentum=0.9),
        dict(lr=0.01, alpha=0.9, weight_decay=0.1, maximize=True, eps=1e-6),
        dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.1, maximize=True),
    ], known_issues=(RMSPROP_CENTERED_EPS_ZERO,)),
    _torch_rule("adamax", "Adamax", torch_compat.adamax, [
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, maximize=True),
    ], [
        dict(),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
        dict(lr=0.01, weight_decay=0.1, maximize=True),
    ]),
    _torch_rule("nadam", "NAdam", torch_compat.nadam, [
        dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    ], [
        dict(),
        dict(lr=0.01, momentum_decay=0.01, betas=(0.8, 0.99)),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, maximize=True, eps=1e-6),
        # mu_product is history: changing momentum_decay mid-run keeps the old factors
        dict(lr=0.01, change=dict(momentum_decay=0.02, betas=(0.8, 0.999))),
    ]),
    _torch_rule("radam", "RAdam", torch_compat.radam, [
        dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    ], [
        dict(),
        dict(lr=0.01, betas=(0.9, 0.99)),
        dict(lr=0.01, betas=(0.9, 0.6)),       # ρ∞ ≈ 4: never rectified, no division by ρ∞ − 4
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, eps=1e-6),
    ]),
    _torch_rule("adadelta", "Adadelta", torch_compat.adadelta, [
        dict(lr=0.5, rho=0.95, eps=1e-4, weight_decay=0.1, maximize=True),
    ], [
        dict(),
        dict(lr=0.5, rho=0.95),
        dict(lr=0.5, weight_decay=0.1, maximize=True, eps=1e-4),
        dict(rho=1.0),                          # ρ = 1 is valid in torch: the averages never move
    ]),
    # Optax's rules: cases passing only lr run both libraries with their own defaults (Optax's
    # learning rate has none).
    RuleInfo("lion", optax_compat.lion, (dict(lr=3e-3, b1=0.8, b2=0.95, weight_decay=0.05),), (
        _ox(lambda o, jnp: o.lion(1e-4), lr=1e-4),
        _ox(lambda o, jnp: o.lion(3e-3, b1=0.8, b2=0.95, weight_decay=0.05),
            lr=3e-3, b1=0.8, b2=0.95, weight_decay=0.05),
        _ox(lambda o, jnp: o.lion(2e-3, weight_decay=0.0), lr=2e-3, weight_decay=0.0),
    )),
    RuleInfo("adabelief", optax_compat.adabelief, (dict(lr=1e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
                                                   dict(lr=1e-2, b1=0.7, eps=1e-8, nesterov=True)), (
        _ox(lambda o, jnp: o.adabelief(1e-3), lr=1e-3),
        _ox(lambda o, jnp: o.adabelief(2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
            lr=2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-6),
        _ox(lambda o, jnp: o.adabelief(1e-2, nesterov=True), lr=1e-2, nesterov=True),
        _ox(lambda o, jnp: o.adabelief(5e-3, b1=0.7, b2=0.9, eps=1e-6, eps_root=0.0, nesterov=True),
            lr=5e-3, b1=0.7, b2=0.9, eps=1e-6, eps_root=0.0, nesterov=True),
    )),
    RuleInfo("yogi", optax_compat.yogi,
             (dict(lr=3e-2, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8, initial_accumulator_value=0.1),), (
        _ox(lambda o, jnp: o.yogi(1e-2), lr=1e-2),
        _ox(lambda o, jnp: o.yogi(3e-2, b1=0.8, b2=0.99, eps=1e-6), lr=3e-2, b1=0.8, b2=0.99, eps=1e-6),
        _ox(lambda o, jnp: o.chain(o.scale_by_yogi(eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.5),
                                   o.scale_by_learning_rate(1e-2)),
            lr=1e-2, eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.5),
    )),
    # The research catalog: pytorch-optimizer 4.1.0 / schedulefree 1.4.1 with foreach=False, Optax.
    RuleInfo("adan", research.adan, (dict(lr=3e-3, weight_decay=0.05),), (
        _po(lambda po, ps: po.Adan(ps, weight_decouple=False, foreach=False)),
        _po(lambda po, ps: po.Adan(ps, lr=3e-3, betas=(0.9, 0.8, 0.95), weight_decay=0.05, weight_decouple=False,
                                   foreach=False), lr=3e-3, betas=(0.9, 0.8, 0.95), weight_decay=0.05),
    )),
    RuleInfo("adopt", research.adopt, (dict(lr=2e-3, weight_decay=0.1),), (
        _po(lambda po, ps: po.ADOPT(ps, lr=1e-2, foreach=False), lr=1e-2),
        _po(lambda po, ps: po.ADOPT(ps, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1, foreach=False),
            lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
    )),
    RuleInfo("laprop", research.laprop, (dict(lr=1e-3, weight_decay=0.1),), (
        PeerCase("pytorch-optimizer", dict(lr=1e-2, weight_decay=0.1),
                 lambda lib, ps: lib.po.LaProp(ps, lr=1e-2, weight_decay=0.1, foreach=False),
                 note="foreach=False: pytorch-optimizer's foreach path rounds the step size to float32"),
    )),
    RuleInfo("adabound", research.adabound, (dict(lr=1e-2, final_lr=0.05, weight_decay=0.1),), (
        _po(lambda po, ps: po.AdaBound(ps, lr=1e-2, weight_decay=0.05, foreach=False), lr=1e-2, weight_decay=0.05),
    )),
    RuleInfo("amsbound", research.amsbound, (), (
        _po(lambda po, ps: po.AdaBound(ps, lr=1e-2, ams_bound=True, foreach=False), lr=1e-2),
    )),
    RuleInfo("adamod", research.adamod, (), (
        _po(lambda po, ps: po.AdaMod(ps, lr=1e-2, weight_decay=0.05, foreach=False), lr=1e-2, weight_decay=0.05),
    )),
    RuleInfo("qhadam", research.qhadam, (dict(betas=(0.9, 0.99), nus=(0.5, 0.8)),), (
        PeerCase("pytorch-optimizer", dict(lr=1e-2),
                 lambda lib, ps: _qhadam_f64(lib.torch, lib.po.QHAdam(ps, lr=1e-2, betas=(0.995, 0.999),
                                                                      nus=(0.7, 1.0), foreach=False)),
                 note="symopt's defaults are the paper's betas/nus (pytorch-optimizer's are Adam's); "
                      "its float32 weights made float64"),
    )),
    RuleInfo("qhm", research.qhm, (), (
        _po(lambda po, ps: po.QHM(ps, lr=1e-2, momentum=0.9, nu=0.7, weight_decay=0.01, foreach=False),
            lr=1e-2, momentum=0.9, weight_decay=0.01),
    )),
    RuleInfo("sgd_schedulefree", research.sgd_schedulefree, (dict(lr=0.1, weight_decay=0.1, momentum=0.5),), (
        _sf(lambda sf, ps: sf.SGDScheduleFree(ps, lr=0.05, foreach=False), lr=0.05),
        _sf(lambda sf, ps: sf.SGDScheduleFree(ps, lr=0.05, momentum=0.5, weight_decay=0.1, foreach=False),
            lr=0.05, momentum=0.5, weight_decay=0.1),
    )),
    RuleInfo("adamw_schedulefree", research.adamw_schedulefree, (dict(lr=1e-2, weight_decay=0.1),), (
        _sf(lambda sf, ps: sf.AdamWScheduleFree(ps, lr=1e-2, weight_decay=0.1, foreach=False),
            lr=1e-2, weight_decay=0.1),
    )),
    RuleInfo("mars_adamw", research.mars_adamw, (dict(lr=1e-2, weight_decay=0.1, gamma=0.1),), (
        PeerCase("pytorch-optimizer", dict(lr=1e-2, weight_decay=0.05),
                 lambda lib, ps: lib.po.MARS(ps, lr=1e-2, weight_decay=0.05, optimize_1d=True, foreach=False),
                 note="optimize_1d=True: every tensor takes MARS's path (pytorch-optimizer sends 1-D tensors to "
                      "AdamW)"),
    )),
    # No library defines cautious AdamW: the NumPy transcription is its only reference.
    RuleInfo("cautious_adamw", research.cautious_adamw, known_issues=(CAUTIOUS_UNDERFLOW,)),
    RuleInfo("cautious_lion", research.cautious_lion, (), (
        _po(lambda po, ps: po.Lion(ps, lr=1e-3, weight_decay=0.1, cautious=True, foreach=False),
            lr=1e-3, weight_decay=0.1),
    ), known_issues=(CAUTIOUS_UNDERFLOW,)),
    RuleInfo("lamb", research.lamb, (dict(lr=1e-2, weight_decay=0.1, eps_root=1e-8),), (
        _ox(lambda ox, jnp: ox.lamb(1e-2), lr=1e-2),
        _ox(lambda ox, jnp: ox.lamb(2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, weight_decay=0.1),
            lr=2e-2, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, weight_decay=0.1),
    )),
    RuleInfo("lars", research.lars,
             (dict(lr=0.5, weight_decay=0.1, trust_coefficient=0.02, eps=1e-8, nesterov=True),), (
        _ox(lambda ox, jnp: ox.lars(0.5), lr=0.5, note="Optax keeps the momentum of −lr·u (params compared)"),
        _ox(lambda ox, jnp: ox.lars(0.5, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.8,
                                    nesterov=True),
            lr=0.5, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.8, nesterov=True),
    )),
    RuleInfo("signsgd", research.signsgd, (), (
        _po(lambda po, ps: po.SignSGD(ps, lr=1e-2, momentum=0.0, foreach=False), lr=1e-2),
        _ox(lambda ox, jnp: ox.sign_sgd(1e-2), lr=1e-2),
    )),
    RuleInfo("signum", research.signum, (), (
        _po(lambda po, ps: po.SignSGD(ps, lr=1e-2, momentum=0.9, foreach=False), lr=1e-2),
        _ox(lambda ox, jnp: ox.signum(1e-2, beta=0.8), lr=1e-2, momentum=0.8),
    )),
    RuleInfo("adafactor_unfactored", research.adafactor, (dict(lr=0.05, weight_decay_rate=0.01, clipping_threshold=0.5),), (
        _ox(lambda ox, jnp: _adafactor_f64(ox, jnp, 0.05), lr=0.05,
            note="decay 1 − t^-0.8 in float64 (Optax computes it in float32)"),
        _ox(lambda ox, jnp: _adafactor_f64(ox, jnp, 0.05, clipping_threshold=0.5, weight_decay_rate=0.01),
            lr=0.05, clipping_threshold=0.5, weight_decay_rate=0.01, note="float64 decay"),
    )),
    RuleInfo("adabelief_rectified", research.adabelief_rectified,
             (dict(degenerated_to_sgd=False, weight_decay=0.1, n_sma_threshold=4.0),), (
        _po(lambda po, ps: po.AdaBelief(ps, lr=1e-2, weight_decay=0.05, rectify=True, foreach=False),
            lr=1e-2, weight_decay=0.05),
        _po(lambda po, ps: po.AdaBelief(ps, lr=1e-2, rectify=True, degenerated_to_sgd=False, foreach=False),
            lr=1e-2, degenerated_to_sgd=False),
    )),
    RuleInfo("tiger", research.tiger, (), (
        _po(lambda po, ps: po.Tiger(ps, lr=1e-2, foreach=False), lr=1e-2),
    )),
    RuleInfo("madgrad", research.madgrad, (), (
        _po(lambda po, ps: po.MADGRAD(ps, lr=1e-2, weight_decay=0.01, foreach=False), lr=1e-2, weight_decay=0.01),
    )),
    RuleInfo("diffgrad", research.diffgrad, (), (
        _po(lambda po, ps: po.DiffGrad(ps, lr=1e-2, weight_decay=0.05, foreach=False), lr=1e-2, weight_decay=0.05),
    )),
    RuleInfo("ademamix", research.ademamix, (dict(t_alpha_beta3=10.0, weight_decay=0.1),), (
        _po(lambda po, ps: po.AdEMAMix(ps, lr=1e-2, foreach=False), lr=1e-2),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, t_alpha_beta3=30.0, weight_decay=0.05),
                 lambda lib, ps: lib.po.AdEMAMix(ps, lr=1e-2, t_alpha_beta3=30, weight_decay=0.05, foreach=False),
                 note="t_alpha_beta3: α and β3 warm-ups as per-step scalars"),
        _ox(lambda ox, jnp: ox.contrib.ademamix(1e-2), lr=1e-2),
    )),
    RuleInfo("stable_adamw", research.stable_adamw, (dict(lr=1e-2, weight_decay=0.1),), (
        _po(lambda po, ps: po.StableAdamW(ps, lr=1e-2, foreach=False), lr=1e-2),
    )),
    RuleInfo("fromage", research.fromage, (), (
        _ox(lambda ox, jnp: ox.fromage(1e-2), lr=1e-2),
    )),
    # Matrix rules read >=2-D params as matrices; their parity, checkpoint and bad-input tests
    # are tests/test_matrix.py (the elementwise tables below step 1-D params).
    RuleInfo("muon", None, matrix=True),
    # torch.optim.Adafactor: factored for >=2-D params (row/col means of g²), full for the others; the
    # torch table and the reference steps run it on a (5, 3) and a (4,) tensor; tests/test_adafactor.py
    # runs stacks of matrices, the torch adapter and checkpoints.  float32: the per-tensor norms and the
    # row/column means are float64 sums here, float32 reductions in torch (measured ~1e-6).
    RuleInfo("adafactor", torch_compat.adafactor,
             (dict(lr=0.05, weight_decay=0.1, maximize=True, eps=(1e-6, 1e-2), d=1.5, beta2_decay=-0.6),),
             (_torch_optim_case("Adafactor", lr=0.05),
              _torch_optim_case("Adafactor", lr=0.02, weight_decay=0.1, maximize=True, eps=(1e-6, 1e-2), d=1.5,
                                beta2_decay=-0.6),
              _torch_optim_case("Adafactor", group0=dict(lr=0.1, d=2.0), change=dict(lr=0.01, weight_decay=0.05))),
             tolerance={"peer": {F64: 1e-9, F32: 1e-5}}, torch_optim="Adafactor", matrix=True),
    # optax.adafactor (factored=True): the (3, 4) peer tensor is factored with min_dim_size_to_factor=3,
    # the (5,) one keeps a full v (tests/test_research_parity.py); tests/test_adafactor.py runs more shapes.
    RuleInfo("adafactor_optax", None, (), (
        _ox(lambda ox, jnp: _adafactor_optax_f64(ox, jnp, 0.05, 3), lr=0.05, min_dim_size_to_factor=3,
            note="decay 1 − t^-0.8 in float64 (Optax computes it in float32)"),
        _ox(lambda ox, jnp: _adafactor_optax_f64(ox, jnp, 0.05, 3, clipping_threshold=None, decay_rate=0.6, eps=1e-6,
                                                 multiply_by_parameter_scale=False, weight_decay_rate=0.01),
            lr=0.05, min_dim_size_to_factor=3, clipping_threshold=None, decay_rate=0.6, eps=1e-6,
            multiply_by_parameter_scale=False, weight_decay_rate=0.01, note="float64 decay"),
        _ox(lambda ox, jnp: _adafactor_optax_f64(ox, jnp, 0.05, 3, momentum=0.9, weight_decay_rate=0.01),
            lr=0.05, min_dim_size_to_factor=3, momentum=0.9, weight_decay_rate=0.01,
            note="float64 decay; ema(momentum) kept in float64 (Optax: dtype_momentum)"),
    ), tolerance={"peer": {F64: 1e-9}, "peer displacement": {F64: 1e-9}}, matrix=True),
    # Kronecker-factored rules: run on 1-D to 4-D params by tests/test_shampoo_soap.py (float64: the
    # eigendecomposition against pytorch-optimizer's SVD, 1e-9 of the trajectory)
    RuleInfo("shampoo", None, peer_cases=(
        PeerCase("pytorch-optimizer", {}, lambda lib, ps: lib.po.Shampoo(ps)),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, momentum=0.9, weight_decay=0.1),
                 lambda lib, ps: lib.po.Shampoo(ps, lr=1e-2, momentum=0.9, weight_decay=0.1)),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, momentum=0.5, weight_decay=0.1, weight_decouple=True,
                                           preconditioning_compute_steps=3, maximize=True),
                 lambda lib, ps: lib.po.Shampoo(ps, lr=1e-2, momentum=0.5, weight_decay=0.1, weight_decouple=True,
                                                preconditioning_compute_steps=3, maximize=True)),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, weight_decay=0.1, weight_decouple=True, fixed_decay=True),
                 lambda lib, ps: lib.po.Shampoo(ps, lr=1e-2, weight_decay=0.1, weight_decouple=True,
                                                fixed_decay=True)),
    ), tolerance={"verify": {F32: 1e-4, F64: 1e-9}}, matrix=True),
    # SOAP: run by tests/test_shampoo_soap.py on params whose statistics are full rank (square 2-D,
    # 1-D unrotated, 3-D and 4-D with no axis longer than the others' product).  Equal to rounding until the
    # first power-iteration refresh of the eigenbases; from then on pytorch-optimizer's QR runs in
    # float32 (its Q is orthonormal to ~6e-8), so the float64 trajectories part by ~1e-7 of the
    # params' scale (max-norm): "peer" 1e-6, and 1e-12 before that refresh ("peer exact").
    RuleInfo("soap", None, peer_cases=(
        PeerCase("pytorch-optimizer", {}, lambda lib, ps: lib.po.SOAP(ps)),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, precondition_frequency=3,
                                           maximize=True, shampoo_beta=0.8, correct_bias=False),
                 lambda lib, ps: lib.po.SOAP(ps, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1,
                                             precondition_frequency=3, maximize=True, shampoo_beta=0.8,
                                             correct_bias=False)),
        PeerCase("pytorch-optimizer", dict(precondition_frequency=2, max_precondition_dim=4),
                 lambda lib, ps: lib.po.SOAP(ps, precondition_frequency=2, max_precondition_dim=4)),
        PeerCase("pytorch-optimizer", dict(lr=1e-2, normalize_gradient=True),
                 lambda lib, ps: lib.po.SOAP(ps, lr=1e-2, normalize_gradient=True)),
    ), tolerance={"verify": {F32: 1e-4, F64: 1e-9}, "peer": {F64: 1e-6}, "peer exact": {F64: 1e-12}},
        matrix=True),
]


def _complete(info: RuleInfo) -> RuleInfo:
    """The record with its group's tolerances and the issues every rule has."""
    group = symopt.family(info.name).group
    return replace(info, tolerance={**_COMMON, **_GROUP_TOLERANCE[group], **(info.tolerance or {})},
                   known_issues=_EVERY_RULE + tuple(info.known_issues))


#: {rule name: RuleInfo}, in ``symopt.rules()`` order where the rule is built in.
RULE_DB = {info.name: _complete(info) for info in _RECORDS}
#: The elementwise rules: the tables that step 1-D params run over these (matrix rules: test_matrix.py).
ELEMENTWISE = [name for name, info in RULE_DB.items() if not info.matrix]
#: The factored rules (row/column statistics: tests/test_adafactor.py; their torch and JAX modules:
#: tests/test_backends.py).
FACTORED = [name for name, info in RULE_DB.items()
            if any(is_factored_rule(rule) for _, rule in symopt.family(name).variants)]
#: The rules that keep Kronecker-factored matrix states (Shampoo, SOAP: tests/test_shampoo_soap.py; their
#: torch and JAX modules: tests/test_backends.py).
PRECONDITIONED = [name for name, info in RULE_DB.items()
                  if any(rhs.has(Preconditioned) for _, rule in symopt.family(name).variants for _, rhs in rule.updates)]


def peer_cases(*libraries, group=None):
    """(rule info, case index within the rule, case) of every peer case run against one of
    ``libraries``, for the rules of ``group`` (all groups if None)."""
    return [(info, k, case) for info in RULE_DB.values() if group in (None, info.group)
            for k, case in enumerate(info.peer_cases) if case.library in libraries]


def case_id(name, case: PeerCase) -> str:
    """``rule-key=value-...`` (symopt's keywords) for test ids and seeds."""
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in case.kwargs.items())}"


#: The problem every Optax and research peer trajectory runs: a noisy quadratic over two tensors.
PEER_STEPS = 100
PEER_SHAPES = [(3, 4), (5,)]


def peer_problem(seed):
    """``(theta0, target, curv, noise)``: |θ₀| in [2, 3], targets N(0, 1), curvatures in [0.1, 2],
    gradient noise N(0, 0.5²) per step (the largest total move, yogi's ~3e-2 × 100 steps, is ~1.5)."""
    rng = np.random.default_rng(seed)
    theta0 = [rng.uniform(2.0, 3.0, s) * rng.choice([-1.0, 1.0], s) for s in PEER_SHAPES]
    target = [rng.normal(0.0, 1.0, s) for s in PEER_SHAPES]
    curv = [rng.uniform(0.1, 2.0, s) for s in PEER_SHAPES]
    noise = [[rng.normal(0.0, 0.5, s) for s in PEER_SHAPES] for _ in range(PEER_STEPS)]
    return theta0, target, curv, noise


def peer_grads(params, target, curv, noise_t):
    """g = h ⊙ (θ − c) + n: the gradient of the quadratic plus this step's noise."""
    return [h * (p - c) + n for p, c, h, n in zip(params, target, curv, noise_t)]

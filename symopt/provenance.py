"""Which independent references verify each built-in rule (read by ``symopt list``; no SymPy).

Every built-in rule is checked three ways in ``make test``: ``symopt verify`` (the generated
kernel against a 50-digit mpmath evaluation of the rule), a hand-written NumPy reference
step (``tests/references/``, float64 and float32), and -- listed here -- trajectories of
the peer libraries that define it, where they install from the package registry.

:data:`RULE_PEERS` is the one place that names a rule's peers: the tests' rule table
(``tests/rule_db.py``) holds the peer cases, and ``tests/test_rule_db.py`` asserts that the
parity tests run every peer named here for each rule, and no other.
"""

from __future__ import annotations

#: The checks every built-in rule has.
ALWAYS = ("mpmath (symopt verify)", "NumPy step")

#: Peers: {key: (distribution name or None, version or description)}.  The parity tests run
#: the versions stated here (``tests/test_rule_db.py`` compares them with the installed ones).
PEERS = {
    "notes": (None, "the notes' formulas"),
    "torch": ("torch", "2.13"),
    "optax": ("optax", "0.2.8"),
    "pytorch-optimizer": ("pytorch_optimizer", "4.1.0"),
    "schedulefree": ("schedulefree", "1.4.1"),
}

_NOTES, _TORCH, _OPTAX, _PO, _SF = ("notes",), ("torch",), ("optax",), ("pytorch-optimizer",), ("schedulefree",)

#: {rule: keys of :data:`PEERS` whose trajectories the parity tests compare the rule with}.
RULE_PEERS = {
    "notes.gd": _NOTES, "notes.sgd": _NOTES, "notes.adagrad": _NOTES, "notes.rmsprop": _NOTES,
    "notes.adam": _NOTES, "notes.adam_warmup": _NOTES,
    "sgd": _TORCH, "adam": _TORCH, "adamw": _TORCH, "adagrad": _TORCH, "rmsprop": _TORCH,
    "adamax": _TORCH, "nadam": _TORCH, "radam": _TORCH, "adadelta": _TORCH,
    "lion": _OPTAX, "adabelief": _OPTAX, "yogi": _OPTAX,
    "adan": _PO, "adopt": _PO, "laprop": _PO, "adabound": _PO, "amsbound": _PO, "adamod": _PO,
    "qhadam": _PO, "qhm": _PO, "sgd_schedulefree": _SF, "adamw_schedulefree": _SF,
    "mars_adamw": _PO, "cautious_adamw": (), "cautious_lion": _PO, "lamb": _OPTAX, "lars": _OPTAX,
    "signsgd": _PO + _OPTAX, "signum": _PO + _OPTAX, "adafactor_unfactored": _OPTAX, "adabelief_rectified": _PO,
    "tiger": _PO, "madgrad": _PO, "diffgrad": _PO, "ademamix": _PO + _OPTAX, "stable_adamw": _PO,
    "fromage": _OPTAX,
    # matrix rules: compared with torch.optim.Muon (bfloat16) in tests/test_matrix.py, not a peer table
    "muon": (),
    "adafactor": _TORCH,
    "adafactor_optax": _OPTAX,
    # Kronecker-factored rules: pytorch-optimizer's trajectories on 2-D params (tests/test_shampoo_soap.py)
    "shampoo": _PO, "soap": _PO,
}


#: The largest relative error accepted against a peer's trajectory, per rule group and dtype (params
#: elementwise, state max-norm; ``tests/rule_db.py`` reads it).  Notes: float32 is float32 rounding
#: over 30 steps from the float64 transcription's values; Optax and research peers run float64 only.
PEER_TOLERANCE = {
    "notes": {"float64": 1e-10, "float32": 2e-6},
    "torch": {"float64": 1e-9, "float32": 1e-4},
    "optax": {"float64": 1e-9},
    "research": {"float64": 1e-9},
    "matrix": {"float64": 1e-9, "float32": 5e-3},
}


def peer_label(key: str) -> str:
    """How ``symopt list`` names a peer: ``"torch 2.13"``, ``"the notes' formulas"``."""
    dist, version = PEERS[key]
    return version if dist is None else f"{key} {version}"


def verified_by(name: str) -> tuple:
    """Peer trajectories (if any), then the checks every built-in rule has."""
    return tuple(peer_label(key) for key in RULE_PEERS.get(name, ())) + ALWAYS

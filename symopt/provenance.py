"""Which independent references verify each built-in rule (read by ``symopt list``; no SymPy).

Every built-in rule is checked three ways in ``make test``: ``symopt verify`` (the generated
kernel against a 50-digit mpmath evaluation of the rule), a hand-written NumPy reference
step (``tests/references/<catalog module>.py``, float64 and float32), and -- listed here --
trajectories of the library that defines it where that library installs from the package
registry.  ``tests/test_research_parity.py`` asserts that this table names the library of
every trajectory test it runs.
"""

from __future__ import annotations

ALWAYS = ("mpmath (symopt verify)", "NumPy step")

#: Library trajectories per catalog group (tests/test_torch_parity.py, tests/test_optax_parity.py).
BY_GROUP = {
    "notes": ("the notes' formulas (tests/test_notes.py)",),
    "torch": ("torch 2.13",),
    "optax": ("optax 0.2.8",),
}

_PO, _SF, _OX = "pytorch-optimizer 4.1.0", "schedulefree 1.4.1", "optax 0.2.8"

#: Library trajectories per research rule (tests/test_research_parity.py, float64, 100 steps).
BY_RULE = {
    "adan": (_PO,), "adopt": (_PO,), "laprop": (_PO,), "adabound": (_PO,), "amsbound": (_PO,), "adamod": (_PO,),
    "qhadam": (_PO,), "qhm": (_PO,), "sgd_schedulefree": (_SF,), "adamw_schedulefree": (_SF,),
    "mars_adamw": (_PO,), "cautious_adamw": (), "cautious_lion": (_PO,), "lamb": (_OX,), "lars": (_OX,),
    "signsgd": (_PO, _OX), "signum": (_PO, _OX), "adafactor": (_OX,), "adabelief_rectified": (_PO,),
    "tiger": (_PO,), "madgrad": (_PO,), "diffgrad": (_PO,), "ademamix": (_PO, _OX), "stable_adamw": (_PO,),
    "fromage": (_OX,),
}


def verified_by(name: str, group: str) -> tuple:
    """Library trajectories (if any), then the checks every rule has."""
    return BY_RULE.get(name, BY_GROUP.get(group, ())) + ALWAYS

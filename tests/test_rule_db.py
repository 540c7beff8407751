"""The rule table (``tests/rule_db.py``) is complete, and ``symopt list``'s provenance is its own.

Every built-in rule has exactly one record, with a NumPy reference step and every test
kind's tolerance in both dtypes where the kind compares them; the peer libraries named in
:data:`symopt.provenance.RULE_PEERS` are exactly those of the record's peer cases, each
case is run by exactly one parity test module, and the installed peer libraries are the
versions that ``symopt list`` names.
"""
import importlib.metadata

import numpy as np
import pytest
from conftest import rel_err
from rule_db import RULE_DB

import symopt
from symopt import provenance

#: The parity test modules and their lists of the peer cases they run: (rule info, case index, case).
PARITY_MODULES = {"test_torch_parity": "CASES", "test_optax_parity": "CASES", "test_notes": "CASES",
                  "test_research_parity": ("TORCH_CASES", "OPTAX_CASES"), "test_shampoo_soap": "CASES"}


def test_every_builtin_rule_has_one_record():
    assert list(RULE_DB) == symopt.rules(), "tests/rule_db.py must hold one record per built-in rule, in order"
    missing = [name for name, info in RULE_DB.items() if info.reference is None and not info.matrix]
    assert not missing, f"built-in rules without a NumPy reference step in tests/references: {missing}"


def test_every_record_states_its_tolerances():
    for name, info in RULE_DB.items():
        for kind, dtypes in {"reference": (np.float32, np.float64), "reference displacement": (np.float64,),
                             "verify": (np.float32, np.float64)}.items():
            assert all(0 < info.tolerance[kind][d] < 1e-3 for d in dtypes), (name, kind)
        for case in info.peer_cases:
            assert all(d in info.tolerance["peer"] for d in case.dtypes), (name, case.kwargs)


def test_provenance_names_exactly_the_peers_the_parity_tests_run():
    assert set(provenance.RULE_PEERS) == set(RULE_DB)
    for name, info in RULE_DB.items():
        assert set(provenance.RULE_PEERS[name]) <= set(provenance.PEERS), name
        assert {case.library for case in info.peer_cases} == set(info.peers), name
    # each case of the table is run by one parity module, and the modules run nothing else
    run = []
    for module, names in PARITY_MODULES.items():
        mod = pytest.importorskip(module)
        for attr in (names,) if isinstance(names, str) else names:
            run += [(info.name, k) for info, k, _ in getattr(mod, attr)]
    table = [(name, k) for name, info in RULE_DB.items() for k in range(len(info.peer_cases))]
    assert sorted(run) == sorted(table)


@pytest.mark.parametrize("key", [k for k, (dist, _) in provenance.PEERS.items() if dist is not None])
def test_installed_peers_are_the_versions_symopt_list_names(key):
    dist, version = provenance.PEERS[key]
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"could not import {dist}: not installed")
    assert installed == version or installed.startswith((version + ".", version + "+")), \
        (key, installed, version)


def test_symopt_list_prints_the_table_provenance(capsys):
    from symopt.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("adam", "signum", "notes.adam", "cautious_adamw"):
        line = out.split(f"  {name} ", 1)[1].split("verified by: ", 1)[1].splitlines()[0]
        assert line == ", ".join(provenance.verified_by(name)), (name, line)
    assert "pytorch-optimizer 4.1.0, optax 0.2.8, mpmath (symopt verify), NumPy step" in out


@pytest.mark.parametrize("a,b,floor,expected", [
    ([1.0, 2.0], [1.0, 2.0], 0.0, 0.0),
    ([1.1, 2.0], [1.0, 2.0], 0.0, 0.1),                 # elementwise: 0.1 / 1
    ([1.1, 2.0], [1.0, 2.0], 1.0, 0.05),                # max-norm: 0.1 / 2
    ([1e-3, 10.0], [2e-3, 10.0], 0.0, 0.5),             # a small entry counts relative to itself ...
    ([1e-3, 10.0], [2e-3, 10.0], 1e-2, 1e-3 / 0.1),     # ... or to floor · max|b|
    ([0.0, 0.0], [0.0, 0.0], 0.0, 0.0),                 # 0 / 0 counts as 0
    ([], [], 0.0, 0.0),
])
def test_rel_err_is_its_stated_formula(a, b, floor, expected):
    assert rel_err(a, b, floor=floor) == pytest.approx(expected, rel=1e-12)
    assert rel_err([1e-300], [0.0]) > 1e7          # a nonzero value against an exact zero fails any tolerance
    assert rel_err(np.float32(1.5), 1.5) == 0.0


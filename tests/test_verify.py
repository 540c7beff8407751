"""`symopt verify`: every variant of every rule of ``tests/rule_db.py``, both dtypes, against
50-digit mpmath, within the table's "verify" tolerance (which ``symopt verify`` must apply)."""
import numpy as np
import pytest
from rule_db import ELEMENTWISE, RULE_DB

from symopt.rulebook.catalog import family
from symopt.verify.check import format_table, verify_variant

CASES = [(name, rule.name) for name in ELEMENTWISE for _, rule in family(name).variants]  # matrix rules: test_matrix.py


@pytest.mark.parametrize("name,variant", CASES)
def test_kernel_matches_mpmath(name, variant):
    fam = family(name)
    rule = next(r for _, r in fam.variants if r.name == variant)
    results = [verify_variant(fam, rule, dtype, samples=30, steps=2, seed=7) for dtype in ("float32", "float64")]
    for r in results:
        assert r.tolerance == RULE_DB[name].tolerance["verify"][np.dtype(r.dtype).type]
        assert r.max_error <= r.tolerance, format_table(results)


def test_cli_verify_exit_code(capsys):
    from symopt.cli import main

    assert main(["verify", "notes.adam", "--samples", "10", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "notes.adam" in out and "2 passed, 0 failed" in out

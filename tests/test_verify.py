"""`symopt verify`: every built-in rule variant, both dtypes, against 50-digit mpmath."""
import pytest

from symopt.rulebook.catalog import builtin_families
from symopt.verify.check import TOLERANCE, format_table, verify_variant

CASES = [(name, rule.name) for name, fam in builtin_families().items() for _, rule in fam.variants]


@pytest.mark.parametrize("name,variant", CASES)
def test_kernel_matches_mpmath(name, variant):
    fam = builtin_families()[name]
    rule = next(r for _, r in fam.variants if r.name == variant)
    results = [verify_variant(fam, rule, dtype, samples=30, steps=2, seed=7) for dtype in ("float32", "float64")]
    for r in results:
        assert r.tolerance == TOLERANCE[r.dtype]
        assert r.max_error <= r.tolerance, format_table(results)


def test_cli_verify_exit_code(capsys):
    from symopt.cli import main

    assert main(["verify", "notes.adam", "--samples", "10", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "notes.adam" in out and "2 passed, 0 failed" in out

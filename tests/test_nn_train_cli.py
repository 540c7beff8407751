"""`symopt train digits`: output format, plots, user rules and refusals (few epochs, small nets)."""
import re

import pytest

from symopt.cli import main


def _run(capsys, *argv):
    code = main(["train", "digits", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_prints_the_final_accuracy_line(capsys):
    code, out, _ = _run(capsys, "--optimizer", "notes.adam_warmup@0.003", "--epochs", "3", "--hidden", "32")
    assert code == 0
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"test accuracy (0\.\d{4}|1\.0000)", last)
    assert m, out
    assert float(m.group(1)) >= 0.9


def test_compare_writes_one_png(tmp_path, capsys):
    png = tmp_path / "curves.png"
    code, out, _ = _run(capsys, "--compare", "notes.sgd@0.1,notes.adam_warmup", "--epochs", "2", "--hidden", "16",
                        "--plot", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert out.count("test accuracy") == 2 and f"wrote {png}" in out


def test_full_batch_and_user_rule_file(tmp_path, capsys):
    rules = tmp_path / "my_rules.py"
    rules.write_text(
        "import sympy as sp, symopt\n"
        "p, g, m = sp.symbols('p g m'); lr, beta = sp.symbols('lr beta')\n"
        "heavy_ball = symopt.Rule('heavy_ball', param=p, grad=g, state={m: 0}, hyper={lr: 0.05, beta: 0.9},\n"
        "                         updates=[(m, beta * m + g), (p, p - lr * m)])\n")
    code, out, _ = _run(capsys, "--optimizer", f"{rules}:heavy_ball", "--epochs", "2", "--hidden", "16")
    assert code == 0 and "heavy_ball: lr 0.05, batch 32" in out
    code, out, _ = _run(capsys, "--optimizer", "notes.gd@0.5", "--epochs", "2", "--hidden", "16")
    assert code == 0 and "full batch (GD), 2 epochs, 2 steps" in out


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "no_such_rule"], "unknown optimizer 'no_such_rule'"),
    (["--optimizer", "adam@fast"], "learning rate after '@' must be a number"),
    (["--batch-size", "-3"], "--batch-size must be a positive integer or 'all'"),
    (["--hidden", "64,x"], "--hidden must be comma-separated widths"),
    (["--optimizer", "missing.py:rule"], "rule file 'missing.py' does not exist"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    code, _, err = _run(capsys, "--epochs", "1", *argv)
    assert code == 2 and message in err

"""``symopt report``: each page shows every stage, read back from the stage itself, and escapes user text.

* A rule page holds, in order, the symbol table, the update equations of every variant, the
  derivation with the KernelPlan's operation counts, the generated kernel with the checked-in
  module's header, ``symopt verify``'s table, the peers with their tolerances, the trajectory
  and the conventions; schedule, transform, loss, activation and gradient pages render.
* The highlighter gives back generated modules exactly (tags removed, entities read).
* The conventions mark the term that differs (ε inside vs outside the root, bias correction).
* The hostile-names corpus in every text role of a rule and a family comes out as text:
  no element, attribute or script of its own (parsed with ``html.parser``).
* The command line writes one file per call and refuses unknown names, writing nothing.

The pages' drawing in a real browser is ``tests/test_report_browser.py``.
"""
import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import symopt.generated
import sympy as sp

import symopt
from symopt.cli import main
from symopt.codegen.plan import make_plan
from symopt.reporting import pages, report
from symopt.reporting.highlight import highlight
from symopt.rulebook.rule import Family
from symopt.runtime.kernels import load_builtin


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Elements:
    p = Elements()
    p.feed(page)
    p.close()
    return p


def _headings(page: str) -> list:
    return [html.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<h2[^>]*>(.*?)</h2>", page, re.DOTALL)]


@pytest.fixture(scope="module")
def adam_page():
    return report("adam", samples=5)


def test_rule_page_shows_every_stage_in_order(adam_page):
    heads = _headings(adam_page)
    assert heads == ["Update equations", "Derivation", "Generated module", "Verification", "Trajectory", "Conventions"]
    fam = symopt.family("adam")
    for _, rule in fam.variants:  # the plan's own counts, before and after hoisting and CSE
        plan = make_plan(rule)
        assert f"<b>{plan.substituted_op_count}</b> substituted → <b>{plan.op_count}</b>" in adam_page
        assert f"{len(plan.scalars)} (computed once per step" in adam_page
    source = Path(load_builtin("adam").__file__).read_text(encoding="utf-8")
    digest = re.search(r"# input hash:\s+([0-9a-f]{64})", source).group(1)
    assert digest in adam_page and "optimizer_module.py.jinja" in adam_page
    assert "adam_amsgrad_f64" in adam_page and "adam_scalars" in adam_page
    rows = re.findall(r"<tr><td>(adam(?:\.amsgrad)?)</td><td>(float32|float64)</td>", adam_page)
    assert sorted(rows) == sorted((r.name, d) for _, r in fam.variants for d in ("float32", "float64"))
    assert adam_page.count('class="ok">ok<') == 4
    assert "torch 2.13" in adam_page and "float64 1e-09, float32 1e-04" in adam_page
    assert adam_page.count("<svg") >= 1 and "notes.adam" in adam_page and 'class="diff"' in adam_page
    for row in pages.symbol_table(fam):  # every keyword, default and range of the family
        assert f"<code>{html.escape(row['keyword'])}</code>" in adam_page
        assert html.escape(row["range"]) in adam_page


def test_every_math_element_is_mathml_and_no_latex_source_is_left(adam_page):
    body = adam_page.split('<h2 id="module">')[0]
    assert body.count("<math") > 20
    assert "\\frac" not in body and "\\begin" not in body and "$$" not in body


@pytest.mark.parametrize("name", ["schedule.cosine", "schedule.warmup_stable_decay", "transform.nesterov",
                                  "transform.clip_global_norm", "loss.huber", "loss.softmax_cross_entropy",
                                  "activation.relu", "activation.softmax"])
def test_other_pages_render(name):
    page = report(name)
    assert page.startswith("<!DOCTYPE html>") and "<math" in page
    assert ("<svg" in page) == (not name.startswith("transform."))  # a transform page has no kernel of its own
    assert name.split(".", 1)[1] in page


def test_gradient_plan_and_repr_html():
    x = sp.symbols("x0:3")
    f = symopt.gradient(sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(2)]), x)
    page = f._repr_html_()
    assert page.startswith('<div class="symopt-report">') and "Reverse-mode plan" in page
    assert "html,body" not in page  # a fragment styles itself only, never the notebook around it
    assert f"{f.forward_ops} operations" in page and "2 shape(s)" in page
    plan = make_plan(symopt.rule("sgd"))
    assert "Kernel plan of sgd" in plan._repr_html_()
    assert "Update equations" in symopt.family("notes.sgd")._repr_html_()


def test_the_highlighter_gives_back_generated_modules_exactly():
    folder = Path(symopt.generated.__path__[0])
    for path in [folder / f for f in ("adam.py", "lamb.py", "nn_loss_huber.py", "nn_act_softmax.py", "__init__.py")]:
        source = path.read_text(encoding="utf-8")
        marked = str(highlight(source))
        assert html.unescape(re.sub(r"<[^>]+>", "", marked)) == source, path.name
    marked = str(highlight("@numba.njit\ndef f(x):\n    return x + 1.5  # c\n"))
    for cls, text in [("dec", "numba"), ("kw", "def"), ("fn", "f"), ("kw", "return"), ("num", "1.5"), ("com", "# c")]:
        assert f'<span class="{cls}">{text}</span>' in marked


def test_conventions_mark_the_term_that_differs():
    eps, v, alpha, m, theta = sp.symbols("epsilon v alpha m theta")
    b1, b2, t = sp.symbols("beta1 beta2 t")
    notes = theta - alpha * m / sp.sqrt(eps + v)
    torch = theta - alpha * m / ((1 - b1 ** t) * (eps + sp.sqrt(v) / sp.sqrt(1 - b2 ** t)))
    assert pages.differing(notes, torch) == [1 / sp.sqrt(eps + v)]
    assert set(pages.differing(torch, notes)) == {1 / (1 - b1 ** t), 1 / (eps + sp.sqrt(v) / sp.sqrt(1 - b2 ** t))}
    assert pages.differing(b1 * m + (1 - b1) * v, m + (1 - b1) * (v - m)) != []
    columns = pages.conventions(symopt.family("notes.adam"), ["adam"])
    assert [c["name"] for c in columns] == ["notes.adam", "adam"]
    # ε under the root in the notes, outside it in torch: both marked
    assert re.search(r'class="diff"><msqrt>', columns[0]["equations"])
    assert "weight_decay" in columns[1]["fixed"]


def test_hostile_names_are_text_in_every_role():
    from test_hostile import CORPUS, _chunks, _role_name, _text_role_rule

    allowed = {"html", "head", "meta", "title", "body", "div", "style", "nav", "h1", "h2", "h3", "p", "span", "ul",
               "li", "table", "thead", "tbody", "tr", "th", "td", "code", "b", "i", "pre", "details", "summary", "dl",
               "dt", "dd", "math", "mrow", "mi", "mo", "mn", "msub", "msup", "msubsup", "mfrac", "msqrt", "mroot",
               "mtext", "mtable", "mtr", "mtd", "mover", "munder", "mspace", "mstyle", "footer", "section", "a"}
    batch = CORPUS + CORPUS[:8]
    for k, chunk in enumerate(_chunks(batch, 8)):
        if len(chunk) < 2:
            continue
        rule, _ = _text_role_rule(chunk, chunk[1:] + chunk[:1], f" report {k}")
        page = symopt.report(rule, samples=0, plot=False)
        found = parse(page)
        assert {tag for tag, _ in found.tags} <= allowed, {tag for tag, _ in found.tags} - allowed
        assert all(not a.startswith("on") for _, attrs in found.tags for a in attrs)
        text = "".join(found.text)
        for entry in (rule.doc, rule.source, *rule.references):
            assert entry.strip() == "" or entry.replace("\r\n", "\n").replace("\r", "\n").strip() in \
                text.replace("\r\n", "\n").replace("\r", "\n")
    p, g, lr, flag = sp.symbols("p g lr flag")
    for text in CORPUS[:40:4]:
        rule = symopt.Rule("v", param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p - lr * g)])
        other = symopt.Rule("w", param=p, grad=g, hyper={lr: 0.1}, updates=[(p, p + lr * g)])
        fam = Family(_role_name(text), [(sp.Eq(flag, 1), other), (sp.true, rule)], options={flag: False},
                     doc=text, source=text, references=(text,), group=text)
        found = parse(symopt.report(fam, samples=0, plot=False))
        assert {tag for tag, _ in found.tags} <= allowed
        assert sum(tag == "h1" for tag, _ in found.tags) == 1


def test_command_line_writes_the_pages_and_refuses_unknown_names(tmp_path, capsys):
    out = tmp_path / "two.html"
    assert main(["report", "notes.sgd", "schedule.constant", "-o", str(out), "--samples", "0"]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count("<h1>") == 2 and page.count("<style>") == 1
    bad = tmp_path / "bad.html"
    assert main(["report", "no_such_rule", "-o", str(bad)]) == 2
    assert "unknown rule 'no_such_rule'" in capsys.readouterr().err and not bad.exists()
    assert main(["report", "--all", "adam"]) == 2
    assert main(["report", "notes.sgd", "-o", str(tmp_path / "missing" / "x.html"), "--samples", "0"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_the_site_index_lists_every_page_grouped_as_symopt_list(tmp_path, monkeypatch):
    from symopt import reporting

    monkeypatch.setattr(reporting, "page", lambda name, **kw: reporting.pages.schedule_page(
        symopt.schedule.constant(1e-3), plot=False))  # the index alone: every page is a stub here
    info = reporting.write_site(tmp_path, plot=False)
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    names = re.findall(r'<li data-name="[^"]*"><a href="([^"]+)\.html">', index)
    fams = {n: symopt.family(n).group for n in symopt.rules()}
    assert [n for n in names if n in fams] == symopt.rules()
    assert {n.split(".")[0] for n in names if n not in fams} == {"schedule", "transform", "loss", "activation"}
    for group in dict.fromkeys(fams.values()):
        assert f"<h2>rules: {group} " in index
    assert info["pages"] == len(names) + 1 and all((tmp_path / f"{n}.html").exists() for n in names)
    assert "<script>" in index and "search" in index

"""``symopt report``: every rule, schedule, transform, loss and activation as an HTML page.

A page shows a rule from its equations to the kernel that runs them, each part read back
from the stage that made it (:mod:`symopt.reporting.pages`): the math (``rulebook/``), the
plan (``codegen/plan.py``'s :class:`~symopt.codegen.plan.KernelPlan`), the generated module,
``symopt verify`` and the peers (``provenance.py``).  Pages are self-contained: math is
MathML from SymPy's presentation printer, which current browsers draw natively (no script,
no font, no network); plots are inline SVG; the stylesheet is inlined, with a dark mode.
Text lives in ``templates/report/*.html.jinja`` (autoescaped), logic here.

    symopt.report("adam")                     # the HTML of one page
    symopt report adam -o adam.html           # the same from the command line
    symopt report --all -o site/              # index (search by name) and one page per item
"""

from __future__ import annotations

import functools
import time
from importlib import resources
from pathlib import Path

from .._version import __version__
from ..files import atomic_write

__all__ = ["add_parser", "catalog", "html_view", "page", "report", "write_pages", "write_site"]

#: Parameters of the schedule pages (each schedule is shown at these values).
SCHEDULE_EXAMPLES = {
    "constant": {"value": 1e-3},
    "linear": {"init": 1e-3, "end": 1e-4, "steps": 500},
    "linear_warmup": {"peak": 1e-3, "warmup_steps": 100},
    "step": {"value": 1e-3, "step_size": 300, "gamma": 0.5},
    "exponential": {"value": 1e-3, "gamma": 0.995},
    "cosine": {"peak": 1e-3, "total_steps": 1000, "warmup_steps": 100},
    "one_cycle": {"max_lr": 1e-3, "total_steps": 1000},
    "inverse_sqrt": {"peak": 1e-3, "warmup_steps": 100},
    "warmup_stable_decay": {"peak": 1e-3, "warmup_steps": 100, "stable_steps": 500, "decay_steps": 400},
}

#: ``symopt verify``'s elements per magnitude band on a report page (the command's default is 200).
SAMPLES = 50

_KIND_LABELS = {"rule": "rules", "plan": "kernel plans", "schedule": "schedules", "transform": "transforms",
                "loss": "losses", "activation": "activations", "gradient": "gradients"}


@functools.cache
def environment():
    """The report's Jinja2 environment: HTML, so every value is escaped unless marked safe."""
    import jinja2

    folder = resources.files("symopt.templates").joinpath("report")
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(ctx: dict, *, standalone: bool = True, index: str | None = None, site: bool = False,
           embed_style: bool = True) -> str:
    """The HTML of one page context (:mod:`.pages`): a whole document, or a ``<div>`` for Jupyter."""
    template = {"loss": "nn", "activation": "nn"}.get(ctx["kind"], ctx["kind"])
    return environment().get_template(f"{template}.html.jinja").render(
        **ctx, standalone=standalone, index=index, site=site, embed_style=embed_style, version=__version__,
        kind_label=_KIND_LABELS[ctx["kind"]])


# ----------------------------------------------------------------------------- what a name means
def _base_rule():
    """The base of the transform pages: gradient descent with heavy-ball momentum."""
    import sympy as sp

    from ..rulebook.metadata import Hyper, State
    from ..rulebook.rule import Rule

    theta, g, m, lr, mu = sp.symbols("theta g m lr mu")
    return Rule("momentum", param=theta, grad=g, state={m: State(0, doc="momentum buffer")},
                hyper={lr: Hyper(1e-2, low=0.0, doc="learning rate η"),
                       mu: Hyper(0.9, low=0.0, high=1.0, high_open=True, doc="momentum μ")},
                updates=[(m, mu * m + g), (theta, theta - lr * m)], latex_names={"theta": r"\theta", "lr": r"\eta"})


def _transforms() -> dict:
    from ..rulebook import transforms

    return {n: getattr(transforms, n) for n in transforms.__all__ if n != "Transform"}


def catalog() -> list:
    """``(section title, [(page name, note)])`` of every page of the site, grouped as ``symopt list``
    groups the rules, then schedules, transforms, losses and activations."""
    from ..rulebook.nn.activations import ACTIVATIONS
    from ..rulebook.nn.losses import LOSSES
    from ..runtime.kernels import builtin_names, load_builtin

    groups: dict = {}
    for name in builtin_names():
        fam = load_builtin(name).FAMILY
        groups.setdefault(fam.get("group", ""), []).append((name, fam.get("source", "")))
    sections = [(f"rules: {group}", items) for group, items in groups.items()]
    sections.append(("schedules", [(f"schedule.{k}", "") for k in SCHEDULE_EXAMPLES]))
    sections.append(("transforms", [(f"transform.{k}", "") for k in _transforms()]))
    sections.append(("losses", [(f"loss.{k}", "") for k in LOSSES]))
    sections.append(("activations", [(f"activation.{k}", "") for k in ACTIVATIONS]))
    return sections


def page(obj, *, samples: int = SAMPLES, plot: bool = True) -> dict:
    """The page context of a name (a built-in rule, ``schedule.X``, ``transform.X``, ``loss.X``,
    ``activation.X``) or of an object (Rule, Family, KernelPlan, Schedule, loss/activation spec,
    :class:`symopt.gradients.Gradient`)."""
    from . import pages

    if isinstance(obj, str):
        return _page_of_name(obj, samples=samples, plot=plot)
    from ..codegen.plan import KernelPlan
    from ..gradients import Gradient
    from ..rulebook.nn.spec import Elementwise, Rowwise
    from ..rulebook.rule import Family, Rule
    from ..schedule import Schedule

    if isinstance(obj, Rule):
        return pages.family_page(Family.of(obj), builtin=False, samples=samples, plot=plot)
    if isinstance(obj, Family):
        from ..runtime.kernels import builtin_names

        builtin = obj.name in builtin_names() and _is_builtin_family(obj)
        return pages.family_page(obj, builtin=builtin, samples=samples, plot=plot)
    if isinstance(obj, KernelPlan):
        return pages.plan_page(obj)
    if isinstance(obj, Schedule):
        return pages.schedule_page(obj, plot=plot)
    if isinstance(obj, (Elementwise, Rowwise)):
        return pages.nn_page(obj, plot=plot)
    if isinstance(obj, Gradient):
        return pages.gradient_page(obj)
    raise TypeError(f"symopt.report: expected a name, a Rule, Family, KernelPlan, Schedule, loss or activation "
                    f"spec or a symopt.gradient, got {type(obj).__name__}")


def _is_builtin_family(fam) -> bool:
    from ..rulebook.catalog import builtin_families

    return builtin_families().get(fam.name) is fam


def _page_of_name(name: str, *, samples: int, plot: bool) -> dict:
    from . import pages

    kind, _, rest = name.partition(".")
    if kind == "schedule" and rest:
        from .. import schedule

        if rest not in SCHEDULE_EXAMPLES:
            raise ValueError(f"unknown schedule {rest!r}; known: {', '.join(SCHEDULE_EXAMPLES)}")
        make = schedule.KINDS[rest]
        return pages.schedule_page(make(**SCHEDULE_EXAMPLES[rest]), doc=(make.__doc__ or "").strip(), plot=plot)
    if kind == "transform" and rest:
        known = _transforms()
        if rest not in known:
            raise ValueError(f"unknown transform {rest!r}; known: {', '.join(known)}")
        return pages.transform_page(rest, known[rest], _base_rule())
    if kind in ("loss", "activation") and rest:
        from ..rulebook.nn.activations import ACTIVATIONS
        from ..rulebook.nn.losses import LOSSES

        table = LOSSES if kind == "loss" else ACTIVATIONS
        if rest not in table:
            raise ValueError(f"unknown {kind} {rest!r}; known: {', '.join(table)}")
        return pages.nn_page(table[rest](), plot=plot)
    from ..rulebook.catalog import family

    return pages.family_page(family(name), builtin=True, samples=samples, plot=plot)


# ----------------------------------------------------------------------------- public entry points
def report(obj, *, samples: int = SAMPLES, plot: bool = True) -> str:
    """The self-contained HTML page of ``obj`` (a name or an object, see :func:`page`)."""
    return render(page(obj, samples=samples, plot=plot))


def html_view(obj) -> str:
    """What Jupyter shows for a Rule, Family, KernelPlan or gradient: the page as a ``<div>``
    (fewer verification samples, so that it appears in a few seconds)."""
    return render(page(obj, samples=10), standalone=False)


def write_pages(names, path, *, samples: int = SAMPLES, plot: bool = True) -> Path:
    """One HTML file with the page of each name, one after another."""
    names = list(names)
    if not names:
        raise ValueError("symopt report: name at least one rule (or use --all)")
    parts = [render(page(n, samples=samples, plot=plot), standalone=len(names) == 1, embed_style=False)
             for n in names]
    if len(parts) > 1:
        parts = [environment().get_template("bundle.html.jinja").render(
            pages=[_markup(p) for p in parts], title=", ".join(names), version=__version__)]
    path = Path(path)
    atomic_write(path, parts[0].encode("utf-8"))
    return path


def _markup(text: str):
    from markupsafe import Markup

    return Markup(text)


def write_site(folder, *, samples: int = SAMPLES, plot: bool = True, progress=None) -> dict:
    """The static site: ``index.html`` and ``<name>.html`` per page.  Returns ``{"pages", "bytes", "seconds"}``."""
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sections, total, count = [], 0, 0
    for title, items in catalog():
        entries = []
        for name, note in items:
            html = render(page(name, samples=samples, plot=plot), index="index.html", site=True)
            atomic_write(folder / f"{name}.html", html.encode("utf-8"))
            total += len(html.encode("utf-8"))
            count += 1
            entries.append({"name": name, "href": f"{name}.html", "note": note})
            if progress is not None:
                progress(name)
        sections.append({"title": title, "entries": entries})
    index = environment().get_template("index.html.jinja").render(
        sections=sections, title="symopt report", standalone=True, index=None, site=True, embed_style=False,
        version=__version__,
        kind_label="index")
    atomic_write(folder / "index.html", index.encode("utf-8"))
    total += len(index.encode("utf-8"))
    return {"pages": count + 1, "bytes": total, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- the command line
def add_parser(p) -> None:
    p.add_argument("names", nargs="*", help="rules (adam), schedule.NAME, transform.NAME, loss.NAME, activation.NAME")
    p.add_argument("--all", action="store_true", help="every page, and an index, into the folder -o DIR")
    p.add_argument("-o", "--output", help="FILE.html (default: NAME.html) or, with --all, a folder (default: site/)")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help=f"symopt verify's elements per magnitude band on each page (default {SAMPLES}; 0: no verify)")
    p.add_argument("--no-plots", action="store_true", help="leave the plots out")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    if args.samples < 0:
        raise ValueError("--samples must be >= 0")
    try:
        return _write(args)
    except OSError as exc:  # an output path that cannot be written: a message, not a traceback
        raise ValueError(f"cannot write {args.output or 'the output'}: {exc.strerror or exc}") from None


def _write(args) -> int:
    if args.all:
        if args.names:
            raise ValueError("give either names or --all")
        out = Path(args.output or "site")
        info = write_site(out, samples=args.samples, plot=not args.no_plots)
        print(f"wrote {info['pages']} pages ({info['bytes'] / 1e6:.1f} MB) to {out}/ in {info['seconds']:.0f} s; "
              f"open {out / 'index.html'}")
        return 0
    names = args.names
    out = Path(args.output or (f"{names[0]}.html" if len(names) == 1 else "report.html"))
    write_pages(names, out, samples=args.samples, plot=not args.no_plots)
    print(f"wrote {out}")
    return 0

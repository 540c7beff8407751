"""The report in a real browser: Debian's headless Chromium lays out every MathML element.

A few pages (a rule with variants, conventions and a reduction, a loss, an activation, a
schedule, a transform, a ``symopt.gradient``) are written to a temporary folder, each with a
small script appended that, after load, writes each ``<math>`` element's bounding box into
the DOM; ``chromium --headless --dump-dom`` prints the DOM, and every ``<math>`` must have a
non-zero width and height, with no ``<merror>`` node and no SymPy fallback text.  The Adam page's
screenshot must hold a picture (many distinct colours), light and dark.

``make test`` installs ``chromium`` when it runs as root (CI); elsewhere the test skips with the
reason, except with ``CI=true`` or ``SYMOPT_REQUIRE_REFERENCES=1``, where a missing browser fails.
"""
import os
import re
import shutil
import subprocess

import pytest
import sympy as sp

import symopt
from symopt.reporting import report

PAGES = ["adam", "lamb", "loss.huber", "activation.softmax", "schedule.cosine", "transform.lookahead"]

#: Appended to each page for the test only: the layout of every math element, written into the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  document.querySelectorAll("math").forEach(function (m) {
    var r = m.getBoundingClientRect();
    m.setAttribute("data-box", r.width.toFixed(1) + "x" + r.height.toFixed(1));
  });
  document.body.setAttribute("data-probed", "yes");
});
</script>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "chromium is not installed (make test installs Debian's chromium when it runs as root)"
    if os.environ.get("CI") == "true" or os.environ.get("SYMOPT_REQUIRE_REFERENCES") == "1":
        pytest.fail(reason + "; CI=true or SYMOPT_REQUIRE_REFERENCES=1 requires it")
    pytest.skip(reason)


def _run(browser, tmp_path, *args, timeout=90):
    cmd = [browser, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # chromium refuses to run its sandbox as root (containers, CI)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


@pytest.fixture(scope="module")
def browser():
    return _chromium()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report-pages")
    x = sp.symbols("x0:3")
    f = symopt.gradient(sp.Add(*[100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(2)]), x)
    out = {}
    for name, page in [(n, report(n, samples=5)) for n in PAGES] + [("gradient", report(f))]:
        path = folder / f"{name}.html"
        path.write_text(page.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
        out[name] = path
    return out


@pytest.mark.parametrize("name", [*PAGES, "gradient"])
def test_every_math_element_is_laid_out(browser, written, tmp_path, name):
    dom = _run(browser, tmp_path, "--virtual-time-budget=5000", "--dump-dom", written[name].as_uri()).stdout
    assert 'data-probed="yes"' in dom, "the probe did not run"
    maths = re.findall(r"<math\b[^>]*>", dom)
    assert maths, "no math element"
    boxes = [re.search(r'data-box="([\d.]+)x([\d.]+)"', m) for m in maths]
    assert all(boxes), "a math element was not measured"
    empty = [m for m, b in zip(maths, boxes) if float(b.group(1)) <= 0 or float(b.group(2)) <= 0]
    assert not empty, f"{len(empty)} of {len(maths)} math elements have no size"
    assert "<merror" not in dom
    # SymPy's fallback for a node it cannot typeset is the class name as text, e.g. "piecewise"
    inside = " ".join(re.findall(r"<math\b.*?</math>", dom, re.DOTALL))
    assert not re.search(r">(piecewise|Piecewise|Dummy|Indexed|tensorsum|globalsum|tensormean|globalmean)<", inside)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_adam_page_screenshot_holds_a_picture(browser, written, tmp_path, scheme):
    from PIL import Image

    shot = tmp_path / "adam.png"
    args = ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"] if scheme == "dark" else []
    _run(browser, tmp_path, *args, "--window-size=1200,1600", f"--screenshot={shot}", written["adam"].as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, "the screenshot is (nearly) blank"
    corner = image.getpixel((2, 2))
    assert (sum(corner) < 100) == (scheme == "dark"), corner

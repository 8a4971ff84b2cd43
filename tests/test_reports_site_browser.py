"""The history site in a real browser (headless Chromium): pages render, their links resolve,
the index's filter script works, and no page logs a console error.

Every local href/src/xlink:href of every page is checked on disk first. Then a few pages are
loaded, each as a copy beside the original with a probe script as the first thing in <head>:
it records uncaught errors, failed resource loads (capture-phase ``error`` events) and
``console.error`` calls, and after the load event writes what it saw into the DOM, which
``--dump-dom`` prints. Chromium's own console log (``--enable-logging=stderr``) is checked too.
Skipped when Chromium is not installed (Debian package ``chromium``).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from costmeter.reports.regression import per_process_samples
from costmeter.reports.site import build_site
from costmeter.reports.site_render import write_site
from costmeter.results.store import ResultStore
from site_history import NIGHTS, REGRESSED, STEPPED, fill
from site_links import broken_links

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None,
                       reason="headless Chromium is not installed (apt-get install chromium)"),
]

PROBE = """<script>
(function () {
  var seen = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    seen.push(t && t !== window ? "failed to load " + (t.src || t.href || t.tagName)
                                : "uncaught " + e.message);
  }, true);
  var original = console.error;
  console.error = function () {
    seen.push("console.error " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var filtered = null;
    var box = document.getElementById("key-filter");
    if (box) {
      box.value = "vit_tiny";
      box.dispatchEvent(new Event("input"));
      filtered = {count: document.getElementById("key-count").textContent,
                  visible: document.querySelectorAll("#keys tbody tr:not([hidden])").length};
    }
    var plots = Array.prototype.map.call(document.querySelectorAll(".plot svg"),
      function (s) { return Math.round(s.getBoundingClientRect().width); });
    var probe = document.createElement("pre");
    probe.id = "browser-probe";
    probe.textContent = JSON.stringify({
      errors: seen, title: document.title, links: document.links.length,
      sparklines: document.querySelectorAll("svg.spark").length, plots: plots,
      plotLinks: document.querySelectorAll(".plot svg a").length, filtered: filtered,
      h1: document.querySelector("h1").textContent
    });
    document.body.appendChild(probe);
  });
})();
</script>"""


@pytest.fixture(scope="module")
def site_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    with ResultStore(f"sqlite:///{root / 'results.db'}") as store:
        fill(store)
        data = build_site(store.query(), per_process_samples(store), baseline="window:8",
                          tag="nightly")
    return write_site(data, root / "site").parent, data


def load(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """Open a probed copy of ``page`` in headless Chromium: (what the probe saw, console lines
    Chromium logged)."""
    source = page.read_text(encoding="utf-8")
    probed = page.with_name(page.stem + ".probed.html")
    probed.write_text(source.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", "--dump-dom", probed.as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    finally:
        probed.unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="browser-probe">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stdout[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(match.group(1))), console


def test_every_link_of_every_page_resolves(site_root) -> None:
    root, data = site_root
    broken, external, checked = broken_links(root)
    assert broken == [] and external == [] and checked > 200
    assert len(list(root.rglob("*.html"))) == 1 + len(data.keys) + NIGHTS


def test_pages_render_without_console_errors(site_root, tmp_path: Path) -> None:
    root, data = site_root
    index, console = load(root / "index.html", tmp_path / "p1")
    assert index["errors"] == [] and console == []
    assert index["h1"] == "Benchmark history"
    assert index["sparklines"] == len(data.keys)
    assert index["filtered"] == {"count": "2", "visible": 2}  # the filter script ran
    stepped = next(v for v in data.keys if v.label == STEPPED)
    key, console = load(root / stepped.page, tmp_path / "p2")
    assert key["errors"] == [] and console == []
    assert key["h1"] == STEPPED
    assert len(key["plots"]) == 1 and key["plots"][0] > 400  # the inline SVG trend has a size
    assert key["plotLinks"] == 2 * NIGHTS  # each p50 and p99 point opens its run
    run = data.runs[-1]
    page, console = load(root / run.page, tmp_path / "p3")
    assert page["errors"] == [] and console == []
    assert page["title"] == f"Run {run.run_id}" and page["links"] > 5
    regressed = next(v for v in data.keys if v.label == REGRESSED)
    page, console = load(root / regressed.page, tmp_path / "p4")
    assert page["errors"] == [] and console == []


def test_the_probe_reports_script_errors_and_missing_files(site_root, tmp_path: Path) -> None:
    """The checks above can fail: a thrown error, a console.error and a missing image are all
    seen, by the probe and (for the first two) in Chromium's own console log."""
    root, _ = site_root
    bad = root / "broken.html"
    source = (root / "index.html").read_text(encoding="utf-8")
    bad.write_text(source.replace(
        "</body>", '<img src="missing.png"><script>console.error("on purpose");'
        "notDefined();</script></body>"), encoding="utf-8")
    try:
        probe, console = load(bad, tmp_path / "p5")
    finally:
        bad.unlink()
    assert any("missing.png" in e for e in probe["errors"]), probe["errors"]
    assert any("on purpose" in e for e in probe["errors"])
    assert any("notDefined" in e for e in probe["errors"])
    assert any("notDefined" in line for line in console) and len(console) >= 2

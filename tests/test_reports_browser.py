"""The regression HTML report opened in a real browser (headless Chromium).

Chromium loads a copy of the page with a small probe script appended; the probe records, after
the load event, how many images there are, how many failed to decode, and which sections exist.
Skipped when Chromium is not installed (Debian package ``chromium``).
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from costmeter.reports.regression import RegressionSettings, regression_report
from costmeter.reports.regression_render import write_reports
from costmeter.results.schema import BenchKey, Measurement, RunResult, Status, Validity
from costmeter.results.store import ResultStore

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and shutil.which("chromium") is None,
        reason="headless Chromium is not installed (apt-get install chromium)",
    ),
]

PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var sections = Array.prototype.map.call(document.querySelectorAll("section[id]"),
                                          function (s) { return s.id; });
  var probe = document.createElement("pre");
  probe.id = "browser-probe";
  probe.textContent = JSON.stringify({
    images: images.length, broken: broken.length, sections: sections,
    widths: images.map(function (i) { return i.naturalWidth; }),
    banner: document.querySelector(".banner").textContent,
    verdictRows: document.querySelectorAll("table.verdicts tbody tr").length
  });
  document.body.appendChild(probe);
});
</script>
"""


def report_with_regression_and_step(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    with ResultStore(f"sqlite:///{tmp_path / 'results.db'}") as store:
        for i in range(10):
            for model in ("resnet18", "mobilenet_v2", "vit_tiny"):
                slower = 1.15 if model == "resnet18" and i >= 7 else 1.0
                samples = rng.lognormal(np.log(2e6 * slower), 0.03, 150).astype(np.int64).tolist()
                started = f"2024-07-{i + 1:02d}T03:00:00+00:00"
                store.write(RunResult(
                    key=BenchKey(model, f"hash-{model}", "cpu", "onnxruntime", 1, (1, 3, 224, 224), "float32", 4),
                    status=Status.OK, run_id=f"nightly-{i}", started_at=started, finished_at=started,
                    measurement=Measurement([samples]), validity=Validity.VALID,
                    environment={"git_sha": f"{i:x}" * 8}))
        report = regression_report(store.query(), "run:nightly-6", "latest", store.samples,
                                   RegressionSettings())
    assert report.significant_regression and len(report.steps) == 1
    return write_reports(report, tmp_path / "out")["html"]


def run_chromium(page: Path, profile: Path) -> str:
    binary = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
        "--dump-dom", page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_regression_report_renders_in_chromium(tmp_path) -> None:
    page = report_with_regression_and_step(tmp_path)
    source = page.read_text(encoding="utf-8")
    # self-contained: nothing to fetch (images are data URIs, no external links or scripts)
    assert not re.search(r'(src|href)="(https?:)?//', source)
    assert "<script" not in source
    probed = tmp_path / "probed.html"
    probed.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(probed, tmp_path / "profile")
    match = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    result = json.loads(html.unescape(match.group(1)))
    assert result["sections"] == [
        "summary", "verdicts", "ratios", "distributions", "history", "method",
    ]
    # ratio plot + one distribution (the regressed key) + three history plots
    assert result["images"] == 5
    assert result["broken"] == 0
    assert all(width > 100 for width in result["widths"])
    assert result["banner"] == "REGRESSION FOUND"
    assert result["verdictRows"] == 3


def test_probe_notices_a_broken_image(tmp_path) -> None:
    """The check above is real: a corrupted embedded image is reported as broken."""
    source = report_with_regression_and_step(tmp_path).read_text(encoding="utf-8")
    corrupted = re.sub(r"base64,[A-Za-z0-9+/=]{40}", "base64,AAAAnotapng", source, count=1)
    probed = tmp_path / "corrupted.html"
    probed.write_text(corrupted.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(probed, tmp_path / "profile")
    match = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    assert json.loads(html.unescape(match.group(1)))["broken"] == 1

"""The report page: self-contained, and rendered by headless Chromium with its tables and images showing."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from foldvision.cli import main as cli_main
from foldvision.results.figures import PLOTS
from foldvision.commands.report import build
from foldvision.commands.report import main as report_main

from conftest import make_corpus, stage
from fakes import scored_run
from test_ablate import make
from test_leaderboard import add_solution, write_submission

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Offline and quiet: no first-run UI, no background requests, no component or sync updates.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def chromium() -> str:
    """A headless Chromium on PATH. The suite installs nothing on the system: .ci/run installs Debian's chromium
    before `make test`; anywhere else the render test skips, saying how to run it."""
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no headless Chromium on PATH (looked for {', '.join(BROWSERS)}): the report page is not "
                    "rendered; install one (Debian: apt-get install chromium) to run this test")
    return browser


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    corpus = make_corpus(tmp / "bin", {"0": 12, "1": 8}, n_test=12)
    add_solution(corpus)
    run_dir = scored_run(tmp, "exp", corpus, skill=1.0, train={"sampler": "random"})
    write_submission(tmp / "subs" / "exp.csv", corpus, seed=0)
    report_main([str(run_dir), "--submission", str(tmp / "subs" / "exp.csv")])
    return run_dir / "report.html"


def test_report_is_one_self_contained_file(report):
    html = report.read_text()
    images = re.findall(r'<img alt="[^"]+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(PLOTS)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from anywhere
    assert "<script" not in html and "<link" not in html
    for heading in ("Scores", "Leaderboard", "Per class", "Learning curves", "Confusion matrix", "ROC", "Config"):
        assert f">{heading}</h2>" in html
    assert "Public auc" in html and "Private auc" in html
    assert "train.sampler" in html and "random" in html  # the keys that differ from the defaults


def render(browser: str, page, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *flags,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


def test_chromium_shows_the_tables_and_images(report, chromium, tmp_path):
    # the page has no script; a copy gets one that records what the browser laid out and decoded
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", """<script>
window.addEventListener("load", () => document.body.setAttribute("data-seen", JSON.stringify({
  tables: [...document.querySelectorAll("table")].map(t => [t.rows.length, t.offsetHeight]),
  images: [...document.images].map(i => [i.alt, i.naturalWidth, i.offsetWidth, i.complete])})));
</script></body>"""))
    result = render(chromium, probe, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'data-seen="([^"]+)"', result.stdout)
    assert match, result.stdout[:2000]
    seen = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(seen["tables"]) >= 5 and all(rows > 1 and height > 0 for rows, height in seen["tables"])
    assert len(seen["images"]) == len(PLOTS)
    for alt, natural_width, shown_width, complete in seen["images"]:
        assert complete and natural_width > 100 and shown_width > 100, alt  # decoded and laid out

    shot = tmp_path / "report.png"
    result = render(chromium, report, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    assert (pixels < 240).any(axis=2).mean() > 0.05  # text, tables and plots, not a blank page
    colours = {tuple(p) for p in pixels[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 100  # the plots' colours, not only black text on white


def test_report_without_submission_or_ablation(tmp_path, binary_corpus):
    run_dir = scored_run(tmp_path, "plain", binary_corpus)
    html = build(run_dir)
    assert ">Leaderboard</h2>" not in html and ">Ablation</h2>" not in html
    assert html.count("data:image/png;base64,") == len(PLOTS)


def test_a_stale_report_says_so_on_the_page_and_in_one_line(tmp_path, binary_corpus, capsys):
    run_dir = scored_run(tmp_path, "exp", binary_corpus)
    report_main([str(run_dir)])
    assert 'class="stale"' not in (run_dir / "report.html").read_text()  # fresh: no banner
    report_main([str(run_dir), "--stale", "scores", "submission"])
    html = (run_dir / "report.html").read_text()
    assert 'class="stale"' in html
    assert "the scores are older than their inputs; run make train EXP=exp" in html
    assert "the submission is older than its inputs; run make predict EXP=exp" in html
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("report: stale")]
    assert len(printed) == 1 and "the scores are older" in printed[0] and "make predict" in printed[0]

    # a training image replaced under the same name: the digest recorded at training no longer matches
    image = next((binary_corpus / "train").glob("*.png"))
    Image.new("RGB", (20, 20), "red").save(image)
    report_main([str(run_dir)])
    assert "the corpus changed since training (train_images); run make train EXP=exp" in (
        run_dir / "report.html").read_text()
    assert "report: stale: the corpus changed since training" in capsys.readouterr().err


def test_an_unscored_run_is_one_line_saying_what_to_run(tmp_path, capsys):
    code, err = stage(capsys, "report", str(tmp_path / "runs" / "nothing"))
    assert code == 2 and err.strip().splitlines() == [
        f"error: {tmp_path / 'runs' / 'nothing'}: no scores yet, nothing to report; run make train EXP=nothing "
        f"RUNS={tmp_path / 'runs'} first"]


@pytest.mark.slow  # runs make (its -q checks and the report stage): ~15 s on 2 cores
def test_make_report_after_the_config_changed_never_trains(tmp_path, binary_corpus):
    run_dir = scored_run(tmp_path, "exp", binary_corpus)
    oofs = {p: p.stat().st_mtime_ns for p in run_dir.glob("fold*/oof.csv")}
    # the config re-resolved with another learning rate: make now finds every fold, and so the scores, stale
    code = cli_main(["config", "exp", "train.lr=0.01", "--configs", str(tmp_path / "configs"),
                     "--run-dir", str(run_dir)])
    assert code is None
    result = make(tmp_path, "report", EXP="exp")
    assert "foldvision train" not in result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("fold*/oof.csv")} == oofs  # nothing re-trained
    assert "the scores are older than their inputs" in (run_dir / "report.html").read_text()
    assert "report: stale: the scores are older than their inputs; run make train EXP=exp" in result.stderr

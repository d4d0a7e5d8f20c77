"""`autotune dashboard` shows a tuned study in a real browser: the study, its trials, the edit thumbnails and the
preset's provenance note.

The browser is Debian's Chromium, run headless (`.ci/run` installs it); without one the browser test is skipped
with how to get one (a failure under CI=true).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from autotune.cli import main
from autotune.report.dashboard import annotate
from autotune.tuning.tuner import tune
from tests.needs import need
from tests.test_tuner_fakes import FakeEditor, FakeScorer, make_tasks

optuna.logging.set_verbosity(optuna.logging.WARNING)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    need("no headless browser found for the dashboard test: install Debian's chromium (apt-get install chromium) "
         "or another Chromium on PATH")
    raise AssertionError  # need() does not return


@pytest.fixture
def tuned_project(tmp_path):
    """A finished study in <tmp>/proj as `autotune tune` leaves it: journal, artifacts, preset and notes."""
    project = tmp_path / "proj"
    result = tune(FakeEditor(), make_tasks(3), category="change_color", trials=8, batch=4, scorer=FakeScorer(),
                  progress=False, sampler="random", prune=False, project_dir=project, presets_dir=tmp_path / "presets")
    annotate(result.study, result.preset, result.preset_path)
    return project, result


def _start_dashboard(project: Path) -> tuple[subprocess.Popen, str]:
    """The installed command on a free port; returns it and the URL it printed."""
    command = [str(Path(sys.executable).with_name("autotune")), "dashboard", "--project-dir", str(project),
               "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"open (http://127\.0\.0\.1:\d+/dashboard/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError(f"the dashboard did not print its URL: {''.join(lines)}")


def _page_text(chrome: str, url: str, profile: Path, *expected: str, patience: float = 240) -> str:
    """What a person sees on the page once its scripts have loaded the data, as text. The page fetches its data
    after it loads; on a busy machine that can take longer than the browser's time budget, so the page is loaded
    again until every `expected` text shows or `patience` seconds have passed (then the caller's asserts say
    what is missing)."""
    deadline = time.monotonic() + patience
    while True:
        done = subprocess.run([chrome, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                               "--dump-dom", url], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        page = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", done.stdout, flags=re.S)
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))
        if all(e in text for e in expected) or time.monotonic() > deadline:
            return text
        time.sleep(2)


def test_dashboard_shows_the_study_its_trials_images_and_preset_in_a_browser(tuned_project, tmp_path):
    chrome = browser()
    project, result = tuned_project
    study = result.study
    proc, url = _start_dashboard(project)
    try:
        listing = _page_text(chrome, url, tmp_path / "chrome", study.study_name)
        assert study.study_name in listing
        study_id = study._study_id
        overview = _page_text(chrome, f"{url}studies/{study_id}", tmp_path / "chrome", "Objective X: fidelity")
        assert "Objective X: fidelity (background_psnr)" in overview and "edit_strength (full_success)" in overview
        trials = _page_text(chrome, f"{url}studies/{study_id}/trials", tmp_path / "chrome",
                            f"Trial {len(study.trials) - 1} Complete", "edits.png")
        assert f"{len(study.trials)} Trials" in trials
        for t in study.trials:
            assert f"Trial {t.number} Complete" in trials
        assert f"pick of the preset {result.preset_path.name}" in trials  # the picks' trial notes
        assert re.search(r"trial-\d+-edits\.png", trials)  # the tuner's edit thumbnails, as artifacts
        note = _page_text(chrome, f"{url}studies/{study_id}/note", tmp_path / "chrome", "content hash")
        assert "Preset for change_color" in note and result.preset.content_hash in note
        assert str(result.preset_path.resolve()) in note
        # The thumbnails are served, not just listed.
        meta = optuna.artifacts.get_all_artifact_meta(study.best_trials[0], storage=study._storage)[0]
        trial_id = study.best_trials[0]._trial_id
        with urllib.request.urlopen(f"{url.removesuffix('dashboard/')}artifacts/{study_id}/{trial_id}/"
                                    f"{meta.artifact_id}", timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        proc.send_signal(signal.SIGTERM)  # not SIGINT: a test run started in the background ignores it
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0 and "dashboard stopped" in out


def test_dashboard_without_studies_says_what_to_do(tmp_path, capsys):
    assert main(["dashboard", "--project-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no studies at" in err and "autotune tune" in err and "--storage" in err
    assert not (tmp_path / "nothing").exists()  # nothing created


def test_dashboard_on_a_taken_port_says_so(tuned_project, capsys):
    import socket

    project, _ = tuned_project
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", "--project-dir", str(project), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

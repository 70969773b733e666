"""In a real browser (Debian's headless chromium): the dashboard shows the study, the report its figures."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from autocls.cli.main import main

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,  # end-to-end: a server and a browser (-m 'not slow' skips them)
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"),
]


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=15000",
    ]
    done = subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True, timeout=120)
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def finished_study(image_folder: Path, tiny_space: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "runs"
    args = ["search", str(image_folder), "--space", str(tiny_space), "--folds", "2", "--trials", "2"]
    assert main([*args, "--workdir", str(workdir), "--quiet"]) == 0
    assert main(["refit", "--workdir", str(workdir), "--quiet"]) == 0
    return workdir


def test_dashboard_renders_the_study_and_trial_figures(finished_study: Path, tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "autocls.cli.main", "dashboard", "--workdir", str(finished_study), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    assert b'"study_name": "data"' in response.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        study_page = chromium(tmp_path, f"http://127.0.0.1:{port}/dashboard/studies/1", "--dump-dom")
        assert "data (id=1)" in study_page and "History" in study_page and "accuracy" in study_page
        trials_page = chromium(tmp_path, f"http://127.0.0.1:{port}/dashboard/studies/1/trials", "--dump-dom")
        for rendered in ("confusion_matrix.svg", "loss_curves.svg", "score_curves.svg", "test_efficientnet at 24 px"):
            assert rendered in trials_page, rendered
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_figures_render(finished_study: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    assert (
        main(["report", str(finished_study / "data" / "model"), "--out", str(report), "--workdir", str(finished_study)])
        == 0
    )
    shot = tmp_path / "report.png"
    chromium(tmp_path, report.as_uri(), f"--screenshot={shot}", "--window-size=1200,4000")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = (np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(axis=2) < 30).sum()  # bars and curves
    confusion_green = ((pixels[..., 1] == 255) & (pixels[..., 0] < 200) & (pixels[..., 0] == pixels[..., 2])).sum()
    assert blue > 2000, "charts did not render"
    assert confusion_green > 200, "the confusion matrix did not render"
    dom = chromium(tmp_path, report.as_uri(), "--dump-dom")
    assert dom.count("<svg") >= 6 and dom.count("<img") >= 12

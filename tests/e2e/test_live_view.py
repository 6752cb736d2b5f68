"""Metrics and the live view of the running demo stack, looked at as a person would: the
Prometheus endpoint, the JSON snapshot, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.e2e

# The decisions line's colour (--accent in ext_authz/admin/live.html).
ACCENT = (0x5B, 0xA4, 0xE6)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--virtual-time-budget=4000",
]


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    raw = image.tobytes()
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 - loopback
        return bytes(reply.read())


def _traffic(client, token_for) -> None:  # noqa: ANN001
    viewer = token_for("alice", "viewer")
    for _ in range(5):
        assert client.get("/api/books", token=viewer).status == 200
        assert client.get("/admin/stats", token=viewer).status == 403
        assert client.get("/admin/stats").status == 401


def test_metrics_endpoint_counts_decisions_without_identifying_labels(
    stack, client, token_for
) -> None:
    _traffic(client, token_for)
    text = _get(f"http://127.0.0.1:{stack.ports.metrics}/metrics").decode()
    assert 'ext_authz_decisions_total{decision="allow",reason="allowed"}' in text
    assert 'decision="forbidden",reason="access_denied"' in text
    assert "ext_authz_decision_duration_seconds_bucket" in text
    assert "ext_authz_jwks_age_seconds" in text
    for private in ("alice", "/admin/stats", "127.0.0.1", "Bearer"):
        assert private not in text


def test_live_snapshot_shows_deny_ratio_and_top_denied_paths(stack, client, token_for) -> None:
    _traffic(client, token_for)
    snapshot = json.loads(_get(f"http://127.0.0.1:{stack.ports.metrics}/api/live"))
    text = json.dumps(snapshot)
    assert "/admin/stats" in text
    assert "Bearer" not in text and "eyJ" not in text


def test_live_view_page_renders_charts_with_data_in_chromium(
    stack, client, token_for, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is required (make test installs it through .ci/run)"
    for _ in range(3):  # data in several seconds, so the charts have a line to draw
        _traffic(client, token_for)
        time.sleep(1)
    url = f"http://127.0.0.1:{stack.ports.metrics}/?poll"  # a stream never lets the page idle
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "/admin/stats" in dom  # the top denied paths table was filled from live data
    for chart in ("rate-chart", "deny-chart"):  # each chart drew non-zero points
        drawn = re.search(rf'id="{chart}"[^>]*data-points="(\d+)"', dom)
        assert drawn and int(drawn.group(1)) > 0, chart
    shot = tmp_path / "live.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", url],
        capture_output=True,
        timeout=60,
        check=True,
    )
    image = Image.open(shot).convert("RGB")
    accent = sum(
        1
        for pixel in _pixels(image)
        if all(abs(a - b) <= 24 for a, b in zip(pixel, ACCENT, strict=True))
    )
    # The legend swatch is 10x10 px; the decisions line across the chart adds a few hundred more
    # (how many depends on how the bursts above fell across second boundaries: 337 to 600 seen).
    assert accent > 250, f"decisions chart not painted ({accent} px in its colour)"

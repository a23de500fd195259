"""`evbench report RUN.db --html DIR`: the judged run as a page with its plots, from any recorded trace."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.runner import run_scenario

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_report_renders_a_failing_run_as_html_with_its_plots(tmp_path: Path) -> None:
    run_scenario("panel-200a", "uncontrolled", trace=tmp_path / "t.db", duration_s=2.5 * 3600)
    done = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(tmp_path / "t.db"), "--html",
                           str(tmp_path / "report")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the run failed its checks; the report says so too
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "panel-200a with uncontrolled" in page and ">FAIL<" in page
    for check_id in ("SITE-LIMIT", "BREAKER", "STATION-LIMIT", "OFFLINE-SAFE"):
        assert f"<b>{check_id}</b>" in page
    assert "main breaker tripped" in page  # the BREAKER finding's own words
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images == ["site_current.png", "station_currents.png", "soc.png"]
    for name in images:
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000, name  # a real plot, not an empty canvas

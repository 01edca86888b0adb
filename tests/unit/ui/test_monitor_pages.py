"""A run's monitor reports in the UI: the windows `tuneforge monitor` judged, one window's alerts and drift
table (the monitor stage's own sections), its report.html sandboxed, and what a damaged report shows."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

from tests.unit.ui.test_routes import client
from tuneforge.ui import security

WINDOW = "2026-12-01T0000Z_2026-12-02T0000Z"


def test_the_windows_list_and_one_window_show_the_alert_and_the_drift_table(monitored: Path) -> None:
    c = client(monitored)
    report = json.loads((monitored / "run" / "monitor" / WINDOW / "report.json").read_text())
    assert [a["metric"] for a in report["alerts"]] == ["embedding_drift"]
    assert 'href="/run/monitor?path=run">Monitor reports</a>' in c.get("/run?path=run").text
    listing = c.get("/run/monitor?path=run").text
    assert re.findall(r'window=([^"]+)">', listing) == [WINDOW]
    assert '<span class="state failed">1 alert</span> embedding_drift' in listing
    assert '<td data-label="inputs">150</td>' in listing
    page = c.get(f"/run/monitor/window?path=run&window={WINDOW}")
    assert page.status_code == 200
    text = page.text
    alert = report["alerts"][0]["message"]
    assert (
        f"<b>ALERT prompt embeddings drifted [embedding_drift]</b>: {html.escape(alert, quote=False)}" in text
    )
    drift = re.search(r"<h2>Drift tests</h2>.*?</table>", text, re.S).group(0)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", drift)
    emb = report["tests"]["embedding_drift"]
    row = cells[cells.index("prompt embeddings") : cells.index("prompt embeddings") + 8]
    assert row[1] == emb["test"] and row[3] == "0.02" and row[7] == emb["verdict"]
    assert f'href="/run/monitor/report?path=run&window={WINDOW}">report.html</a>' in text
    served = c.get(f"/run/monitor/report?path=run&window={WINDOW}")
    assert served.status_code == 200 and served.headers["content-security-policy"] == security.REPORT_CSP
    assert served.text == (monitored / "run" / "monitor" / WINDOW / "report.html").read_text()


def test_damaged_missing_and_outside_windows_get_a_page_not_a_500(monitored: Path) -> None:
    c = client(monitored)
    broken = monitored / "run" / "monitor" / "2026-12-03T0000Z_2026-12-04T0000Z"
    broken.mkdir()
    (broken / "report.json").write_text('{"window": ')
    listing = c.get("/run/monitor?path=run").text
    assert re.findall(r'window=([^"]+)">', listing) == [broken.name, WINDOW]  # newest first
    assert "report.json cannot be read: JSONDecodeError" in listing
    page = c.get(f"/run/monitor/window?path=run&window={broken.name}")
    assert page.status_code == 200 and "JSONDecodeError" in page.text
    old = monitored / "run" / "monitor" / "2026-11-01T0000Z_2026-11-02T0000Z"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"window": {"since": "a", "until": "b"}, "n": 1}))
    page = c.get(f"/run/monitor/window?path=run&window={old.name}")
    assert page.status_code == 200 and "this report.json cannot be shown (KeyError: " in page.text
    for window in ("../../etc", "..", "nope", "", f"{WINDOW}/.tuneforge", "../monitor"):
        assert c.get(f"/run/monitor/window?path=run&window={window}").status_code == 404, window
    assert c.get(f"/run/monitor/report?path=run&window={old.name}").status_code == 404  # no report.html
    empty = c.get("/run/monitor?path=run/monitor").status_code
    assert empty == 404  # a window folder is not a run


def test_a_run_never_monitored_says_how(monitored: Path) -> None:
    shutil.rmtree(monitored / "run" / "monitor")
    c = client(monitored)
    assert "Monitor reports" not in c.get("/run?path=run").text
    page = c.get("/run/monitor?path=run").text
    assert "No monitor report yet: <code>tuneforge monitor" in page

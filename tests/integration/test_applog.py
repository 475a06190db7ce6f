"""The API's build lines (api/applog.py) against a real `berth logd`: lines that did not fit
while logd was away are counted and said in the app's log, never silently lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.api.applog import AppLog
from berth.framework import logship
from tests.integration.test_logs import Logd, read, wait_for

pytestmark = [pytest.mark.slow]


def test_build_lines_dropped_while_logd_is_away_are_said_in_the_apps_log(tmp_path: Path) -> None:
    logd = Logd(tmp_path / "data", tmp_path / "logd.log", "1m")  # not started yet
    applog = AppLog(logd.url, logd.data, max_records=10)
    try:
        for n in range(30):
            applog.line("away", "build", "0123456789ab", f"step {n}")  # never blocks
        dropped = applog.dropped("away")
        assert dropped >= 10  # the queue holds 10, and the thread at most one batch of 10
        logd.start()
        key = logship.load_or_create_key(logd.data)

        def builds() -> list[str]:
            return [r.text for r in read(logd, key, "away") if r.source == "build"]

        wait_for(lambda: len(builds()) == 30 - dropped, 60)  # the queued ones, retried
        applog.line("away", "berth", "", "Build 0123456789ab succeeded: v2")
        found = wait_for(lambda: len(r := read(logd, key, "away")) == 32 - dropped and r, 30)
    finally:
        applog.close()
        logd.stop()
    assert [(r.source, r.process) for r in found[-2:]] == [("berth", ""), ("berth", "")]
    assert found[-2].text.startswith(f"{dropped} build lines dropped on the way to the log")
    assert found[-1].text == "Build 0123456789ab succeeded: v2"
    steps = [r.text for r in found if r.source == "build"]
    assert steps == sorted(steps, key=lambda t: int(t.split()[1]))
    assert {r.process for r in found if r.source == "build"} == {"0123456789ab"}
    assert applog.dropped("away") == 0

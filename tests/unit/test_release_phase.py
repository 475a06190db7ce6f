"""The release phase's pure parts: release statuses and their defaults (records written before
statuses existed read as succeeded), the app's current and newest releases, `release` never
scaled, the outcome of a release command's run, and which releases keep their images."""

from __future__ import annotations

from dataclasses import replace

import pytest

from berth.api.builds import BuildSettings
from berth.api.prune import rollback_targets
from berth.api.releasephase import outcome_of
from berth.framework.errors import Invalid
from berth.framework.model import (
    RELEASE_FAILED,
    RELEASE_PENDING,
    RELEASE_SUCCEEDED,
    App,
    Artifact,
    Release,
    release_status,
    validate_formation_changes,
)
from berth.framework.runs import Run


def test_a_record_without_a_status_went_live() -> None:
    assert release_status({"version": 3, "description": "Deploy"}) == (RELEASE_SUCCEEDED, "")
    assert release_status({"status": None}) == (RELEASE_SUCCEEDED, "")
    assert release_status({"status": "pending"}) == (RELEASE_PENDING, "")
    failed = {"status": "failed", "status_reason": "release command failed (exit 3)"}
    assert release_status(failed) == (RELEASE_FAILED, "release command failed (exit 3)")
    # a status this version does not know is never run nor rolled back to
    assert release_status({"status": "weird"})[0] == RELEASE_FAILED


def test_a_release_is_succeeded_unless_told_and_listings_say_so() -> None:
    release = Release("shop", 4, "Deploy 1a2b3c4 (git push)", "t", "now")
    assert release.status == RELEASE_SUCCEEDED
    summary = release.summary_json()
    assert summary["status"] == "succeeded"
    assert summary["status_reason"] == ""
    failed = replace(release, status=RELEASE_FAILED, status_reason="release command failed")
    assert failed.to_json()["status"] == "failed"
    assert failed.to_json()["status_reason"] == "release command failed"


def test_an_app_record_without_latest_has_its_current_release_as_newest() -> None:
    old = App.from_json({"name": "shop", "created_at": "t", "release": 7})
    assert old.latest is None
    assert old.newest == 7
    assert "latest" not in old.to_json()
    pending = replace(old, latest=9)  # v8 failed, v9 runs its release command
    assert pending.newest == 9
    assert pending.release == 7
    assert pending.to_json()["latest"] == 9
    assert App.from_json(pending.to_json()) == pending
    # a latest at or below the current release says nothing: not written
    assert "latest" not in replace(old, latest=7).to_json()


@pytest.mark.parametrize("types", [{}, {"web": "x", "release": "migrate"}])
def test_release_is_never_scaled(types: dict[str, str]) -> None:
    with pytest.raises(Invalid, match="release phase"):
        validate_formation_changes({"release": 1}, types)
    with pytest.raises(Invalid, match="never scaled"):
        validate_formation_changes({"web": 1, "release": 0}, types)
    assert validate_formation_changes({"web": 2}, {"web": "x", "release": "m"}) == {"web": 2}


def run(state: str = "finished", outcome: str = "finished", code: int | None = 0) -> Run:
    return Run(
        app="shop",
        number=4,
        command=("/bin/sh", "-c", "migrate"),
        release=9,
        attach=False,
        tty=False,
        memory_mb=256,
        cpus=0.25,
        created_by="t",
        created_at="now",
        state=state,
        outcome=outcome,
        exit_code=code,
        message="its task is gone" if outcome == "lost" else "",
    )


def test_the_outcome_of_a_release_command() -> None:
    assert outcome_of(run(), 300, stopped=False) is None
    assert outcome_of(run(code=None), 300, stopped=False) is None  # FINISHED is exit 0
    assert outcome_of(run(outcome="failed", code=3), 300, stopped=False) == (
        "release command failed (exit 3)"
    )
    assert outcome_of(run(outcome="lost", code=None), 300, stopped=False) == (
        "release command failed (lost: its task is gone)"
    )
    assert outcome_of(run(outcome="killed", code=None), 300, stopped=True) == (
        "release command did not finish within 300s and was stopped"
    )
    assert outcome_of(run(state="launched", outcome="", code=None), 300, stopped=True) == (
        "release command did not finish within 300s"
    )
    assert outcome_of(None, 60, stopped=False) == "release command did not finish within 60s"


def test_failed_releases_are_no_rollback_targets() -> None:
    def release(version: int, status: str) -> Release:
        artifact = Artifact("image", f"berth/app-shop:{version}")
        return Release("shop", version, "d", "t", "now", artifact=artifact, status=status)

    listed = [
        release(9, RELEASE_FAILED),
        release(8, RELEASE_PENDING),
        release(7, RELEASE_SUCCEEDED),
        release(6, RELEASE_FAILED),
        release(5, RELEASE_SUCCEEDED),
    ]
    assert [r.version for r in rollback_targets(listed, 2)] == [8, 7]
    assert [r.version for r in rollback_targets(listed, 10)] == [8, 7, 5]


def test_release_phase_timeout_from_env() -> None:
    assert BuildSettings.from_env({}).release_phase_timeout == 300
    settings = BuildSettings.from_env({"BERTH_RELEASE_PHASE_TIMEOUT": "30"})
    assert settings.release_phase_timeout == 30
    with pytest.raises(Invalid, match="BERTH_RELEASE_PHASE_TIMEOUT"):
        BuildSettings.from_env({"BERTH_RELEASE_PHASE_TIMEOUT": "0"})

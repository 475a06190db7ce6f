"""The pure parts of `git push`: pkt-line and side-band framing, receive-pack commands, which
refs deploy, Procfiles, the credential helper's answer, build settings, the build log cap."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest
from dulwich.errors import HangupException
from dulwich.objects import Blob, Tree
from dulwich.protocol import Protocol
from dulwich.repo import Repo

from berth.api.builds import BuildSettings, new_build_id
from berth.api.git import (
    MAX_BAND_PAYLOAD,
    Command,
    PackTooLarge,
    ProtocolError,
    _Input,
    advertisement,
    band,
    check_commands,
    parse_commands,
    ref_problem,
    report_status,
)
from berth.buildpacks.dockerfile import BuildError, checkout, parse_procfile, process_types
from berth.cli.gitcredential import answer, parse_request, respond
from berth.cli.gitremote import add_remote, app_from_remote, helper_command
from berth.framework.errors import Invalid
from berth.framework.model import clip_log

A = "a" * 40
B = "b" * 40
ZERO = "0" * 40


def pkts(data: bytes) -> list[bytes | None]:
    proto = Protocol(io.BytesIO(data).read, lambda _: None)
    out: list[bytes | None] = []
    while True:
        try:
            line = proto.read_pkt_line()
        except HangupException:  # the end of the buffer
            return out
        out.append(line)


def test_parse_commands_takes_capabilities_from_the_first_line() -> None:
    commands, caps = parse_commands(
        [
            f"{ZERO} {A} refs/heads/main\0report-status side-band-64k agent=git/2.39\n".encode(),
            f"{A} {B} refs/heads/dev\n".encode(),
        ]
    )
    assert commands == [Command(ZERO, A, "refs/heads/main"), Command(A, B, "refs/heads/dev")]
    assert caps == {b"report-status", b"side-band-64k", b"agent=git/2.39"}


@pytest.mark.parametrize(
    "line",
    [
        b"nonsense",
        f"{A} {B}".encode(),
        f"{A[:39]} {B} refs/heads/main".encode(),
        f"{A} {B} heads/main".encode(),
        f"{A.upper()} {B} refs/heads/main".encode(),
        f"{A} {B} refs/heads/m\xc3\xa4in".encode(),
    ],
)
def test_parse_commands_refuses_malformed_lines(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_commands([line])


def test_only_main_or_master_deploy_with_a_hint_for_other_branches() -> None:
    assert ref_problem(Command(A, B, "refs/heads/main")) is None
    assert ref_problem(Command(ZERO, B, "refs/heads/master")) is None
    dev = ref_problem(Command(A, B, "refs/heads/dev"))
    assert dev is not None
    assert "git push berth HEAD:main" in dev
    tag = ref_problem(Command(ZERO, A, "refs/tags/v1"))
    assert tag is not None
    assert "only branches main or master" in tag
    deleting = ref_problem(Command(A, ZERO, "refs/heads/main"))
    assert deleting is not None
    assert "deleting main" in deleting


def test_one_branch_deploys_per_push() -> None:
    both = check_commands([Command(A, B, "refs/heads/main"), Command(A, B, "refs/heads/master")])
    assert all(problem and "not both" in problem for problem in both.values())
    one = check_commands([Command(A, B, "refs/heads/main"), Command(A, B, "refs/heads/dev")])
    assert one["refs/heads/main"] is None
    assert one["refs/heads/dev"]


def test_band_splits_into_side_band_64k_packets() -> None:
    data = b"x" * (MAX_BAND_PAYLOAD * 2 + 10)
    packets = list(band(2, data))
    assert len(packets) == 3
    assert all(len(p) <= 65520 for p in packets)
    parsed = [pkts(p)[0] for p in packets]
    assert all(p is not None and p[0] == 2 for p in parsed)
    assert b"".join(p[1:] for p in parsed if p is not None) == data
    assert list(band(2, b"")) == []


def test_report_status_says_ok_or_ng_with_the_reason_on_one_line() -> None:
    status = report_status("ok", {"refs/heads/main": None, "refs/heads/dev": "only main\nhere"})
    assert pkts(status) == [
        b"unpack ok\n",
        b"ok refs/heads/main\n",
        b"ng refs/heads/dev only main here\n",
        None,
    ]


def test_advertisement_of_an_empty_repository_and_of_refs() -> None:
    empty = pkts(advertisement("git-receive-pack", {}, b"report-status"))
    assert empty == [
        b"# service=git-receive-pack\n",
        None,
        ZERO.encode() + b" capabilities^{}\0report-status\n",
        None,
    ]
    refs = {b"refs/heads/main": A.encode(), b"refs/heads/dev": B.encode()}
    lines = pkts(advertisement("git-receive-pack", refs, b"report-status"))
    assert lines[2] == B.encode() + b" refs/heads/dev\0report-status\n"
    assert lines[3] == A.encode() + b" refs/heads/main\n"


def test_input_counts_against_the_limit_and_gunzips() -> None:
    body = _Input(io.BytesIO(b"0123456789"), limit=100, gzipped=False)
    assert body.read(4) == b"0123"
    assert body.read(100) == b"456789"
    assert body.read(1) == b""
    with pytest.raises(PackTooLarge):
        _Input(io.BytesIO(b"x" * 200_000), limit=100_000, gzipped=False).read(200_000)
    zipped = _Input(io.BytesIO(gzip.compress(b"hello " * 1000)), limit=10_000, gzipped=True)
    assert zipped.read(6000) == b"hello " * 1000


def test_procfile_parsing() -> None:
    assert parse_procfile("# comment\n\nweb: ./serve --port $PORT\nworker:  python w.py \n") == {
        "web": "./serve --port $PORT",
        "worker": "python w.py",
    }
    for bad, why in (
        ("web ./serve", "expected 'TYPE: command'"),
        ("Web: x", "process type"),
        ("web: a\nweb: b", "given twice"),
    ):
        with pytest.raises(BuildError, match=why):
            parse_procfile(bad)


def test_process_types_run_the_images_command_as_web() -> None:
    assert process_types({}, has_command=True) == {"web": ""}
    assert process_types({"worker": "w"}, has_command=True) == {"worker": "w", "web": ""}
    assert process_types({"web": "x"}, has_command=False) == {"web": "x"}
    with pytest.raises(BuildError, match="no CMD"):
        process_types({"worker": "w"}, has_command=False)
    # the release phase's command is kept beside web (the push runs it; it is never scaled)
    assert process_types({"release": "migrate"}, has_command=True) == {
        "release": "migrate",
        "web": "",
    }


def test_credential_helper_answers_for_the_berth_url_only() -> None:
    request = parse_request("protocol=http\nhost=127.0.0.1:7070\npath=git/x.git\n\nignored=1\n")
    assert request == {"protocol": "http", "host": "127.0.0.1:7070", "path": "git/x.git"}
    token = "berth_0123456789ab_" + "A" * 43
    assert answer(request, "http://127.0.0.1:7070", token) == (
        f"username=berth\npassword={token}\n"
    )
    assert answer(request, "https://127.0.0.1:7070", token) == ""
    assert (
        answer({"protocol": "http", "host": "evil.example"}, "http://127.0.0.1:7070", token) == ""
    )
    assert answer({"url": "http://127.0.0.1:7070/git/x.git"}, "http://127.0.0.1:7070", token)


def test_credential_helper_reads_the_login_and_answers_get_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BERTH_URL", raising=False)
    monkeypatch.delenv("BERTH_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    request = "protocol=http\nhost=127.0.0.1:7070\n\n"
    assert respond("get", request) == ""  # not logged in: git asks elsewhere
    stored = tmp_path / "berth" / "credentials"
    stored.parent.mkdir()
    stored.write_text("{not json")
    assert respond("get", request) == ""
    stored.write_text('{"url": "http://127.0.0.1:7070/", "token": "berth_t"}')
    assert respond("get", request) == "username=berth\npassword=berth_t\n"
    assert respond("store", request) == ""
    assert respond("erase", request) == ""
    monkeypatch.setenv("BERTH_TOKEN", "berth_env")
    assert respond("get", request) == "username=berth\npassword=berth_env\n"


def test_build_settings_from_the_environment() -> None:
    assert BuildSettings.from_env({}) == BuildSettings()
    custom = BuildSettings.from_env({"BERTH_GIT_MAX_PACK_MB": "3", "BERTH_BUILD_CONCURRENCY": "4"})
    assert custom.max_pack_bytes == 3 << 20
    assert custom.concurrency == 4
    with pytest.raises(Invalid, match="BERTH_BUILD_TIMEOUT"):
        BuildSettings.from_env({"BERTH_BUILD_TIMEOUT": "soon"})


def test_build_ids_sort_by_age_and_logs_keep_their_tail() -> None:
    first, second = new_build_id(), new_build_id()
    assert len(first) == 12
    assert first[:8] <= second[:8]
    text = "".join(f"line {n}\n" for n in range(100_000))
    clipped = clip_log(text, limit=1000)
    assert clipped.endswith("line 99999\n")
    assert clipped.startswith("[… ")
    assert len(clipped.encode()) < 1100
    assert clip_log("short\n") == "short\n"


def test_checkout_writes_files_links_and_modes_and_refuses_escaping_names(
    tmp_path: Path,
) -> None:
    repo = Repo.init_bare(str(tmp_path / "r.git"), mkdir=True)
    script, text, link = Blob.from_string(b"#!/bin/sh\n"), Blob.from_string(b"hi\n"), Blob()
    link.data = b"/etc/passwd"
    sub = Tree()
    sub.add(b"run", 0o100755, script.id)
    top = Tree()
    top.add(b"a.txt", 0o100644, text.id)
    top.add(b"bin", 0o040000, sub.id)
    top.add(b"passwd", 0o120000, link.id)
    for obj in (script, text, link, sub, top):
        repo.object_store.add_object(obj)
    out = tmp_path / "out"
    out.mkdir()
    assert checkout(repo, top.id, out) == 3
    assert (out / "a.txt").read_text() == "hi\n"
    assert os.access(out / "bin" / "run", os.X_OK)
    assert not os.access(out / "a.txt", os.X_OK)
    assert os.readlink(out / "passwd") == "/etc/passwd"

    evil = Tree()
    evil.add(b"..", 0o040000, sub.id)
    repo.object_store.add_object(evil)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(BuildError, match="not allowed"):
        checkout(repo, evil.id, other)
    assert not (tmp_path / "run").exists()
    repo.close()


def test_the_remote_and_credential_helper_are_configured_without_the_token(
    tmp_path: Path,
) -> None:
    Repo.init(str(tmp_path)).close()
    assert add_remote("http://127.0.0.1:7070/", "myapp", tmp_path)
    assert app_from_remote(tmp_path) == "myapp"
    with Repo(str(tmp_path)) as repo:
        config = repo.get_config()
        section = (b"credential", b"http://127.0.0.1:7070")
        helpers = list(config.get_multivar(section, b"helper"))
    assert helpers == [b"", helper_command().encode()]  # earlier helpers for the URL reset
    assert helper_command().endswith(" -m berth.cli.gitcredential")
    text = (tmp_path / ".git" / "config").read_text()
    assert "berth_" not in text
    assert "http://127.0.0.1:7070/git/myapp.git" in text

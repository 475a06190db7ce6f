"""The `berth` CLI against a real API server: Heroku's vocabulary, tables and --json, the git
remote, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from dulwich.repo import Repo

from berth.cli.main import cli
from tests.conftest import Api


class Berth:
    def __init__(self, api: Api, home: Path) -> None:
        self.api = api
        self.env = {
            "XDG_CONFIG_HOME": str(home),
            "BERTH_URL": "",
            "BERTH_TOKEN": "",
            "BERTH_APP": "",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True, input: str | None = None) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env, input=input)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        else:
            assert result.exit_code != 0, (args, result.output)
        return result

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def berth(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Berth:
    monkeypatch.chdir(tmp_path)
    b = Berth(api, tmp_path / "config")
    b("login", api.url, "--token", api.token)
    return b


def test_login_stores_credentials_privately(berth: Berth, tmp_path: Path) -> None:
    creds = tmp_path / "config" / "berth" / "credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert json.loads(creds.read_text()) == {"url": berth.api.url, "token": berth.api.token}
    out = berth("login", berth.api.url, "--token", "berth_000000000000_" + "A" * 43, ok=False)
    assert "invalid or revoked token" in out.output
    assert json.loads(creds.read_text())["token"] == berth.api.token  # unchanged
    assert "server: 0.1.0" in berth("version").stdout


def test_apps_config_releases_rollback_scale(berth: Berth) -> None:
    assert "Created web-shop: http://web-shop.localhost" in berth("apps:create", "web-shop").stdout
    assert "web-shop" in berth("apps").stdout
    out = berth("config:set", "-a", "web-shop", "GREETING=hello world", "EQ=a=b").stdout
    assert "v2" in out
    assert berth("config:get", "GREETING", "-a", "web-shop").stdout == "hello world\n"
    assert berth("config:get", "EQ", "-a", "web-shop").stdout == "a=b\n"
    assert berth.json("config", "-a", "web-shop") == {"GREETING": "hello world", "EQ": "a=b"}
    assert "GREETING='hello world'" in berth("config", "-a", "web-shop", "--shell").stdout
    berth("config:unset", "EQ", "-a", "web-shop")
    table = berth("releases", "-a", "web-shop").stdout
    assert "Remove EQ config vars" in table
    assert "Set EQ, GREETING config vars" in table
    assert "rollback" not in table.lower()
    assert "Rollback to v2 on web-shop: v4" in berth("rollback", "v2", "-a", "web-shop").stdout
    assert berth.json("config", "-a", "web-shop") == {"GREETING": "hello world", "EQ": "a=b"}
    info = berth("releases:info", "-a", "web-shop").stdout
    assert "Rollback to v2" in info
    assert "GREETING: hello world" in info
    assert "Scaled web-shop: web=2" in berth("ps:scale", "web=2", "-a", "web-shop").stdout
    assert berth.json("apps:info", "-a", "web-shop")["formation"] == {"web": 2}  # type: ignore[index]


def test_app_from_the_git_remote(berth: Berth, tmp_path: Path) -> None:
    repo_dir = tmp_path / "code"
    repo_dir.mkdir()
    Repo.init(str(repo_dir)).close()
    os.chdir(repo_dir)
    out = berth("apps:create", "gitty").stdout
    assert f"Git remote berth added: {berth.api.url}/git/gitty.git" in out
    url = Repo(str(repo_dir)).get_config().get((b"remote", b"berth"), b"url").decode()
    assert url == f"{berth.api.url}/git/gitty.git"
    assert berth.api.token not in url
    (repo_dir / "sub").mkdir()
    os.chdir(repo_dir / "sub")
    berth("config:set", "FROM_REMOTE=1")
    assert berth.json("config") == {"FROM_REMOTE": "1"}
    assert "destroys gitty" in berth("apps:destroy", "gitty", ok=False).output
    assert "does not match" in berth("apps:destroy", "gitty", "--confirm", "gity", ok=False).output
    assert berth.json("config") == {"FROM_REMOTE": "1"}  # nothing destroyed
    done = berth("apps:destroy", "gitty", "--confirm", "gitty").stdout
    assert "removed git remote berth" in done
    assert "no app given" in berth("config", ok=False).output


def test_random_name_and_tokens(berth: Berth) -> None:
    created = berth.json("apps:create")
    assert isinstance(created, dict)
    assert created["git_remote"] is None  # not in a git repository
    out = berth("tokens:create", "-d", "ci").stdout
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("berth_")
    listing = berth("tokens").stdout
    assert "ci" in listing
    assert secret not in listing
    token_id = secret.split("_")[1]
    assert f"Revoked token {token_id}" in berth("tokens:revoke", token_id).stdout


def test_errors_are_one_line_with_a_non_zero_exit(berth: Berth) -> None:
    for args, message in [
        (["apps:info", "-a", "ghost"], "no app named ghost"),
        (["apps:create", "Bad_Name"], "invalid app name"),
        (["config:set", "-a", "ghost", "NOVALUE"], "expected KEY=VALUE"),
        (["ps:scale", "-a", "ghost", "web=lots"], "must be a number"),
        (["releases:info", "latest", "-a", "ghost"], "expected a release like v3"),
        (["tokens:revoke", "nope"], "no token with id nope"),
    ]:
        result = berth(*args, ok=False)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_the_installed_command_exits_non_zero(berth: Berth, tmp_path: Path) -> None:
    env = {**os.environ, "BERTH_URL": berth.api.url, "BERTH_TOKEN": berth.api.token}
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "apps:info", "-a", "ghost"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: no app named ghost"
    env["BERTH_TOKEN"] = ""
    env["XDG_CONFIG_HOME"] = str(tmp_path / "nowhere")
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "apps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "not logged in" in done.stderr


def test_deploy_and_ps(berth: Berth) -> None:
    berth("apps:create", "pics")
    assert (
        "Deployed pics:v1 to pics: v2" in berth("deploy", "--image", "pics:v1", "-a", "pics").stdout
    )
    out = berth("ps", "-a", "pics").stdout
    assert "=== pics processes (web=1)" in out
    assert "No processes running." in out
    assert (
        "invalid process type"
        in berth("deploy", "--image", "pics:v2", "-p", "Bad=x", "-a", "pics", ok=False).output
    )

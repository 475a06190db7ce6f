"""A git working copy for the `git push` tests: the real git binary, the `berth` remote that
`berth git:remote` sets (git gets the token from Berth's credential helper; neither the remote
URL nor the repository's config holds it), a HOME of its own, a fixed author and no prompts.
And `dockerfile_app`, the small Dockerfile app most push tests deploy.

Test code: no server part is imported; git and the CLI run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# git without the system's config, never asking, committing as one fixed author
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def isolated_env(url: str, token: str) -> dict[str, str]:
    """An environment with Berth's URL and token and this process's PATH, and nothing else
    of this process's environment."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BERTH_URL": url,
        "BERTH_TOKEN": token,
    }


def dockerfile_app(body: str, extra: str = "") -> dict[str, str]:
    """A Dockerfile app of the busybox test image whose httpd serves `body` on $PORT;
    `extra`: Dockerfile lines before its COPY."""
    return {
        "Dockerfile": f"FROM berth-test/busybox:1\n{extra}COPY index.html /www/index.html\n"
        'CMD httpd -f -p "$PORT" -h /www\n',
        "index.html": body + "\n",
    }


class Repo:
    """A new working copy at `path` (branch main) whose `berth` remote is `app`'s repository,
    set by running `berth git:remote -a APP` in it."""

    push_timeout: float | None = None
    """Seconds a push may take (None: no limit)."""

    def __init__(
        self,
        path: Path,
        app: str,
        env: Mapping[str, str],
        *,
        home: Path | None = None,
        remote_token: str | None = None,
    ) -> None:
        """`env`: the environment of git and the CLI, with BERTH_URL and BERTH_TOKEN; HOME
        and `GIT_ENV` are added, and XDG_CONFIG_HOME is HOME/.config unless `env` has one.
        `home`: an existing directory for HOME; by default a new one beside `path`
        (PATH-home). `remote_token`: the token `berth git:remote` runs with, when git is to
        push with another one (a bad one, say)."""
        self.path = path
        self.app = app
        if home is None:
            home = path.parent / f"{path.name}-home"
            home.mkdir()
        self.env = {"XDG_CONFIG_HOME": str(home / ".config"), **env, "HOME": str(home), **GIT_ENV}
        path.mkdir()
        self.git("init", "-q", "-b", "main")
        remote_env = self.env if remote_token is None else {**self.env, "BERTH_TOKEN": remote_token}
        remote = subprocess.run(
            [sys.executable, "-m", "berth.cli", "git:remote", "-a", app],
            cwd=path,
            env=remote_env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert remote.returncode == 0, remote.stderr

    def git(
        self, *args: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`git ARGS` in the working copy; `check`: assert it exits 0 (showing its stderr)."""
        done = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def commit(
        self, files: Mapping[str, str | bytes | None] | None = None, message: str = "change"
    ) -> str:
        """Writes `files` (name → text or bytes; None removes that file), commits everything,
        returns the commit."""
        for name, content in (files or {}).items():
            target = self.path / name
            if content is None:
                target.unlink(missing_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD").stdout.strip()

    def push(self, *refspecs: str) -> subprocess.CompletedProcess[str]:
        """`git push berth REFSPECS` (main by default), within `push_timeout`; whether it
        worked is for the test to check."""
        return self.git(
            "push", "berth", *(refspecs or ("main",)), check=False, timeout=self.push_timeout
        )

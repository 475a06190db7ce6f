"""The `berth` git remote of the repository in the current directory (dulwich; no git binary
needed): which app it names, and adding or removing it, with berth.cli.gitcredential as git's
credential helper for the Berth URL. Neither the URL nor the config ever carries the token."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.repo import Repo

REMOTE = "berth"
_APP_IN_URL = re.compile(r"/git/([a-z][a-z0-9-]{1,29})\.git/?$")


def remote_url(api_url: str, app: str) -> str:
    return f"{api_url.rstrip('/')}/git/{app}.git"


def _repo(path: Path | None = None) -> Repo | None:
    try:
        return Repo.discover(str(path or Path.cwd()))
    except NotGitRepository:
        return None


def app_from_remote(path: Path | None = None) -> str | None:
    repo = _repo(path)
    if repo is None:
        return None
    with repo:
        try:
            url = repo.get_config().get((b"remote", REMOTE.encode()), b"url").decode()
        except KeyError:
            return None
    match = _APP_IN_URL.search(url)
    return match.group(1) if match else None


def add_remote(api_url: str, app: str, path: Path | None = None) -> bool:
    """Point the `berth` remote at the app; False when not inside a git repository."""
    repo = _repo(path)
    if repo is None:
        return False
    with repo:
        config = repo.get_config()
        section = (b"remote", REMOTE.encode())
        config.set(section, b"url", remote_url(api_url, app).encode())
        config.set(section, b"fetch", f"+refs/heads/*:refs/remotes/{REMOTE}/*".encode())
        config.write_to_path()
    add_credential_helper(api_url, path)
    return True


def helper_command() -> str:
    """How git runs our credential helper: berth.cli.gitcredential with this very interpreter
    (no PATH needed; the module imports only the standard library, so it starts fast)."""
    return f"!{shlex.quote(sys.executable)} -m berth.cli.gitcredential"


def add_credential_helper(api_url: str, path: Path | None = None) -> bool:
    """Make git ask berth.cli.gitcredential for the Berth URL's password (the token), in this
    repository's config: `credential.<url>.helper` is reset (an empty value drops helpers
    configured for that URL before it) and set to ours. The token itself is never written."""
    repo = _repo(path)
    if repo is None:
        return False
    with repo:
        config = repo.get_config()
        section = (b"credential", api_url.rstrip("/").encode())
        config.set(section, b"helper", b"")
        config.add(section, b"helper", helper_command().encode())
        config.set(section, b"username", b"berth")
        config.write_to_path()
    return True


def remove_remote_if(app: str, path: Path | None = None) -> bool:
    """Remove the `berth` remote if it points at this app."""
    repo = _repo(path)
    if repo is None or app_from_remote(path) != app:
        return False
    with repo:
        config = repo.get_config()
        del config[(b"remote", REMOTE.encode())]
        config.write_to_path()
    return True

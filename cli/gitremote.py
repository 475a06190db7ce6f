"""The `berth` git remote of the repository in the current directory (dulwich; no git binary
needed): which app it names, and adding or removing it. The URL never carries the token."""

from __future__ import annotations

import re
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

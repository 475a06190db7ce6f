"""git's credential helper for the Berth URL, started by git on every push (`get`, then `store`
or `erase`): `python -m berth.cli.gitcredential get`. It answers `username=berth` and the
logged-in token for the Berth URL only, and nothing for any other host (git then asks its other
helpers, or prompts). Standard library only, so that it starts in a few tens of milliseconds:
git waits for it before each push's first authenticated request."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit


def credentials_path() -> Path:
    """~/.config/berth/credentials (XDG_CONFIG_HOME honoured), written by `berth login`."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "berth" / "credentials"


def stored_credentials() -> dict[str, str]:
    """What `berth login` stored ({} when nothing is); ValueError when the file is not JSON."""
    path = credentials_path()
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    if not isinstance(found, dict):
        raise ValueError(f"{path} holds no JSON object")
    return {k: v for k, v in found.items() if isinstance(v, str)}


def parse_request(text: str) -> dict[str, str]:
    """git's credential request: `key=value` lines up to a blank line."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def answer(request: dict[str, str], berth_url: str, token: str) -> str:
    """`username=berth` + `password=<token>` when git asks for the Berth URL, else nothing."""
    if "url" in request:
        parts = urlsplit(request["url"])
        request = {**request, "protocol": parts.scheme, "host": parts.netloc}
    target = urlsplit(berth_url)
    if request.get("protocol") != target.scheme or request.get("host") != target.netloc:
        return ""
    return f"username=berth\npassword={token}\n"


def respond(operation: str, request_text: str) -> str:
    """The helper's whole answer (`store` and `erase` are no-ops: the CLI's login owns the
    token). Not logged in, or an unreadable credentials file: no answer."""
    if operation != "get":
        return ""
    try:
        stored = stored_credentials()
    except (OSError, ValueError):
        return ""
    url = os.environ.get("BERTH_URL") or stored.get("url")
    token = os.environ.get("BERTH_TOKEN") or stored.get("token")
    if not url or not token:
        return ""
    return answer(parse_request(request_text), url.rstrip("/"), token)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m berth.cli.gitcredential get|store|erase\n")
        return 2
    sys.stdout.write(respond(argv[0], sys.stdin.read()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

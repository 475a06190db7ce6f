"""Artifacts every agent can run: the image registry's vocabulary (docs/architecture.md,
"Artifacts").

In Mesos mode (or whenever `--registry HOST:PORT` is set) every image a push builds is pushed
to a Docker registry (Debian's `docker-registry`, distribution 2.8) and the release names it
there, pinned by digest; an executor whose engine lacks the image pulls it first. This module
holds the pure parts and the registry's files:

- `Reference` / `parse_reference`: Docker image references (`host:port/berth/app-x:tag`,
  `…@sha256:…`), split the way the Engine API's pull wants them (`fromImage` + `tag`);
- `pinned`: the reference an agent runs, `host:port/repo@sha256:…` (exactly what was built);
- `auth_header`: the Engine API's `X-Registry-Auth` value;
- `Credentials` / `load_or_create_credentials`: the registry's one user, `berth`, with a
  random password made on first need into `DATA_DIR/registry/credentials.json` (0600, in a
  0700 dir, next to `config.key`; copy it to every host that runs the API or the framework,
  like that key). There is no default password;
- `htpasswd_line` (Debian's `htpasswd -B`, the password on its stdin, never in argv) and
  `render_config` (the registry's config: JSON, which is YAML) and `prepare`, which writes
  both for `berth registry` (framework/registryd.py).

The executor imports this module for `parse_reference`, `pinned` and `auth_header`, so it
imports nothing heavy at module level (no subprocess, secrets or hashlib: see "Why the
executor has its own HTTP client"). Imports only berth.framework.errors.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from berth.framework.errors import BerthError, Invalid

DEFAULT_PORT = 7072  # beside the API's 7070 and logd's 7071; Debian's own registry takes 5000
USERNAME = "berth"
DIR = "registry"
CREDENTIALS = "credentials.json"
BCRYPT_COST = 10

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_REFERENCE = re.compile(
    rf"^(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_HOST_PORT = re.compile(rf"^{_DOMAIN}$")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


class RegistryError(BerthError):
    """The registry could not be prepared, reached, or pushed to."""

    status = 502
    code = "registry"


@dataclass(frozen=True, slots=True)
class Reference:
    """A Docker image reference. `domain` is "" for Docker Hub-style names (`busybox`,
    `berth/app-x`): a first component counts as a registry host only when it has a `.` or
    a `:` or is `localhost`, as Docker decides."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """`host:port/berth/app-x`: what the Engine API's pull takes as `fromImage`."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def pull_tag(self) -> str:
        """The pull's `tag` parameter: the digest if there is one, else the tag, else
        `latest`. Never empty: an empty tag makes the engine pull every tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """`[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]` → a Reference. Invalid names what is wrong."""
    if not isinstance(text, str) or not text or len(text) > 512:
        raise Invalid(f"image reference {str(text)[:80]!r} is empty or too long")
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise Invalid(f"image reference {text[:200]!r} is not a valid Docker reference")
    domain, path = match.group("domain") or "", match.group("path")
    if domain and not ("." in domain or ":" in domain or domain == "localhost"):
        path, domain = f"{domain}/{path}", ""  # `berth/app-x`: a path, not a host
        if not _PATH.fullmatch(path):
            raise Invalid(f"image reference {text[:200]!r} is not a valid Docker reference")
    return Reference(domain, path, match.group("tag") or "", match.group("digest") or "")


def pinned(ref: str, digest: str | None) -> str:
    """What an agent runs: `repo@digest` when the digest is known (the tag is dropped, so the
    engine resolves nothing by tag), else `ref` as it is."""
    if not digest:
        return ref
    return str(replace(parse_reference(ref), tag="", digest=digest))


def parse_registry(value: str) -> str:
    """`--registry HOST:PORT` checked: a host (name, IPv4 or [IPv6]) with a port, no scheme
    and no path. Returns it as given; Invalid otherwise."""
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or not _HOST_PORT.fullmatch(value)
    ):
        raise Invalid(
            f"--registry {value[:100]!r}: expected HOST:PORT, like 10.0.0.5:{DEFAULT_PORT}"
        )
    return value


def under(registry: str, image: str) -> bool:
    """Whether `image` lives in the registry at `registry` (HOST:PORT)."""
    try:
        return parse_reference(image).domain == registry
    except Invalid:
        return False


def auth_header(registry: str, username: str, password: str) -> str:
    """The Engine API's X-Registry-Auth: base64url of the JSON auth config."""
    body = {"username": username, "password": password, "serveraddress": registry}
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


# -- the registry's files (server side) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(username={self.username!r}, password=…)"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    """Replace `path` with `text`, 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_or_create_credentials(data_dir: Path) -> Credentials:
    """The registry's user and password, made on first need (32 random hex digits; several
    processes may race: exactly one file wins and every one reads it)."""
    folder = _private_dir(data_dir / DIR)
    path = folder / CREDENTIALS
    if not path.exists():
        text = json.dumps({"username": USERNAME, "password": os.urandom(16).hex()})
        tmp = folder / f".{CREDENTIALS}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # fails if another process made it first: theirs wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        username, password = str(raw["username"]), str(raw["password"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RegistryError(
            f"{path} is unreadable ({type(e).__name__}); remove it to make a new one"
        ) from None
    if not username or not password:
        raise RegistryError(f"{path} has an empty user or password; remove it to make a new one")
    return Credentials(username, password)


def htpasswd_line(credentials: Credentials, cost: int = BCRYPT_COST) -> str:
    """`user:$2y$…`, the bcrypt line distribution's htpasswd auth reads, made by Debian's
    `htpasswd` (apache2-utils) with the password on stdin."""
    import shutil
    import subprocess

    program = shutil.which("htpasswd")
    if program is None:
        raise RegistryError("htpasswd is not installed (Debian's apache2-utils)")
    done = subprocess.run(
        [program, "-n", "-i", "-B", "-C", str(cost), credentials.username],
        input=credentials.password,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = done.stdout.strip()
    if done.returncode != 0 or not line.startswith(f"{credentials.username}:$2"):
        raise RegistryError(f"htpasswd failed: {done.stderr.strip()[:300] or done.returncode}")
    return line


def render_config(listen: str, storage: Path, htpasswd: Path, secret: str) -> str:
    """The registry's configuration (distribution 2.8), as JSON (a YAML subset): filesystem
    storage, the listen address, htpasswd basic auth, JSON logs."""
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "json", "fields": {"service": "berth-registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {
            "addr": listen,
            "secret": secret,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "auth": {"htpasswd": {"realm": "berth", "path": str(htpasswd)}},
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def prepare(data_dir: Path, listen: str) -> Path:
    """Writes `DATA_DIR/registry/{htpasswd,config.yml}` (0600; storage in `storage/`, 0700)
    for a registry listening on `listen` ([HOST]:PORT); returns the config's path. The
    htpasswd line and the HTTP secret are made anew each time; the password is kept."""
    folder = _private_dir(data_dir / DIR)
    credentials = load_or_create_credentials(data_dir)
    storage = _private_dir(folder / "storage")
    htpasswd = folder / "htpasswd"
    _write_private(htpasswd, htpasswd_line(credentials) + "\n")
    config = folder / "config.yml"
    _write_private(config, render_config(listen, storage, htpasswd, os.urandom(24).hex()))
    return config

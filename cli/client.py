"""Where the API is and how to talk to it: credentials (~/.config/berth/credentials, 0600;
BERTH_URL and BERTH_TOKEN override) and an HTTP client that turns every failure into a
one-line click error."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import requests

from berth.cli.gitcredential import credentials_path, stored_credentials

TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str


def save_credentials(creds: Credentials) -> Path:
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": creds.url, "token": creds.token}, f)
    tmp.replace(path)
    return path


def load_credentials() -> Credentials:
    try:
        stored = stored_credentials()
    except ValueError:
        raise click.ClickException(
            f"{credentials_path()} is not valid JSON: run `berth login` again"
        ) from None
    url = os.environ.get("BERTH_URL") or stored.get("url")
    token = os.environ.get("BERTH_TOKEN") or stored.get("token")
    if not url or not token:
        raise click.ClickException(
            "not logged in: run `berth login URL` (or set BERTH_URL and BERTH_TOKEN)"
        )
    return Credentials(url=url.rstrip("/"), token=token)


class ApiError(click.ClickException):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    def __init__(self, creds: Credentials) -> None:
        self.url = creds.url
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {creds.token}"
        self._session.headers["User-Agent"] = "berth-cli"

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        try:
            response = self._session.request(
                method, self.url + path, json=body, params=params or None, timeout=TIMEOUT
            )
        except requests.RequestException as exc:
            raise ApiError(f"cannot reach Berth at {self.url}: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and "message" in error:
                raise ApiError(str(error["message"]), response.status_code)
            raise ApiError(f"{method} {path}: HTTP {response.status_code}", response.status_code)
        return data

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, **params)

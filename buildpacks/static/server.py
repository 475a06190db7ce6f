"""Berth's static file server: the web process of a static site (the `static` buildpack copies
it into the app as /app/.berth/static.py; the run image's Python runs it).

It serves the site's root on $PORT with Python's standard library and honours a subset of
Heroku's static.json: `root` (default `public_html/` if it exists, else the app's top
directory), `clean_urls` (`/about` serves `about.html`), `error_page` (served with 404), and
`headers` (`{"/glob": {"Header": "value"}}`). Names starting with a dot are never served, nor
anything outside the root (symlinks included). `--check` validates static.json, `--root`
prints the root.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

APP = Path(os.environ.get("BERTH_STATIC_APP", "/app"))


def load_config(app: Path) -> dict[str, Any]:
    path = app / "static.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SystemExit(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SystemExit("expected a JSON object")
    if "root" in data and not isinstance(data["root"], str):
        raise SystemExit("root must be a string")
    if "clean_urls" in data and not isinstance(data["clean_urls"], bool):
        raise SystemExit("clean_urls must be true or false")
    if "error_page" in data and not isinstance(data["error_page"], str):
        raise SystemExit("error_page must be a string")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
        for v in headers.values()
    ):
        raise SystemExit('headers must look like {"/path/*": {"Header": "value"}}')
    return data


def site_root(app: Path, config: dict[str, Any]) -> Path:
    if "root" in config:
        root = (app / str(config["root"])).resolve()
    elif (app / "public_html").is_dir():
        root = (app / "public_html").resolve()
    else:
        root = app.resolve()
    if root != app.resolve() and app.resolve() not in root.parents:
        raise SystemExit(f"root {config.get('root')!r} is outside the app")
    return root


class Handler(http.server.SimpleHTTPRequestHandler):
    root: Path
    config: dict[str, Any]
    server_version = "berth-static"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(self.root), **kwargs)

    def _visible(self, url_path: str) -> Path | None:
        """The file a URL names, if it may be served."""
        parts = [p for p in urllib.parse.unquote(url_path).split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None
        target = self.root.joinpath(*parts).resolve()
        if target != self.root and self.root not in target.parents:
            return None
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() and self.config.get("clean_urls"):
            target = target.with_name(target.name + ".html")
        return target if target.is_file() else None

    def send_head(self) -> Any:
        path = urllib.parse.urlsplit(self.path).path
        target = self._visible(path)
        if target is None:
            return self._not_found()
        self.path = "/" + str(target.relative_to(self.root))
        return super().send_head()

    def _not_found(self) -> Any:
        page = self.config.get("error_page")
        target = self._visible("/" + page) if page else None
        if target is None:
            self.send_error(404)
            return None
        body = target.read_bytes()
        self.send_response(404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return None

    def end_headers(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        for pattern, values in (self.config.get("headers") or {}).items():
            if fnmatch.fnmatchcase(path, pattern):
                for name, value in values.items():
                    self.send_header(name, value)
        super().end_headers()

    def list_directory(self, path: str | os.PathLike[str]) -> Any:
        self.send_error(404)
        return None


def main(argv: list[str]) -> None:
    config = load_config(APP)
    root = site_root(APP, config)
    if "--check" in argv:
        return
    if "--root" in argv:
        print(os.path.relpath(root, APP.resolve()) + "/")
        return
    Handler.root = root
    Handler.config = config
    port = int(os.environ.get("PORT", "5000"))
    server = http.server.ThreadingHTTPServer(("", port), Handler)
    print(f"serving {root} on port {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])

"""A WSGI app served by gunicorn (a PyPI dependency): its body says how it was built."""

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from wsgiref.types import StartResponse, WSGIEnvironment

import gunicorn

HERE = Path(__file__).parent


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    uid, source, flavour = (HERE / "build-info.txt").read_text().split()
    left_out = not (HERE / "docs").exists() and not (HERE / "mockup.psd").exists()
    body = (
        f"python: gunicorn {gunicorn.__version__}, built as uid {uid} at {source} with flavour"
        f" {flavour}, {os.environ.get('GREETING')},"
        f" slugignore {'ok' if left_out else 'broken'}, dyno {os.environ.get('DYNO')},"
        f" pip {'in the slug' if importlib.util.find_spec('pip') else 'left out'}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

"""Checks walked from Flask's own route table, so a route added later is checked too:
every route but /healthz refuses requests without a valid token, and the OpenAPI document
describes exactly the routes that exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from openapi_spec_validator import validate

from berth.api.app import create_app
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.settings import make_settings
from berth.framework.state import Store
from tests.conftest import Api
from tests.support.services import ZooKeeper

PUBLIC = {"/healthz"}


@pytest.fixture
def flask_app(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Flask]:
    settings = make_settings(tmp_path, f"{zookeeper.hosts}{chroot}", ":7070", "localhost")
    store = Store(settings.zk_hosts, settings.zk_chroot, Sealer(load_or_create_key(tmp_path)))
    store.start()
    yield create_app(store, settings)
    store.stop()


def routes(app: Flask) -> Iterator[tuple[str, str]]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield rule.rule, method


def test_every_route_but_healthz_needs_a_token(flask_app: Flask) -> None:
    client = flask_app.test_client()
    walked = 0
    websockets = {r.rule for r in flask_app.url_map.iter_rules() if r.websocket}
    for rule, method in routes(flask_app):
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x1", rule)
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"} if rule in websockets else {}
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": "Bearer berth_000000000000_" + "A" * 43},
        ):
            response = client.open(path, method=method, headers={**headers, **upgrade}, json={})
            if rule in PUBLIC:
                assert response.status_code == 200, (method, rule)
            else:
                assert response.status_code == 401, (method, rule, response.status_code)
                assert (response.json or {})["error"]["code"] == "unauthorized"
            walked += 1
    assert walked > 30


def test_openapi_document_matches_the_routes(flask_app: Flask, api: Api) -> None:
    served = api.call("GET", "/v1/openapi.json")
    assert served.status_code == 200
    document = served.json()
    validate(document)
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    actual = {(re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", r), m) for r, m in routes(flask_app)}
    assert documented == actual

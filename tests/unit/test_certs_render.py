"""The HTTPS parts of the rendered HAProxy config (tests/golden/haproxy-https.cfg): the https
frontend with the crt-list and ALPN, the very same request rules as the http frontend but for
X-Forwarded-Proto, and the ACME challenge answer in the http frontend before any routing.
Tests marked `haproxy` check the config, with real certificate files, with `haproxy -c`.

To accept a deliberate change: BERTH_UPDATE_GOLDEN=1 pytest <this file>, then review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.framework.certs import Certificate, check_pair
from berth.framework.errors import Invalid
from berth.router.haproxy import RouterConfig, render, validate, write_atomically
from berth.router.tls import TlsFiles, render_acme_map
from tests.support.certs import TestCA
from tests.unit.test_certs import NOW
from tests.unit.test_router_haproxy_render import (
    compare_with_golden,
    golden_table,
    haproxy_binary,  # noqa: F401 - the fixture
    write_all,
)

HTTPS = RouterConfig(
    http_addr="0.0.0.0:80", https_addr="0.0.0.0:443", run_dir=Path("/run/berth/router")
)


def frontend(text: str, name: str) -> list[str]:
    section = text.split(f"\nfrontend {name}\n", 1)[1].split("\n\n", 1)[0]
    return section.splitlines()


def test_the_https_config_matches_the_golden_file() -> None:
    compare_with_golden("haproxy-https.cfg", render(golden_table(), HTTPS))


def test_without_https_nothing_about_tls_is_rendered() -> None:
    text = render(golden_table(), RouterConfig(http_addr="0.0.0.0:80", run_dir=Path("/r")))
    assert "ssl" not in text
    assert "acme" not in text
    assert "frontend https" not in text


def test_both_frontends_share_their_rules_but_the_protocol() -> None:
    text = render(golden_table(), HTTPS)
    http, https = frontend(text, "http"), frontend(text, "https")
    assert https[0] == (
        "    bind 0.0.0.0:443 ssl crt-list /run/berth/router/certs.list alpn h2,http/1.1"
    )
    acme = [line for line in http if "acme" in line]
    assert len(acme) == 2
    rules_http = [line for line in http[1:] if line not in acme]
    assert [line.replace("Proto http", "Proto https") for line in rules_http] == https[1:]
    # the challenge answer comes before any routing
    assert http.index(acme[1]) < next(i for i, line in enumerate(http) if "txn.backend" in line)


def test_https_addr_is_checked() -> None:
    with pytest.raises(Invalid, match="must differ"):
        RouterConfig(http_addr="0.0.0.0:80", https_addr="0.0.0.0:80", run_dir=Path("/r"))
    with pytest.raises(Invalid, match="HOST:PORT"):
        RouterConfig(http_addr="0.0.0.0:80", https_addr="443", run_dir=Path("/r"))


@pytest.mark.haproxy
def test_the_https_config_with_real_certificates_passes_haproxy_check(
    haproxy_binary: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    ca = TestCA()
    pair = ca.issue("www.blog.test", "*.blog.test")
    info = check_pair(pair.cert, pair.key, NOW)
    cert = Certificate(
        name=info.hostnames[0],
        app="blog",
        hostnames=info.hostnames,
        issuer=info.issuer,
        not_after=info.not_after,
        fingerprint=info.fingerprint,
        source="manual",
        created_at="2026-01-01T00:00:00.000000Z",
        cert_pem=pair.cert,
        key_pem=pair.key,
    )
    config = RouterConfig(http_addr="127.0.0.1:8080", https_addr="127.0.0.1:8443", run_dir=tmp_path)
    table = golden_table("localhost")
    assert TlsFiles(tmp_path).write([cert], table)
    assert len((tmp_path / "certs.list").read_text().splitlines()) == 2
    write_atomically(config.acme_map, render_acme_map({"tok": "tok.thumb"}))
    write_all(table, config)
    validate(config.config_path, haproxy_binary, strict=True)  # not even a warning

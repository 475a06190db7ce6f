"""Certificates as Berth checks and serves them: framework/certs.py (check_pair, Certificate),
router/tls.py (which names are served, the crt-list, the ACME map, the files) and the
rules router/acme.py decides with. Pure logic and files in tmp_path; certificates are made
here with `cryptography`."""

from __future__ import annotations

import stat
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from berth.framework.certs import (
    MAX_CERT_BYTES,
    Certificate,
    check_pair,
    normalise_pem,
    parse_time,
    usable,
)
from berth.framework.errors import Invalid
from berth.framework.supervisor import component_args, router_tls_args
from berth.router.acme import needs_certificate, wants_certificate
from berth.router.table import build
from berth.router.tls import (
    DEFAULT_CERT,
    TlsFiles,
    cert_file_name,
    ensure_default_certificate,
    render_acme_map,
    render_crt_list,
    served,
)
from tests.support.certs import TestCA, key_pem

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def record(
    name: str, app: str, *hostnames: str, source: str = "manual", days: float = 60
) -> Certificate:
    return Certificate(
        name=name,
        app=app,
        hostnames=hostnames or (name,),
        issuer="Berth Test CA",
        not_after=(NOW + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        fingerprint="00",
        source=source,
        created_at="2026-01-01T00:00:00.000000Z",
        cert_pem=f"CERT {name}\n",
        key_pem=f"KEY {name}\n",
    )


# -- check_pair ---------------------------------------------------------------------------------


def test_a_good_pair_is_read(ca: TestCA) -> None:
    pair = ca.issue("www.example.com", "Example.COM", "*.shop.example.com")
    info = check_pair(pair.cert, pair.key, NOW)
    assert info.hostnames == ("www.example.com", "example.com", "*.shop.example.com")
    assert info.issuer == "Berth Test CA"
    assert parse_time(info.not_after) == pair.leaf.not_valid_after_utc.replace(microsecond=0)
    assert len(info.fingerprint) == 64


def test_an_rsa_pair_is_read(ca: TestCA) -> None:
    pair = ca.issue("rsa.example.com", key=rsa.generate_private_key(65537, 2048))
    assert check_pair(pair.cert, pair.key, NOW).hostnames == ("rsa.example.com",)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatched", "does not match the certificate"),
        ("expired", "expired on"),
        ("future", "not valid before"),
        ("no_san", "no subjectAltName"),
        ("not_pem", "not a PEM certificate"),
        ("key_not_pem", "not a PEM private key"),
        ("encrypted", "encrypted"),
        ("weak_rsa", "at least 2048"),
        ("too_big", "the limit is"),
        ("key_in_cert", "holds a private key"),
        ("bad_name", "the certificate's name"),
        ("one_label", "the certificate's name"),
    ],
)
def test_bad_input_is_refused_with_what_is_wrong(ca: TestCA, case: str, message: str) -> None:
    good = ca.issue("www.example.com")
    cert, key = good.cert, good.key
    if case == "mismatched":
        key = ca.issue("www.example.com").key
    elif case == "expired":
        pair = ca.issue("www.example.com", start=NOW - timedelta(days=40), days=30)
        cert, key = pair.cert, pair.key
    elif case == "future":
        pair = ca.issue("www.example.com", start=NOW + timedelta(days=2))
        cert, key = pair.cert, pair.key
    elif case == "no_san":
        pair = ca.issue("www.example.com", san=False)
        cert, key = pair.cert, pair.key
    elif case == "not_pem":
        cert = "hello"
    elif case == "key_not_pem":
        key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "encrypted":
        loaded = serialization.load_pem_private_key(key.encode(), None)
        key = loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ).decode()
    elif case == "weak_rsa":
        pair = ca.issue("www.example.com", key=rsa.generate_private_key(65537, 1024))  # noqa: S505
        cert, key = pair.cert, pair.key
    elif case == "too_big":
        cert = cert + "#" * MAX_CERT_BYTES
    elif case == "key_in_cert":
        cert = cert + key
    elif case == "bad_name":
        pair = ca.issue("a*b.example.com")
        cert, key = pair.cert, pair.key
    elif case == "one_label":
        pair = ca.issue("localhost")
        cert, key = pair.cert, pair.key
    with pytest.raises(Invalid) as raised:
        check_pair(cert, key, NOW)
    assert message in raised.value.message
    assert good.key.splitlines()[1] not in raised.value.message  # never key material


def test_normalise_keeps_exactly_the_pem_blocks(ca: TestCA) -> None:
    pair = ca.issue("www.example.com")
    cert, key = normalise_pem("junk before\n" + pair.cert + "junk after\n", pair.key)
    assert cert.count("BEGIN CERTIFICATE") == 2
    assert "junk" not in cert
    assert x509.load_pem_x509_certificates(cert.encode())[0] == pair.leaf
    assert key.startswith("-----BEGIN PRIVATE KEY-----")


def test_covers_exact_and_one_label_under_a_wildcard() -> None:
    cert = record("*.example.com", "a", "*.example.com", "example.com")
    assert cert.covers("www.example.com")
    assert cert.covers("example.com")
    assert cert.covers("*.example.com")
    assert not cert.covers("a.b.example.com")
    assert not cert.covers("example.org")
    assert "key" not in cert.to_json()
    assert "cert" not in str(cert.to_json())


# -- which names the router serves ------------------------------------------------------------


def test_only_names_that_route_to_the_certificates_app_are_served() -> None:
    table = build(
        ["blog", "shop"],
        [],
        {"www.blog.test": "blog", "*.blog.test": "blog", "shop.test": "shop"},
        "apps.example.com",
    )
    certs = [
        record("www.blog.test", "blog", "www.blog.test", "gone.blog.test"),
        record("*.blog.test", "blog"),
        record("shop.test", "blog"),  # the domain is another app's now
        record("blog.apps.example.com", "blog"),
        record("old.test", "shop"),  # a domain removed from the app
    ]
    result = {cert.name: names for cert, names in served(certs, table)}
    assert result == {
        "*.blog.test": ("*.blog.test",),
        "blog.apps.example.com": ("blog.apps.example.com",),
        "www.blog.test": ("www.blog.test",),
    }


def test_crt_list_has_the_default_certificate_first(tmp_path: Path) -> None:
    table = build(["blog"], [], {"*.blog.test": "blog", "www.blog.test": "blog"}, "x.test")
    entries = served([record("www.blog.test", "blog"), record("*.blog.test", "blog")], table)
    text = render_crt_list(tmp_path, entries)
    lines = text.splitlines()
    assert lines[0] == f"{tmp_path / DEFAULT_CERT}"
    assert lines[1].startswith(f"{tmp_path}/_wildcard_.blog.test.")
    assert lines[1].endswith(".pem *.blog.test")
    assert lines[2].endswith(".pem www.blog.test")


def test_a_renewed_certificate_gets_a_new_file_name() -> None:
    old = record("www.blog.test", "blog")
    new = Certificate(**{**asdict(old), "cert_pem": "RENEWED"})
    assert cert_file_name(old) != cert_file_name(new)


def test_acme_map_lists_only_tokens_that_are_safe_to_map() -> None:
    text = render_acme_map(
        {"tok-EN_1": "tok-EN_1.thumb", "bad token": "x.y", "ok": "has space.y", "t2": "t2.a"}
    )
    assert text == "t2 t2.a\ntok-EN_1 tok-EN_1.thumb\n"


def real(ca: TestCA, name: str, app: str) -> Certificate:
    pair = ca.issue(name)
    return Certificate(**{**asdict(record(name, app)), "cert_pem": pair.cert, "key_pem": pair.key})


def test_files_are_private_and_rewritten_only_on_change(tmp_path: Path, ca: TestCA) -> None:
    table = build(["blog"], [], {"www.blog.test": "blog"}, "x.test")
    files = TlsFiles(tmp_path)
    cert = real(ca, "www.blog.test", "blog")
    assert files.write([cert], table) is True
    pem = tmp_path / "certs" / cert_file_name(cert)
    assert pem.read_text() == cert.cert_pem + cert.key_pem
    for path in (pem, tmp_path / "certs" / DEFAULT_CERT, tmp_path / "certs.list"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files.write([cert], table) is False  # nothing changed: no reload
    assert files.write([], table) is True  # removed: the list changes, the file goes
    assert not pem.exists()
    assert (tmp_path / "certs" / DEFAULT_CERT).exists()


def test_a_certificate_haproxy_could_not_load_is_left_out(tmp_path: Path, ca: TestCA) -> None:
    """One bad record must not make every reload fail: it is skipped, the others served."""
    table = build(["blog"], [], {"www.blog.test": "blog", "api.blog.test": "blog"}, "x.test")
    good = real(ca, "www.blog.test", "blog")
    wrong_key = Certificate(
        **{**asdict(real(ca, "api.blog.test", "blog")), "key_pem": ca.issue("x.test").key}
    )
    assert usable(good.cert_pem, good.key_pem)
    assert not usable(wrong_key.cert_pem, wrong_key.key_pem)
    assert not usable("CERT", "KEY")
    TlsFiles(tmp_path).write([good, wrong_key], table)
    listed = (tmp_path / "certs.list").read_text()
    assert "www.blog.test" in listed
    assert "api.blog.test" not in listed
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == sorted(
        [DEFAULT_CERT, cert_file_name(good)]
    )


def test_the_default_certificate_is_self_signed_and_made_once(tmp_path: Path) -> None:
    path = ensure_default_certificate(tmp_path)
    data = path.read_bytes()
    cert = x509.load_pem_x509_certificate(data)
    key = serialization.load_pem_private_key(data, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert cert.issuer == cert.subject
    assert ensure_default_certificate(tmp_path).read_bytes() == data
    other = ensure_default_certificate(tmp_path / "other")
    assert other.read_bytes() != data  # generated per run directory, never shared


# -- what ACME is asked for ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostname", "wanted"),
    [
        ("www.example.com", True),
        ("shop.test", True),
        ("*.example.com", False),
        ("localhost", False),
        ("app.localhost", False),
        ("printer.local", False),
        ("db.internal", False),
        ("x.invalid", False),
        ("blog.apps.example.org", False),  # under the Berth's own domain
    ],
)
def test_which_domains_get_acme_certificates(hostname: str, wanted: bool) -> None:
    assert wants_certificate(hostname, "apps.example.org") is wanted


def test_a_certificate_is_needed_when_none_covers_or_all_expire_soon() -> None:
    month = timedelta(days=30)
    assert needs_certificate("www.a.test", "a", [], NOW, month)
    assert not needs_certificate("www.a.test", "a", [record("www.a.test", "a")], NOW, month)
    assert needs_certificate("www.a.test", "a", [record("www.a.test", "a", days=20)], NOW, month)
    assert needs_certificate("www.a.test", "a", [record("www.a.test", "b")], NOW, month)
    wildcard = record("*.a.test", "a")
    assert not needs_certificate("www.a.test", "a", [wildcard], NOW, month)


def test_key_pem_helper_round_trips() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert serialization.load_pem_private_key(key_pem(key).encode(), None).public_key() == (
        key.public_key()
    )


def test_berth_server_hands_its_tls_flags_to_the_router() -> None:
    assert router_tls_args(None, None, None, None, None) == ()
    args = router_tls_args("0.0.0.0:443", False, "https://ca.test/dir", "ops@a.test", "/ca.pem")
    assert args == (
        "--https-addr=0.0.0.0:443",
        "--no-acme",
        "--acme-directory=https://ca.test/dir",
        "--acme-email=ops@a.test",
        "--acme-ca-bundle=/ca.pem",
    )
    routed = component_args("router", "local", ":80", router_tls=args)
    assert routed[-5:] == list(args)
    assert "--https-addr=0.0.0.0:443" not in component_args("api", "local", ":80")

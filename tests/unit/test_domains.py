"""Custom domain names: what validate_domain accepts, how it normalises, and what it says
about what it refuses."""

from __future__ import annotations

import pytest

from berth.framework.errors import Invalid
from berth.framework.model import MAX_DOMAIN_CHARS, Domain, validate_domain

LABEL_63 = "a" * 63


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("example.com", "example.com"),
        ("www.example.com", "www.example.com"),
        ("WWW.Example.COM", "www.example.com"),
        ("www.example.com.", "www.example.com"),  # one trailing dot: the FQDN form, removed
        ("a.b", "a.b"),
        ("1.example.com", "1.example.com"),
        ("0day.io", "0day.io"),
        ("my-shop.co.uk", "my-shop.co.uk"),
        ("a--b.example.com", "a--b.example.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("shop.xn--p1ai", "shop.xn--p1ai"),
        ("*.example.com", "*.example.com"),
        ("*.Apps.Example.com.", "*.apps.example.com"),
        ("*.co.uk", "*.co.uk"),  # two labels after the *: public suffixes are not known here
        (f"{LABEL_63}.example.com", f"{LABEL_63}.example.com"),
        ("web.123.example", "web.123.example"),
    ],
)
def test_good_domains(given: str, expected: str) -> None:
    assert validate_domain(given) == expected


def test_the_longest_name_allowed() -> None:
    name = ".".join([LABEL_63, LABEL_63, LABEL_63, "a" * 61])
    assert len(name) == MAX_DOMAIN_CHARS
    assert validate_domain(name) == name
    assert validate_domain(name + ".") == name
    with pytest.raises(Invalid, match=f"254 characters; the limit is {MAX_DOMAIN_CHARS}"):
        validate_domain("b" + name)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "empty"),
        ("localhost", "at least two labels"),
        ("com.", "at least two labels"),
        ("https://www.example.com", "without a scheme"),
        ("http://example.com/", "without a scheme"),
        ("example.com/path", "without a path"),
        ("example.com:8080", "without a port"),
        ("www.example.com..", "empty label"),
        (".example.com", "empty label"),
        ("www..example.com", "empty label"),
        ("*", "two labels after the *"),
        ("*.com", "two labels after the *"),
        ("*.", "two labels after the *"),
        ("a*.example.com", "whole leftmost label"),
        ("*a.example.com", "whole leftmost label"),
        ("www.*.example.com", "whole leftmost label"),
        ("*.*.example.com", "whole leftmost label"),
        ("**.example.com", "whole leftmost label"),
        ("-www.example.com", "start or end with a dash"),
        ("www-.example.com", "start or end with a dash"),
        ("www.example.com-", "start or end with a dash"),
        ("under_score.example.com", "'_' are not allowed"),
        ("with space.example.com", "' ' are not allowed"),
        (" example.com", "' ' are not allowed"),
        ("user@example.com", "'@' are not allowed"),
        ("exa!mple.com", "'!' are not allowed"),
        (f"{LABEL_63}a.example.com", "label of 64 characters; the limit is 63"),
        ("1.2.3.4", "not an IP"),
        ("10.0.0.1.", "not an IP"),
        ("[::1]", "IP address"),
        ("bücher.de", "punycode form (xn--bcher-kva.de)"),
        ("*.bücher.de", "punycode form (*.xn--bcher-kva.de)"),
        ("пример.рф", "xn--"),
    ],
)
def test_bad_domains(given: str, message: str) -> None:
    with pytest.raises(Invalid, match="hostname") as caught:
        validate_domain(given)
    assert message in caught.value.message


@pytest.mark.parametrize("given", [None, 7, ["example.com"], {"hostname": "x.com"}])
def test_a_domain_must_be_a_string(given: object) -> None:
    with pytest.raises(Invalid, match="must be a string"):
        validate_domain(given)


def test_long_input_is_not_echoed_whole() -> None:
    with pytest.raises(Invalid) as caught:
        validate_domain("x" * 5000 + "/")
    assert len(caught.value.message) < 200


def test_domain_kind_and_json() -> None:
    exact = Domain(hostname="www.example.com", app="shop", created_at="2024-01-01T00:00:00Z")
    wild = Domain(hostname="*.example.com", app="shop", created_at="2024-01-01T00:00:00Z")
    assert exact.kind == "custom"
    assert wild.kind == "wildcard"
    assert wild.to_json() == {
        "hostname": "*.example.com",
        "kind": "wildcard",
        "app": "shop",
        "created_at": "2024-01-01T00:00:00Z",
    }

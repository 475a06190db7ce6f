"""Sealing, tokens and settings parsing: pure logic and the key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from berth.framework import tokens
from berth.framework.errors import BerthError, Invalid, Unauthorized
from berth.framework.sealing import KEY_FILE, Sealer, load_or_create_key
from berth.framework.settings import make_settings, parse_addr, parse_zk


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key


def test_seal_round_trip_hides_plaintext_and_binds_location(tmp_path: Path) -> None:
    sealer = Sealer(load_or_create_key(tmp_path))
    blob = sealer.seal(b"hunter2-value", "app/v1")
    assert b"hunter2" not in blob.encode()
    assert sealer.open(blob, "app/v1") == b"hunter2-value"
    with pytest.raises(BerthError, match="integrity"):
        sealer.open(blob, "other/v1")


def test_wrong_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    blob = Sealer(load_or_create_key(tmp_path / "a")).seal(b"x", "app/v1")
    with pytest.raises(BerthError, match="sealed with key"):
        Sealer(load_or_create_key(tmp_path / "b")).open(blob, "app/v1")


def test_tokens_have_256_bits_a_prefix_and_only_a_digest_is_kept() -> None:
    secret, record = tokens.new_token("ci", "admin")
    assert secret.startswith("berth_")
    assert tokens.token_id(secret) == record.id
    assert secret not in repr(record.to_json())
    assert record.digest == tokens.digest(secret)
    assert tokens.matches(secret, record)
    assert not tokens.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), record)
    other, _ = tokens.new_token("ci", "admin")
    assert other != secret


@pytest.mark.parametrize("bad", ["", "berth_", "bearer x", "berth_123_abc", "x" * 80])
def test_malformed_tokens(bad: str) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        tokens.token_id(bad)


def test_settings_parsing(tmp_path: Path) -> None:
    assert parse_zk("127.0.0.1:2181/berth") == ("127.0.0.1:2181", "/berth")
    assert parse_zk("a:1,b:2/x/y/") == ("a:1,b:2", "/x/y")
    assert parse_zk("a:1") == ("a:1", "/berth")
    for bad in ("/berth", "a:1/", "a:1/x//y"):
        with pytest.raises(Invalid):
            parse_zk(bad)
    assert parse_addr(":7070") == ("0.0.0.0", 7070)  # noqa: S104
    assert parse_addr("[::1]:80") == ("::1", 80)
    for bad in ("7070", ":x", ":70000"):
        with pytest.raises(Invalid):
            parse_addr(bad)
    settings = make_settings(tmp_path, "h:1/c", ":7070", "Example.COM.")
    assert settings.domain == "example.com"
    assert settings.api_url == "http://127.0.0.1:7070"

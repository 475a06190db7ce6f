"""The registry's pure parts (framework/registry.py) and its files: image references, the
pinned reference agents run, X-Registry-Auth, the generated password, the htpasswd line
(checked with Debian's htpasswd itself) and the registry's config; the flags that turn it on
(settings, `berth server`'s registry child, `berth registry`'s listen address)."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from berth.framework.errors import Invalid
from berth.framework.model import Artifact
from berth.framework.options import settings_args
from berth.framework.registry import (
    DEFAULT_PORT,
    Credentials,
    Reference,
    RegistryError,
    auth_header,
    htpasswd_line,
    load_or_create_credentials,
    parse_reference,
    parse_registry,
    pinned,
    prepare,
    render_config,
    under,
)
from berth.framework.registryd import listen_address
from berth.framework.settings import make_settings
from berth.framework.supervisor import registry_component
from berth.framework.taskinfo import Payload
from tests.conftest import need

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("", "busybox")),
        ("berth/app-shop:1a2b3c4d5e6f", Reference("", "berth/app-shop", "1a2b3c4d5e6f")),
        (
            "127.0.0.1:7072/berth/app-shop:1a2b3c4d5e6f",
            Reference("127.0.0.1:7072", "berth/app-shop", "1a2b3c4d5e6f"),
        ),
        (
            f"registry.example.com:5000/berth/app-shop@{DIGEST}",
            Reference("registry.example.com:5000", "berth/app-shop", "", DIGEST),
        ),
        (
            f"reg.example.com/berth/app-shop:v1@{DIGEST}",
            Reference("reg.example.com", "berth/app-shop", "v1", DIGEST),
        ),
        ("localhost/app:2", Reference("localhost", "app", "2")),
        ("[::1]:7072/berth/app-x:t", Reference("[::1]:7072", "berth/app-x", "t")),
    ],
)
def test_references_parse_as_docker_reads_them(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Berth/app",  # upper case in a path
        "berth/app:",  # empty tag
        "berth/app:-x",
        "berth/app@sha256:12",  # short digest
        "berth/app@md5:" + "0" * 32,
        "127.0.0.1:7072/",
        "a b",
        "x" * 600,
    ],
)
def test_bad_references_are_refused_with_a_message(text: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_reference(text)
    assert "reference" in caught.value.message


def test_a_pull_always_names_one_tag_or_digest() -> None:
    """An empty `tag` makes the engine pull every tag of the repository."""
    assert parse_reference("busybox").pull_tag == "latest"
    assert parse_reference("h:1/a:v2").pull_tag == "v2"
    assert parse_reference(f"h:1/a:v2@{DIGEST}").pull_tag == DIGEST
    assert parse_reference(f"h:1/a:v2@{DIGEST}").repository == "h:1/a"


def test_pinned_drops_the_tag_for_the_digest() -> None:
    ref = "127.0.0.1:7072/berth/app-shop:1a2b3c4d5e6f"
    assert pinned(ref, DIGEST) == f"127.0.0.1:7072/berth/app-shop@{DIGEST}"
    assert pinned(ref, None) == ref
    assert pinned("shop:v1", "") == "shop:v1"


def test_artifacts_keep_the_digest_and_run_the_pinned_image() -> None:
    pushed = Artifact("image", "127.0.0.1:7072/berth/app-shop:1a2b", 8000, digest=DIGEST)
    assert pushed.to_json() == {
        "kind": "image",
        "ref": "127.0.0.1:7072/berth/app-shop:1a2b",
        "port": 8000,
        "digest": DIGEST,
    }
    assert Artifact.from_json(pushed.to_json()) == pushed
    assert pushed.image == f"127.0.0.1:7072/berth/app-shop@{DIGEST}"
    local = Artifact("image", "berth/app-shop:1a2b")
    assert local.to_json() == {"kind": "image", "ref": "berth/app-shop:1a2b"}
    assert Artifact.from_json(local.to_json()) == local
    assert local.image == "berth/app-shop:1a2b"


def test_registry_addresses() -> None:
    assert parse_registry("127.0.0.1:7072") == "127.0.0.1:7072"
    assert parse_registry("registry.internal:443") == "registry.internal:443"
    assert parse_registry("[fd00::1]:7072") == "[fd00::1]:7072"
    for bad in ("127.0.0.1", "http://h:1", "h:1/path", "h:0", "h:70000", ":7072", "h :1"):
        with pytest.raises(Invalid) as caught:
            parse_registry(bad)
        assert "--registry" in caught.value.message
    assert under("h:1", f"h:1/berth/app-x@{DIGEST}")
    assert not under("h:1", "berth/app-x:1")
    assert not under("h:1", "h:2/berth/app-x:1")
    assert not under("h:1", "not a reference")


def test_auth_header_is_docker_s_base64url_json() -> None:
    value = auth_header("h:1", "berth", "p+/w?")
    assert "+" not in value
    assert "/" not in value
    assert json.loads(base64.urlsafe_b64decode(value)) == {
        "username": "berth",
        "password": "p+/w?",
        "serveraddress": "h:1",
    }


def test_credentials_are_random_private_and_made_once(tmp_path: Path) -> None:
    first = load_or_create_credentials(tmp_path / "a")
    assert first.username == "berth"
    assert len(first.password) == 32
    assert load_or_create_credentials(tmp_path / "a") == first
    assert load_or_create_credentials(tmp_path / "b").password != first.password
    folder = tmp_path / "a" / "registry"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "credentials.json").stat().st_mode) == 0o600
    assert first.password not in repr(first)
    assert sorted(p.name for p in folder.iterdir()) == ["credentials.json"]  # no temp left


def test_damaged_credentials_say_what_to_do(tmp_path: Path) -> None:
    folder = tmp_path / "registry"
    folder.mkdir()
    (folder / "credentials.json").write_text("{not json")
    with pytest.raises(RegistryError) as caught:
        load_or_create_credentials(tmp_path)
    assert "remove it to make a new one" in caught.value.message


def test_htpasswd_line_is_bcrypt_that_htpasswd_verifies(tmp_path: Path) -> None:
    need(shutil.which("htpasswd") is not None, "htpasswd (Debian package apache2-utils)")
    creds = Credentials("berth", "s3cret-" + "x" * 20)
    line = htpasswd_line(creds, cost=5)
    assert line.startswith("berth:$2y$05$")
    assert creds.password not in line
    path = tmp_path / "htpasswd"
    path.write_text(line + "\n")

    def verify(password: str) -> int:
        done = subprocess.run(
            ["htpasswd", "-v", "-i", str(path), "berth"],
            input=password,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.returncode

    assert verify(creds.password) == 0
    assert verify("wrong") != 0


def test_config_is_json_yaml_with_auth_storage_and_address(tmp_path: Path) -> None:
    text = render_config(":7072", tmp_path / "storage", tmp_path / "htpasswd", "s" * 48)
    config = json.loads(text)
    assert config["version"] == 0.1
    assert config["http"]["addr"] == ":7072"
    assert config["http"]["secret"] == "s" * 48
    assert config["storage"]["filesystem"] == {"rootdirectory": str(tmp_path / "storage")}
    assert config["auth"] == {"htpasswd": {"realm": "berth", "path": str(tmp_path / "htpasswd")}}
    assert config["log"]["formatter"] == "json"


def test_prepare_writes_private_files_and_keeps_the_password(tmp_path: Path) -> None:
    need(shutil.which("htpasswd") is not None, "htpasswd (Debian package apache2-utils)")
    config = prepare(tmp_path, "127.0.0.1:7072")
    folder = tmp_path / "registry"
    assert config == folder / "config.yml"
    for name in ("config.yml", "htpasswd", "credentials.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((folder / "storage").stat().st_mode) == 0o700
    password = load_or_create_credentials(tmp_path).password
    first_secret = json.loads(config.read_text())["http"]["secret"]
    prepare(tmp_path, "127.0.0.1:7072")
    assert load_or_create_credentials(tmp_path).password == password
    assert json.loads(config.read_text())["http"]["secret"] != first_secret
    assert password not in config.read_text()


def test_listen_addresses() -> None:
    assert listen_address(":7072") == ":7072"
    assert listen_address("0.0.0.0:7072") == ":7072"
    assert listen_address("127.0.0.1:9") == "127.0.0.1:9"
    assert listen_address("[::1]:9") == "[::1]:9"
    with pytest.raises(Invalid):
        listen_address("nowhere")


def test_settings_carry_the_registry_to_every_child(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "127.0.0.1:2181/b", ":7070", "localhost")
    assert settings.registry == ""
    assert not any(a.startswith("--registry") for a in settings_args(settings))
    settings = make_settings(
        tmp_path, "127.0.0.1:2181/b", ":7070", "localhost", registry="10.0.0.5:7072"
    )
    assert "--registry=10.0.0.5:7072" in settings_args(settings)
    with pytest.raises(Invalid):
        make_settings(tmp_path, "127.0.0.1:2181/b", ":7070", "localhost", registry="nope")


def test_berth_server_runs_a_registry_in_mesos_mode_or_when_asked(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "127.0.0.1:2181/b", ":7070", "localhost")
    assert registry_component(settings, "local", None) is None  # local mode: off by default

    found = registry_component(settings, "local", "127.0.0.1:7100")
    assert found is not None
    changed, child = found
    assert changed.registry == "127.0.0.1:7100"
    assert child.name == "registry"
    assert child.argv[1:3] == ["-m", "berth.framework.registryd"]
    assert "--listen=127.0.0.1:7100" in child.argv
    assert "--registry=127.0.0.1:7100" in child.argv

    found = registry_component(settings, "local", ":7100")
    assert found is not None
    assert found[0].registry == "127.0.0.1:7100"  # every address: loopback reaches it

    found = registry_component(settings, "zk://zk:2181/mesos", None)
    assert found is not None
    changed, child = found
    assert changed.registry.endswith(f":{DEFAULT_PORT}")  # this host's name
    assert not changed.registry.startswith("127.")
    assert f"--listen=:{DEFAULT_PORT}" in child.argv

    given = replace(settings, registry="registry.internal:443")
    found = registry_component(given, "zk://zk:2181/mesos", None)
    assert found is not None
    assert found[0].registry == "registry.internal:443"  # --registry as given wins


def test_payload_carries_registry_credentials() -> None:
    payload = Payload(
        app="shop",
        process="web",
        index=1,
        release=2,
        image=f"h:1/berth/app-shop@{DIGEST}",
        command=None,
        env={},
        port=31000,
        memory_mb=64,
        cpus=0.1,
        instance="i",
        registry_user="berth",
        registry_password="pw",
    )
    assert Payload.decode(payload.encode()) == payload

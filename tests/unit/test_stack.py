"""The stack's pure parts: specs, manifests, tags, the mmdebstrap command line and the output
condenser. Building real images is tests/integration/test_stack.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import pytest

from berth.buildpacks import stack
from berth.buildpacks.stack import BUILD, RUN, Condenser, StackSpec
from berth.framework.errors import Invalid


def test_tag_is_suite_and_twelve_hex_digits_of_the_manifest_hash() -> None:
    tag = stack.stack_tag(BUILD)
    assert re.fullmatch(r"trixie-[0-9a-f]{12}", tag)
    digest = hashlib.sha256(stack.manifest_json(BUILD).encode()).hexdigest()
    assert tag == f"trixie-{digest[:12]}"
    assert stack.stack_digest(BUILD) == digest


def test_tag_is_stable_for_the_same_inputs() -> None:
    same = StackSpec("build", BUILD.variant, tuple(BUILD.packages))
    assert stack.stack_tag(same) == stack.stack_tag(BUILD)


def test_package_order_and_repeats_do_not_change_the_tag() -> None:
    shuffled = dataclasses.replace(RUN, packages=(*reversed(RUN.packages), RUN.packages[0]))
    assert stack.stack_tag(shuffled) == stack.stack_tag(RUN)


def test_a_package_more_or_less_changes_the_tag() -> None:
    more = dataclasses.replace(RUN, packages=(*RUN.packages, "libjpeg62-turbo"))
    less = dataclasses.replace(RUN, packages=RUN.packages[1:])
    tags = {stack.stack_tag(RUN), stack.stack_tag(more), stack.stack_tag(less)}
    assert len(tags) == 3


def test_suite_format_version_variant_and_kind_change_the_tag() -> None:
    base = stack.stack_tag(RUN)
    assert stack.stack_tag(RUN, suite="forky").startswith("forky-")
    assert stack.stack_tag(RUN, suite="forky")[-12:] != base[-12:]
    assert stack.stack_tag(RUN, version=stack.STACK_FORMAT + 1) != base
    assert stack.stack_tag(dataclasses.replace(RUN, variant="apt")) != base
    assert stack.stack_tag(dataclasses.replace(RUN, kind="build")) != base
    assert stack.stack_tag(BUILD) != base


def test_manifest_records_what_makes_the_image() -> None:
    m = stack.manifest(BUILD)
    assert m["format"] == stack.STACK_FORMAT
    assert m["suite"] == "trixie"
    assert m["kind"] == "build"
    assert m["packages"] == sorted(set(BUILD.packages))
    assert m["customize"] == list(stack.CUSTOMIZE_HOOKS)
    assert m["dpkg"] == list(stack.DPKG_OPTIONS)
    assert m["config"] == list(stack.image_config())
    assert json.loads(stack.manifest_json(BUILD)) == m


def test_the_stack_lists_hold_what_the_issue_asks_for() -> None:
    build, run = set(BUILD.packages), set(RUN.packages)
    for wanted in ("build-essential", "git", "python3-dev", "python3-venv", "nodejs", "npm"):
        assert wanted in build
    assert {"golang-go", "ruby", "libpq-dev", "libssl-dev", "libffi-dev"} <= build
    assert {"ca-certificates", "tzdata", "python3", "nodejs", "libpq5"} <= run
    assert not {"build-essential", "gcc", "npm", "golang-go", "python3-dev"} & run
    assert RUN.variant == "essential"  # no apt in the run image


def test_image_names() -> None:
    assert stack.image_name(BUILD) == f"berth/stack-build:{stack.stack_tag(BUILD)}"
    assert stack.image_name(RUN, "berth-test") == f"berth-test/stack-run:{stack.stack_tag(RUN)}"


@pytest.mark.parametrize("repository", ["", "Berth", "a b", "berth/", "/berth", "a:b", "a//b"])
def test_bad_repositories_are_refused(repository: str) -> None:
    with pytest.raises(Invalid, match="repository"):
        stack.image_name(RUN, repository)


@pytest.mark.parametrize("name", ["", "a", "Foo", "foo,bar", "--evil", "foo bar", "x;y", "é"])
def test_bad_package_names_are_refused(name: str) -> None:
    with pytest.raises(Invalid, match="package"):
        StackSpec("run", "essential", ("python3", name))


def test_bad_specs_are_refused() -> None:
    with pytest.raises(Invalid, match="no packages"):
        StackSpec("run", "essential", ())
    with pytest.raises(Invalid, match="variant"):
        StackSpec("run", "buildd; rm", ("python3",))
    with pytest.raises(Invalid, match="kind"):
        StackSpec("deploy", "essential", ("python3",))  # type: ignore[arg-type]
    with pytest.raises(Invalid, match="suite"):
        stack.stack_tag(RUN, suite="../trixie")


def test_mmdebstrap_argv() -> None:
    argv = stack.mmdebstrap_argv(BUILD, Path("/scratch/rootfs.tar"))
    assert argv[0] == "mmdebstrap"
    assert "--mode=unshare" in argv
    assert "--format=tar" in argv
    assert "--variant=apt" in argv
    assert f"--include={','.join(sorted(set(BUILD.packages)))}" in argv
    assert argv[-3:] == ["trixie", "/scratch/rootfs.tar", stack.MIRROR]
    for hook in stack.CUSTOMIZE_HOOKS:
        assert f"--customize-hook={hook}" in argv
    for option in stack.DPKG_OPTIONS:
        assert f"--dpkgopt={option}" in argv


def test_image_config_runs_as_app_with_a_home_and_utf8() -> None:
    config = stack.image_config()
    assert "USER 10000:10000" in config
    assert "ENV LANG=C.UTF-8" in config
    assert "ENV HOME=/home/app" in config
    assert "WORKDIR /app" in config
    assert any(line.startswith("ENV PATH=/usr/local/sbin:/usr/local/bin:") for line in config)


def test_reused_means_nothing_was_built() -> None:
    def image(kind: stack.Kind, built: bool) -> stack.StackImage:
        return stack.StackImage(kind, f"b/stack-{kind}:t", "sha256:x", 1, built, 0.1)

    assert stack.StackImages(image("build", False), image("run", False)).reused
    assert not stack.StackImages(image("build", True), image("run", False)).reused
    assert not stack.StackImages(image("build", False), image("run", True)).reused


# -- the condenser --------------------------------------------------------------------------------


def test_condenser_reports_phases_and_drops_the_quiet_ones() -> None:
    c = Condenser(label="run", started=100.0)
    assert c.feed("I: chroot architecture amd64 is equal to the host's architecture\n", 100.5) == []
    assert c.feed("I: using /tmp/x as tempdir\n", 100.6) == []
    assert c.feed("I: downloading packages with apt...\n", 102.2) == [
        "run: downloading packages with apt... [2s]"
    ]
    assert c.feed("\n", 103) == []


def test_condenser_counts_packages_at_most_every_few_seconds() -> None:
    c = Condenser(label="build", started=0.0, every=5.0)
    out: list[str] = []
    for i in range(10):
        out += c.feed(f"Get:{i + 1} http://deb.debian.org/debian trixie/main amd64 pkg{i}\n", 6.0)
    assert out == ["build:   1 fetched, 0 unpacked, 0 set up [6s]"]  # the first, then throttled
    assert c.feed("Unpacking gcc-14 (14.2.0-19) ...\n", 8.0) == []
    assert c.feed("Setting up nodejs (20.19.2+dfsg-1) ...\n", 11.5) == [
        "build:   10 fetched, 1 unpacked, 1 set up (last: nodejs) [12s]"
    ]
    assert (c.fetched, c.unpacked, c.set_up) == (10, 1, 1)
    assert c.feed("Some other line\n", 30.0) == []  # nothing new to report


def test_condenser_reports_each_warning_once_and_keeps_a_tail() -> None:
    c = Condenser(label="run", started=0.0)
    assert c.feed("W: something odd\n", 1.0) == ["run: W: something odd [1s]"]
    assert c.feed("W: something odd\n", 2.0) == []
    assert c.feed("E: it broke\n", 3.0) == ["run: E: it broke [3s]"]
    for i in range(100):
        c.feed(f"line {i}\n", 4.0)
    assert len(c.tail) == 40
    assert c.tail[-1] == "line 99"


def test_label_values_keep_dollars_and_quotes_and_refuse_control_characters() -> None:
    assert stack._label_value('say "$1" \\ é') == '"say \\"\\$1\\" \\\\ é"'
    with pytest.raises(Invalid, match="control"):
        stack._label_value("a\tb")

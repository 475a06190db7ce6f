"""What pruning may remove (api/prune.py's pure part): only images Berth built for the app,
only Berth's tags, never a kept or used one; the keep set; BERTH_KEEP_RELEASES."""

from __future__ import annotations

import pytest

from berth.api.prune import Image, Removal, is_berth_tag, keep_from_env, kept_refs, removals
from berth.framework.errors import Invalid
from berth.framework.model import Artifact, Release

BUILT = {"berth.app": "shop", "berth.commit": "c" * 40, "berth.build": "0123456789ab"}


def image(n: int, *tags: str, labels: dict[str, str] | None = None) -> Image:
    return Image(f"sha256:{n}", tags, BUILT if labels is None else labels)


def test_only_the_apps_repository_is_berths() -> None:
    assert is_berth_tag("berth/app-shop:1a2b3c4d5e6f", "shop")
    assert is_berth_tag("127.0.0.1:5000/berth/app-shop:1a2b", "shop")
    assert is_berth_tag("berth/app-shop@sha256:abcd", "shop")
    assert not is_berth_tag("berth/app-shopping:1a2b", "shop")
    assert not is_berth_tag("berth/app-shop2:1a2b", "shop")
    assert not is_berth_tag("x/berth/app-sho:1", "shop")
    assert not is_berth_tag("myimage:v1", "shop")
    assert not is_berth_tag("berth/stack-run:trixie-1", "shop")
    assert not is_berth_tag("evilberth/app-shop:1", "shop")


def test_removals_spare_kept_used_and_foreign_images() -> None:
    images = [
        image(1, "berth/app-shop:aaa"),  # old: removed
        image(2, "berth/app-shop:bbb"),  # kept (a kept release's)
        image(3, "berth/app-shop:ccc"),  # a container uses it
        image(4),  # untagged (a rebuild moved its tag): removed by id
        image(5, "berth/app-shop:ddd", "myimage:prod"),  # only Berth's tag goes
        image(6, "myimage:v1"),  # retagged by someone, Berth's tag gone: theirs now
        image(7, "berth/app-shop:eee", labels={"berth.app": "shop"}),  # no build label
        image(8, "berth/app-blog:fff", labels={**BUILT, "berth.app": "blog"}),  # another app
        image(9, "berth/app-shop:ggg", labels={}),  # not labelled at all
    ]
    found = removals("shop", images, kept={"sha256:2"}, in_use={"sha256:3"})
    assert found == [
        Removal("sha256:1", ("berth/app-shop:aaa",)),
        Removal("sha256:4", ()),
        Removal("sha256:5", ("berth/app-shop:ddd",)),
    ]
    assert removals("shop", images, kept={"sha256:1", "sha256:4", "sha256:5"}, in_use=set()) == [
        Removal("sha256:2", ("berth/app-shop:bbb",)),
        Removal("sha256:3", ("berth/app-shop:ccc",)),
    ]


def release(version: int, ref: str | None, kind: str = "image") -> Release:
    return Release(
        app="shop",
        version=version,
        description="",
        created_by="t",
        created_at="",
        config={},
        artifact=Artifact(kind, ref) if ref else None,
        process_types={},
    )


def test_the_keep_set_is_the_newest_releases_and_the_running_ones() -> None:
    newest = [release(9, "berth/app-shop:c"), release(8, "berth/app-shop:b"), release(7, None)]
    running = [release(3, "berth/app-shop:a")]
    assert kept_refs(newest, running) == {
        "berth/app-shop:a",
        "berth/app-shop:b",
        "berth/app-shop:c",
    }


def test_keep_from_env() -> None:
    assert keep_from_env({}) == 10
    assert keep_from_env({"BERTH_KEEP_RELEASES": "2"}) == 2
    for bad in ("0", "1001", "x", "-1", "2.5"):
        with pytest.raises(Invalid, match="BERTH_KEEP_RELEASES"):
            keep_from_env({"BERTH_KEEP_RELEASES": bad})

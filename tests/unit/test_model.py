"""Validation and pure logic: names, keys, sizes, descriptions, formations."""

from __future__ import annotations

import pytest

from berth.framework.errors import Invalid
from berth.framework.model import (
    APP_NAME,
    MAX_CONFIG_BYTES,
    MAX_VALUE_BYTES,
    apply_config_changes,
    describe_config_changes,
    random_app_name,
    validate_app_name,
    validate_config_changes,
    validate_formation_changes,
)


@pytest.mark.parametrize("name", ["ab", "my-app", "a1", "a" * 30, "x-1-2"])
def test_good_app_names(name: str) -> None:
    assert validate_app_name(name) == name


@pytest.mark.parametrize("name", ["a", "1app", "My-app", "a_b", "a" * 31, "", "-ab", "ab.c", 7])
def test_bad_app_names(name: object) -> None:
    with pytest.raises(Invalid, match="app name"):
        validate_app_name(name)


def test_random_names_are_valid_and_vary() -> None:
    names = {random_app_name() for _ in range(50)}
    assert all(APP_NAME.fullmatch(n) for n in names)
    assert len(names) > 40


@pytest.mark.parametrize("key", ["FOO", "_x", "a1_B"])
def test_good_keys(key: str) -> None:
    assert validate_config_changes({key: "v"}) == {key: "v"}


@pytest.mark.parametrize("key", ["1A", "A-B", "A B", "", "É"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(Invalid, match="config key"):
        validate_config_changes({key: "v"})


def test_value_limits_and_types() -> None:
    assert validate_config_changes({"A": "x" * MAX_VALUE_BYTES})
    with pytest.raises(Invalid, match=f"limit is {MAX_VALUE_BYTES}"):
        validate_config_changes({"A": "x" * (MAX_VALUE_BYTES + 1)})
    with pytest.raises(Invalid, match="must be a string"):
        validate_config_changes({"A": 3})
    with pytest.raises(Invalid, match="non-empty"):
        validate_config_changes({})


def test_error_messages_never_quote_values() -> None:
    secret = "s3cr3t-" + "x" * MAX_VALUE_BYTES
    with pytest.raises(Invalid) as caught:
        validate_config_changes({"TOKEN": secret})
    assert "s3cr3t" not in caught.value.message


def test_apply_and_describe() -> None:
    merged = apply_config_changes({"A": "1", "B": "2"}, {"A": None, "C": "3"})
    assert merged == {"B": "2", "C": "3"}
    assert describe_config_changes({"B": "x", "A": "y"}) == "Set A, B config vars"
    assert describe_config_changes({"A": None}) == "Remove A config vars"
    assert describe_config_changes({"A": "1", "B": None}) == "Set A and remove B config vars"


def test_total_config_cap() -> None:
    big = {f"K{i}": "x" * MAX_VALUE_BYTES for i in range(MAX_CONFIG_BYTES // MAX_VALUE_BYTES)}
    with pytest.raises(Invalid, match="in all"):
        apply_config_changes(big, {"ONE_MORE": "y"})


def test_formation_validation() -> None:
    assert validate_formation_changes({"web": 2}, {}) == {"web": 2}
    assert validate_formation_changes({"web": 0}, {"web": "x"}) == {"web": 0}
    with pytest.raises(Invalid, match="no process type 'worker'"):
        validate_formation_changes({"worker": 1}, {"web": "x"})
    for bad in ({"web": -1}, {"web": 101}, {"web": "2"}, {"web": True}, {"Web": 1}, {}):
        with pytest.raises(Invalid):
            validate_formation_changes(bad, {})


def test_limits_validation() -> None:
    from berth.framework.model import validate_limits

    assert validate_limits({"web": {"memory": "512m", "cpu": 1}}, {}) == {
        "web": {"memory_mb": 512, "cpus": 1.0}
    }
    assert validate_limits({"web": {"memory": "1g"}}, {"web": ""}) == {"web": {"memory_mb": 1024}}
    bad: object
    for bad in (
        {"web": {"memory": "lots"}},
        {"web": {"memory": "1t"}},
        {"web": {"memory": "8m"}},
        {"web": {"cpu": "fast"}},
        {"web": {"cpu": 0}},
        {"web": {"disk": 1}},
        {"web": {}},
        {"Web": {"cpu": 1}},
        {},
    ):
        with pytest.raises(Invalid):
            validate_limits(bad, {})
    with pytest.raises(Invalid, match="no process type 'worker'"):
        validate_limits({"worker": {"cpu": 1}}, {"web": ""})

"""The stack images the tests build on, made once per test session (conftest's `stack_build`
fixture): test_stack.py checks the build itself, the buildpack end-to-end tests build apps on
the result. CI builds them once (~3 min) rather than once per module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from berth.buildpacks.stack import StackImages

REPOSITORY = "berth-test"  # never Berth's own berth/stack-*, which the tests leave alone


@dataclass(frozen=True)
class StackBuild:
    images: StackImages
    work_dir: Path
    progress: list[str]
    repository: str
    forced: bool  # built by this session (False: BERTH_TEST_STACK_REPOSITORY's, reused)

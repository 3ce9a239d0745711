"""Shared fixtures: real processes, started on free 127.0.0.1 ports and stopped by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.support.procs import Proc

P = TypeVar("P", bound=Proc)


def pytest_report_header(config: pytest.Config) -> str:
    """Which implementation of the hot loops this run tests (scripts/test.sh runs both)."""
    import os

    import keyshard

    which = "compiled (Cython)" if keyshard.speedups_in_use() else "pure Python"
    forced = " (KEYSHARD_NO_EXTENSIONS)" if not keyshard.speedups_enabled() else ""
    return f"keyshard extensions: {which}{forced}" + (
        ", required" if os.environ.get("KEYSHARD_EXPECT_EXTENSIONS") == "1" else "")


@pytest.fixture
def procs() -> Iterator[Callable[[P], P]]:
    """`procs(RedisServer().start())`: the process is stopped and removed after the test."""
    started: list[Proc] = []

    def add(proc: P) -> P:
        started.append(proc)
        return proc

    yield add
    for proc in reversed(started):
        proc.cleanup()

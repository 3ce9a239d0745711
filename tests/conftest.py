"""Shared fixtures: real processes, started on free 127.0.0.1 ports and stopped by PID."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.support.procs import Proc

P = TypeVar("P", bound=Proc)


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

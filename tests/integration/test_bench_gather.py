"""bench/gather.c, the measurement behind writer Rule 5's join of small flushes, builds, runs
and delivers every byte it sends, both ways (joined and gathered), partial writes included."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench import fleet


@pytest.fixture(scope="module")
def gather(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleet.build_c(fleet.ROOT / "bench" / "gather.c", tmp_path_factory.mktemp("gather"),
                         "-Wall", "-Werror", "-lpthread")


@pytest.mark.parametrize("k, size, flushes", [(1, 1, 50), (16, 10, 200), (64, 65536, 3)])
def test_gather_measures_both_ways_and_delivers_every_byte(gather: Path, k: int, size: int,
                                                           flushes: int) -> None:
    """The 64 x 64 KB flushes (4 MB each) are more than a loopback socket takes at once, so
    the writev's rest is written too."""
    cp = subprocess.run([str(gather), str(k), str(size), str(flushes)], capture_output=True,
                        text=True, timeout=120, check=False)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.splitlines()
    ways = [re.fullmatch(rf"{k} buffers of {size} bytes, (joined, write|writev): "
                         r"(\d+\.\d\d) us per flush", line) for line in lines[:4]]
    assert all(ways) and [m.group(1) for m in ways if m] == ["joined, write"] * 2 + ["writev"] * 2
    sent = k * size * flushes * 4
    assert lines[4:] == [f"{sent} bytes sent, {sent} received"]


@pytest.mark.parametrize("argv", [[], ["0", "1", "1"], ["1025", "1", "1"], ["2", "0", "1"]])
def test_gather_refuses_bad_arguments(gather: Path, argv: list[str]) -> None:
    cp = subprocess.run([str(gather), *argv], capture_output=True, text=True, timeout=30,
                        check=False)
    assert (cp.returncode, cp.stdout) == (2, "") and cp.stderr

"""keyshard.log: nutcracker's levels, line format, log file, level steps and reopen."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyshard import log

LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] test_log\.py:\d+ (.*)")


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    log.shutdown()
    logging.getLogger(log.LOGGER_NAME).propagate = True
    logging.getLogger(log.LOGGER_NAME).setLevel(logging.NOTSET)


def messages(path: Path) -> list[str]:
    found = []
    for line in path.read_text().splitlines():
        match = LINE.fullmatch(line)
        assert match, line
        found.append(match.group(1))
    return found


def test_levels_map_one_to_one_and_in_order() -> None:
    levels = [log.py_level(n) for n in range(12)]
    assert levels == sorted(levels, reverse=True) and len(set(levels)) == 12
    assert (log.py_level(-3), log.py_level(99)) == (log.py_level(0), log.py_level(11))
    assert log.py_level(log.LOG_NOTICE) == log.NOTICE
    assert log.ALWAYS > log.py_level(0)


def test_line_format_and_default_level(tmp_path: Path) -> None:
    path = tmp_path / "ks.log"
    logger = log.setup(output=str(path))
    logger.log(log.NOTICE, "notice %d", 5)
    logger.warning("warn")
    logger.info("info is level 6, not shown at 5")
    logger.log(log.VERB, "verb")
    assert messages(path) == ["notice 5", "warn"]
    assert log.get_level() == 5


@pytest.mark.parametrize("verbosity,shown", [
    (0, ["emerg"]), (3, ["emerg", "crit", "err"]), (11, ["emerg", "crit", "err", "pverb"]),
    (42, ["emerg", "crit", "err", "pverb"]),
])
def test_verbosity(tmp_path: Path, verbosity: int, shown: list[str]) -> None:
    path = tmp_path / "ks.log"
    logger = log.setup(verbosity, str(path))
    for level, text in ((log.EMERG, "emerg"), (log.CRIT, "crit"), (log.ERR, "err"),
                        (log.PVERB, "pverb")):
        logger.log(level, text)
    assert messages(path) == shown


def test_file_is_appended_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "ks.log"
    path.write_text("")
    old = os.umask(0o022)
    try:
        path.unlink()
        log.setup(5, str(path)).warning("first")
        log.setup(5, str(path)).warning("second")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert messages(path) == ["first", "second"]


def test_unopenable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        log.setup(5, str(tmp_path / "missing" / "ks.log"))


def test_empty_output_means_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    log.setup(5, "").warning("to stderr")
    log.reopen()  # a no-op on stderr
    err = capfd.readouterr().err
    assert LINE.fullmatch(err.strip()) and err.endswith("to stderr\n")


def test_level_up_and_down_are_bounded_and_logged(tmp_path: Path) -> None:
    path = tmp_path / "ks.log"
    log.setup(10, str(path))
    assert [log.level_up(), log.level_up()] == [11, 11]
    log.set_level(1)
    assert [log.level_down(), log.level_down()] == [0, 0]
    text = path.read_text()
    assert text.count("up log level to 11") == 1 and text.count("down log level to 0") == 1
    assert " log.py:" in text


def test_level_change_takes_effect(tmp_path: Path) -> None:
    path = tmp_path / "ks.log"
    logger = log.setup(5, str(path))
    logger.info("hidden")
    log.level_up()
    logger.info("shown")
    log.level_down()
    logger.info("hidden again")
    lines = path.read_text().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "up log level to 6", "shown", "down log level to 5"]


def test_reopen_follows_a_rotation(tmp_path: Path) -> None:
    path, rotated = tmp_path / "ks.log", tmp_path / "ks.log.1"
    logger = log.setup(5, str(path))
    logger.warning("before")
    path.rename(rotated)
    logger.warning("still old file")
    log.reopen()
    logger.warning("after")
    assert messages(rotated) == ["before", "still old file"]
    assert messages(path) == ["after"]


def test_failed_reopen_is_reported_and_logging_resumes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    path = folder / "ks.log"
    logger = log.setup(5, str(path))
    folder.rename(tmp_path / "gone")
    log.reopen()
    logger.warning("lost")
    assert "reopening log file" in capfd.readouterr().err
    folder.mkdir()
    log.reopen()
    logger.warning("back")
    assert messages(path) == ["back"]


def test_nothing_is_formatted_below_the_level(tmp_path: Path) -> None:
    class Loud:
        calls = 0

        def __str__(self) -> str:
            Loud.calls += 1
            return "loud"

    logger = log.setup(5, str(tmp_path / "ks.log"))
    logger.log(log.VERB, "%s", Loud())
    assert Loud.calls == 0 and not logger.isEnabledFor(log.VERB)
    logger.log(log.NOTICE, "%s", Loud())
    assert Loud.calls == 1

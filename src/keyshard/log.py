"""Logging: nutcracker's `-v 0..11` levels, line format and log file, on stdlib logging.

This module owns the process-wide "keyshard" logger's handler and level: set up once from
`-v`/`-o`, raised or lowered by one step (SIGTTIN/SIGTTOU), its file reopened (SIGHUP).

Rule 1: nutcracker's twelve levels map onto distinct stdlib levels (`NC_TO_PY`), so
        `logger.isEnabledFor(VERB)` is the whole cost of a disabled log call. Hot paths
        guard with it, and pass %-style arguments so nothing is formatted when disabled.
Rule 2: a line is `[YYYY-MM-DD HH:MM:SS.mmm] file.py:line message`, local time, as nutcracker
        writes `[...] nc_conf.c:529 message`; each line goes out in one write(2).
Rule 3: the output is stderr, or a file opened O_WRONLY|O_APPEND|O_CREAT with mode 0644
        (`-o`; an empty name means stderr). Reopening closes and opens the same name again,
        so a rotated file is released; when that fails the error goes to stderr and logging
        stops until the next successful reopen, as nutcracker does.
Rule 4: ALWAYS is for what nutcracker logs whatever the level (loga): start, stop, level
        changes.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Final

LOGGER_NAME: Final = "keyshard"
STDERR_FD: Final = 2

# nutcracker's levels (nc_log.h)
LOG_EMERG, LOG_ALERT, LOG_CRIT, LOG_ERR, LOG_WARN, LOG_NOTICE = 0, 1, 2, 3, 4, 5
LOG_INFO, LOG_DEBUG, LOG_VERB, LOG_VVERB, LOG_VVVERB, LOG_PVERB = 6, 7, 8, 9, 10, 11
LOG_DEFAULT: Final = LOG_NOTICE

# stdlib levels for them; CRITICAL/ERROR/WARNING/INFO/DEBUG are reused where they fit.
EMERG, ALERT, CRIT, ERR, WARN, NOTICE = 58, 54, logging.CRITICAL, logging.ERROR, logging.WARNING, 25
INFO, DEBUG, VERB, VVERB, VVVERB, PVERB = logging.INFO, logging.DEBUG, 8, 6, 4, 2
ALWAYS: Final = 100

NC_TO_PY: Final[tuple[int, ...]] = (
    EMERG, ALERT, CRIT, ERR, WARN, NOTICE, INFO, DEBUG, VERB, VVERB, VVVERB, PVERB,
)
_CUSTOM_NAMES = {
    EMERG: "EMERG", ALERT: "ALERT", NOTICE: "NOTICE", VERB: "VERB", VVERB: "VVERB",
    VVVERB: "VVVERB", PVERB: "PVERB", ALWAYS: "ALWAYS",
}
for _level, _name in _CUSTOM_NAMES.items():
    logging.addLevelName(_level, _name)


def clamp(level: int) -> int:
    """A `-v` value forced into 0..11, as nutcracker's log_init does."""
    return max(LOG_EMERG, min(level, LOG_PVERB))


def py_level(level: int) -> int:
    """The stdlib level of nutcracker level `level` (clamped)."""
    return NC_TO_PY[clamp(level)]


class NcFormatter(logging.Formatter):
    """`[2024-01-31 12:00:00.123] file.py:42 message` (Rule 2)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = f"[{stamp}.{int(record.msecs):03d}] {record.filename}:{record.lineno} "
        line += record.getMessage()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class NcHandler(logging.Handler):
    """Writes each formatted line with one write(2) to stderr or to the `-o` file."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path or None
        self.fd = _open_log(self.path) if self.path else STDERR_FD
        self.setFormatter(NcFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if self.fd < 0:
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            while data:
                data = data[os.write(self.fd, data):]
        except Exception:  # noqa: BLE001 - a log line must never take the proxy down
            self.handleError(record)

    def reopen(self) -> None:
        """Close and open the file again (after a rotation); a no-op on stderr."""
        if self.path is None:
            return
        self.acquire()
        try:
            self._close_fd()
            self.fd = _open_log(self.path)
        except OSError as err:
            sys.stderr.write(f"reopening log file '{self.path}' failed, ignored: {err.strerror}\n")
        finally:
            self.release()

    def _close_fd(self) -> None:
        if self.path is not None and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        self._close_fd()
        super().close()


class _State:
    handler: NcHandler | None = None
    level: int = LOG_DEFAULT


def logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def setup(verbosity: int = LOG_DEFAULT, output: str | None = None) -> logging.Logger:
    """Log at nutcracker level `verbosity` to `output` (None or "" = stderr).

    Raises OSError when the file cannot be opened; a previous setup is replaced.
    """
    handler = NcHandler(output)
    shutdown()
    # Record fields nobody prints; skipping them makes every log call cheaper.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    log = logger()
    log.addHandler(handler)
    log.propagate = False
    _State.handler = handler
    set_level(verbosity)
    return log


def get_level() -> int:
    """The current nutcracker level, 0..11."""
    return _State.level


def set_level(level: int) -> int:
    _State.level = clamp(level)
    logger().setLevel(NC_TO_PY[_State.level])
    return _State.level


def level_up() -> int:
    """One level more verbose (SIGTTIN), at most 11; returns the new level."""
    if _State.level < LOG_PVERB:
        set_level(_State.level + 1)
        logger().log(ALWAYS, "up log level to %d", _State.level)
    return _State.level


def level_down() -> int:
    """One level less verbose (SIGTTOU), at least 0; returns the new level."""
    if _State.level > LOG_EMERG:
        set_level(_State.level - 1)
        logger().log(ALWAYS, "down log level to %d", _State.level)
    return _State.level


def reopen() -> None:
    """Reopen the log file (SIGHUP); a no-op when logging to stderr."""
    if _State.handler is not None:
        _State.handler.reopen()


def shutdown() -> None:
    """Remove and close the handler installed by setup(), if any."""
    handler, _State.handler = _State.handler, None
    if handler is not None:
        logger().removeHandler(handler)
        handler.close()

"""Process plumbing of the command line: daemonizing (`-d`) and the pid file (`-p`).

Rule 1: daemonize() behaves as nutcracker's: fork (the parent exits 0), setsid, SIGHUP
        ignored across the second fork, fork again, umask(0), no chdir (so a core dump lands
        in the working directory), stdin/stdout/stderr on /dev/null. It must run before any
        event loop or thread exists.
Rule 2: the pid file holds the decimal pid without a newline, mode 0644. It is written to a
        temporary file in the same directory and renamed over the target, so a reader never
        sees a partial pid. Removing it at exit is the caller's job (remove_pid_file), which
        leaves alone a file that another process has since claimed.
"""

from __future__ import annotations

import os
import signal


def _fork_and_exit_parent() -> None:
    if os.fork() > 0:
        os._exit(0)


def _stdio_to_devnull() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def daemonize() -> None:
    """Detach from the terminal (Rule 1). Returns in the grandchild only."""
    _fork_and_exit_parent()
    os.setsid()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _fork_and_exit_parent()
    signal.signal(signal.SIGHUP, previous)
    os.umask(0)
    _stdio_to_devnull()


def write_pid_file(path: str, pid: int | None = None) -> None:
    """Atomically write `pid` (default: ours) to `path` (Rule 2); OSError on failure."""
    pid = os.getpid() if pid is None else pid
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o644)
    try:
        os.write(fd, str(pid).encode("ascii"))
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


def remove_pid_file(path: str, pid: int | None = None) -> None:
    """Remove the pid file; a missing file is not an error. With `pid`, only a file that
    still holds that pid is removed (a newer instance may have written its own)."""
    try:
        if pid is not None:
            with open(path, "rb") as fh:
                if fh.read(32).strip() != str(pid).encode("ascii"):
                    return
        os.unlink(path)
    except FileNotFoundError:
        pass

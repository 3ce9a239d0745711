"""keyshard.cli: nutcracker's flags, defaults and messages; -V, -h, -D, -t; a real start.

The bad-option cases run the real nutcracker too: keyshard must print the same first line
(with its own name) and exit 1 like it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keyshard import __version__
from keyshard.cli import Options, UsageError, banner_lines, parse_args, parse_host_port, usage
from keyshard.daemon import remove_pid_file, write_pid_file
from keyshard.metrics import describe_stats
from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
NUTCRACKER = shutil.which("nutcracker") or ("/usr/sbin/nutcracker"
                                            if os.path.exists("/usr/sbin/nutcracker") else None)
needs_nutcracker = pytest.mark.skipif(NUTCRACKER is None, reason="nutcracker is not installed")
ENV = {**os.environ,
       "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

# the -V banner: the version, then which implementation runs (the child has our environment)
BANNER = "\n".join(banner_lines()) + "\n\n"


def keyshard(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyshard", *args], capture_output=True,
                          text=True, cwd=cwd, env=ENV, timeout=timeout, check=False)


# --------------------------------------------------------------------------------------------
# Parsing


def test_options_fields_and_defaults() -> None:
    assert [f.name for f in dataclasses.fields(Options)] == [
        "help", "version", "test_conf", "daemonize", "describe_stats", "verbose", "output",
        "conf_file", "stats_port", "stats_addr", "stats_interval", "pid_file", "mbuf_size",
        "metrics_addr", "nutcracker_quirks"]
    o = parse_args([])
    assert o == Options()
    assert (o.verbose, o.output, o.conf_file, o.stats_port, o.stats_addr) == (
        5, None, "conf/nutcracker.yml", 22222, "0.0.0.0")
    assert (o.stats_interval, o.pid_file, o.mbuf_size, o.metrics_addr) == (30000, None, 16384,
                                                                           None)
    assert o.nutcracker_quirks is False
    assert parse_args(["--nutcracker-quirks"]).nutcracker_quirks is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.verbose = 6  # type: ignore[misc]


def test_every_flag_short_and_long() -> None:
    short = parse_args(["-t", "-d", "-v", "7", "-o", "x.log", "-c", "x.yml", "-s", "1234",
                        "-a", "127.0.0.1", "-i", "100", "-p", "x.pid", "-m", "512",
                        "--metrics-addr", "127.0.0.1:9100"])
    long = parse_args(["--test-conf", "--daemonize", "--verbose=7", "--output", "x.log",
                       "--conf-file=x.yml", "--stats-port=1234", "--stats-addr", "127.0.0.1",
                       "--stats-interval=100", "--pid-file=x.pid", "--mbuf-size", "512",
                       "--metrics-addr=127.0.0.1:9100"])
    assert short == long == Options(
        test_conf=True, daemonize=True, verbose=7, output="x.log", conf_file="x.yml",
        stats_port=1234, stats_addr="127.0.0.1", stats_interval=100, pid_file="x.pid",
        mbuf_size=512, metrics_addr=("127.0.0.1", 9100))


def test_help_and_describe_imply_version() -> None:
    assert parse_args(["-h"]) == Options(help=True, version=True)
    assert parse_args(["--describe-stats"]) == Options(describe_stats=True, version=True)
    assert parse_args(["-V"]) == Options(version=True)


def test_getopt_long_conventions() -> None:
    assert parse_args(["-tv9", "-cconf.yml"]) == Options(test_conf=True, verbose=9,
                                                         conf_file="conf.yml")
    assert parse_args(["-tc", "x.yml"]) == Options(test_conf=True, conf_file="x.yml")
    assert parse_args(["--verb=3", "--conf", "x.yml"]) == Options(verbose=3, conf_file="x.yml")
    assert parse_args(["ignored", "-t", "-", "also"]) == Options(test_conf=True)
    assert parse_args(["--", "-t"]) == Options()
    assert parse_args(["-v", "99"]).verbose == 99  # clamped when logging starts
    assert parse_args(["-s", "4294967297"]).stats_port == 1  # nc_atoi wraps like a C int
    assert parse_args(["-o", ""]).output == ""


@pytest.mark.parametrize("text,addr", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)), ("::1:9100", ("::1", 9100)),
    ("[::1]:9100", ("::1", 9100)), ("localhost:1", ("localhost", 1)),
    ("9100", None), (":9100", None), ("h:0", None), ("h:65536", None), ("h:x", None),
])
def test_host_port(text: str, addr: tuple[str, int] | None) -> None:
    assert parse_host_port(text) == addr


BAD_ARGS: list[tuple[list[str], str]] = [
    (["-v", "x"], "option -v requires a number"),
    (["-v", "-1"], "option -v requires a number"),
    (["-v"], "option -v requires a number"),
    (["--verbose"], "option -v requires a number"),
    (["-s", "0"], "option -s value 0 is not a valid port"),
    (["-s", "70000"], "option -s value 70000 is not a valid port"),
    (["--stats-port=0"], "option -s value 0 is not a valid port"),
    (["-s", "99999999999"], "option -s value 1215752191 is not a valid port"),
    (["-s", "abc"], "option -s requires a number"),
    (["-s", "2147483648"], "option -s requires a number"),
    (["-s"], "option -s requires a number"),
    (["-i", "x"], "option -i requires a number"),
    (["-i"], "option -i requires a number"),
    (["-m", "0"], "option -m requires a non-zero number"),
    (["-m", "x"], "option -m requires a non-zero number"),
    (["-m", "511"], "mbuf chunk size must be between 512 and 16777216 bytes"),
    (["-m", "16777217"], "mbuf chunk size must be between 512 and 16777216 bytes"),
    (["-m"], "option -m requires a number"),
    (["-c"], "option -c requires a file name"),
    (["-o"], "option -o requires a file name"),
    (["-p"], "option -p requires a file name"),
    (["-a"], "option -a requires a string"),
    (["-tc"], "option -c requires a file name"),
    (["-x"], "invalid option -- 'x'"),
    (["-?"], "invalid option -- '?'"),
    (["-V", "-x"], "invalid option -- 'x'"),
    (["--help=x"], "invalid option -- 'h'"),
    (["-s", "0", "-x"], "option -s value 0 is not a valid port"),
    (["-x", "-s", "0"], "invalid option -- 'x'"),
]
OURS_ONLY: list[tuple[list[str], str]] = [
    (["--bogus"], "invalid option -- '--bogus'"),  # nutcracker prints a NUL byte
    (["--stats"], "invalid option -- '--stats'"),  # ambiguous abbreviation
    (["--metrics-addr"], "option --metrics-addr requires a host:port"),
    (["--metrics-addr", "nope"], "option --metrics-addr value 'nope' is not a valid \"host:port\""),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS + OURS_ONLY,
                         ids=[" ".join(a) for a, _ in BAD_ARGS + OURS_ONLY])
def test_bad_options(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_args(argv)
    assert str(info.value) == message


@needs_nutcracker
@pytest.mark.parametrize("argv", [a for a, _ in BAD_ARGS], ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_options_like_nutcracker(argv: list[str]) -> None:
    assert NUTCRACKER is not None
    theirs = subprocess.run([NUTCRACKER, *argv], capture_output=True, text=True, timeout=10,
                            check=False)
    ours = keyshard(*argv)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert ours.stdout == theirs.stdout == ""
    ours_lines, their_lines = ours.stderr.splitlines(), theirs.stderr.splitlines()
    assert ours_lines[0] == their_lines[0].replace("nutcracker", "keyshard")
    assert ours_lines[1].startswith("Usage: keyshard [-?hVdDt]")


# --------------------------------------------------------------------------------------------
# -V, -h, -D, -t as a subprocess


def test_version() -> None:
    result = keyshard("-V")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == BANNER
    assert result.stderr.startswith(f"This is keyshard-{__version__}\nextensions: ")


def test_help_lists_every_flag_with_its_default() -> None:
    result = keyshard("--help")
    assert result.returncode == 0
    assert result.stderr.startswith(BANNER + "Usage: keyshard")
    assert result.stderr.endswith(usage() + "\n")
    for flag, default in [("-h, --help", None), ("-V, --version", None),
                          ("-t, --test-conf", None), ("-d, --daemonize", None),
                          ("-D, --describe-stats", None), ("-v, --verbose=N", "5"),
                          ("-o, --output=S", "stderr"),
                          ("-c, --conf-file=S", "conf/nutcracker.yml"),
                          ("-s, --stats-port=N", "22222"), ("-a, --stats-addr=S", "0.0.0.0"),
                          ("-i, --stats-interval=N", "30000"), ("-p, --pid-file=S", "off"),
                          ("-m, --mbuf-size=N", "16384"), ("--metrics-addr=S", "off")]:
        line = next(line for line in result.stderr.splitlines() if flag in line)
        assert default is None or f"(default: {default})" in line


@needs_nutcracker
def test_describe_stats_matches_nutcracker() -> None:
    assert NUTCRACKER is not None
    theirs = subprocess.run([NUTCRACKER, "-D"], capture_output=True, text=True, timeout=10,
                            check=False).stderr
    ours = keyshard("-D")
    assert ours.returncode == 0
    assert ours.stderr == BANNER + describe_stats()
    their_table = theirs[theirs.index("pool stats:"):]
    assert ours.stderr[ours.stderr.index("pool stats:"):] == their_table


def test_help_and_describe_together() -> None:
    stderr = keyshard("-D", "-h").stderr
    assert stderr.index("Usage:") < stderr.index("pool stats:")


def test_test_conf_ok() -> None:
    result = keyshard("-t", "-c", "conf/demo.yml")
    assert (result.returncode, result.stderr) == (
        0, "keyshard: configuration file 'conf/demo.yml' syntax is ok\n")


def test_test_conf_default_file() -> None:
    result = keyshard("--test-conf")
    assert (result.returncode, result.stderr) == (
        0, "keyshard: configuration file 'conf/nutcracker.yml' syntax is ok\n")


def test_test_conf_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("a:\n  listen: 127.0.0.1:22121\n  hash: foo\n  servers:\n   - 127.0.0.1:1:1\n")
    result = keyshard("-t", "-c", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"keyshard: configuration file '{bad}' syntax is invalid",
        (f"conf: file '{bad}', pool 'a', line 3: directive \"hash\" is not a valid hash"
         ' (value "foo")')]


def test_version_wins_over_test_conf() -> None:
    result = keyshard("-t", "-V", "-c", "/nonexistent.yml")
    assert (result.returncode, result.stderr) == (0, BANNER)


# --------------------------------------------------------------------------------------------
# A normal run


def test_run_with_a_bad_config_says_why(tmp_path: Path) -> None:
    result = keyshard("-c", str(tmp_path / "missing.yml"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"keyshard: configuration file '{tmp_path / 'missing.yml'}' syntax is invalid",
        (f"conf: file '{tmp_path / 'missing.yml'}': failed to open configuration:"
         " No such file or directory")]


def test_run_with_an_unopenable_log_file(tmp_path: Path) -> None:
    result = keyshard("-c", "conf/demo.yml", "-o", str(tmp_path / "no" / "ks.log"))
    assert result.returncode == 1
    assert result.stderr == (f"opening log file '{tmp_path / 'no' / 'ks.log'}' failed: "
                             "No such file or directory\n")


def test_run_with_an_unresolvable_stats_addr() -> None:
    result = keyshard("-c", "conf/demo.yml", "-a", "")
    assert result.returncode == 1
    assert result.stderr.startswith("keyshard: address resolution of node '' service '22222'")


def _memcache_conf(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    conf = tmp_path / "run.yml"
    conf.write_text(f"m:\n  listen: 127.0.0.1:{port}\n  servers:\n   - 127.0.0.1:{free_port()}:1\n")
    return conf, port


def _wait_listening(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_run_writes_the_pid_file_and_serves(tmp_path: Path) -> None:
    conf, port = _memcache_conf(tmp_path)
    pid_file, log_file = tmp_path / "ks.pid", tmp_path / "ks.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keyshard", "-c", str(conf), "-s", str(free_port()),
         "-a", "127.0.0.1", "-p", str(pid_file), "-o", str(log_file), "-v", "6"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port)
        assert pid_file.read_text() == str(proc.pid)  # no newline, as nutcracker
        assert stat.S_IMODE(pid_file.stat().st_mode) == 0o644
    finally:
        proc.terminate()
        proc.wait(15)
    assert log_file.stat().st_size > 0


def test_daemonize(tmp_path: Path) -> None:
    conf, port = _memcache_conf(tmp_path)
    pid_file, log_file = tmp_path / "ks.pid", tmp_path / "ks.log"
    parent = keyshard("-d", "-c", str(conf), "-s", str(free_port()), "-a", "127.0.0.1",
                      "-p", str(pid_file), "-o", str(log_file), cwd=tmp_path)
    assert (parent.returncode, parent.stdout, parent.stderr) == (0, "", "")
    _wait_listening(port)
    pid = int(pid_file.read_text())
    try:
        assert os.getsid(pid) != os.getsid(0) and os.getsid(pid) != pid  # detached, not leader
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)  # no chdir
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (its parent may be a non-reaping init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_pid_file_helpers(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    path.write_text("stale\n")
    write_pid_file(str(path), 4242)
    assert path.read_text() == "4242"
    assert [p.name for p in tmp_path.iterdir()] == ["x.pid"]  # the temporary file is gone
    remove_pid_file(str(path))
    remove_pid_file(str(path))
    assert not path.exists()
    with pytest.raises(OSError):
        write_pid_file(str(tmp_path / "missing" / "x.pid"))

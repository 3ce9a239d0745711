"""The command line: nutcracker 0.5.0's flags, defaults and messages, under the name keyshard.

This module owns argv → `Options`, the `-h`/`-V`/`-D`/`-t` answers, and the start-up order of
a normal run: load the config, set up logging, check the stats address, daemonize, write the
pid file, then hand over to `keyshard.app.run`.

Rule 1: options are read like getopt_long reads nutcracker's "hVtdDv:o:c:s:i:a:p:m:": short
        options cluster (`-tc file`), take attached or separate arguments (`-v5`, `-v 5`),
        long options take `=value` or the next argument and may be abbreviated to a unique
        prefix, non-option arguments are ignored, `--` ends the options. Each value is checked
        as soon as it is read, so the first bad option is the one reported.
Rule 2: a bad option prints `keyshard: <nutcracker's message>` and the usage, and exits 1.
        Numbers are read like nutcracker's nc_atoi (ASCII digits, C int wrap-around).
Rule 3: everything is written to stderr, as nutcracker does. -h, -V and -D exit 0 before the
        config is read; -t only reads the config.
Rule 4: a config error stops a normal run before anything else happens (before daemonizing),
        with the same two lines as `-t`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from keyshard import __version__, speedups_in_use
from keyshard.config import ConfigError, PoolConf, load_config, nc_atoi, valid_port
from keyshard.metrics import describe_stats

PROG = "keyshard"
MBUF_MIN_SIZE = 512
MBUF_MAX_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Options:
    help: bool = False
    version: bool = False
    test_conf: bool = False
    daemonize: bool = False
    describe_stats: bool = False
    verbose: int = 5
    output: str | None = None  # None: stderr
    conf_file: str = "conf/nutcracker.yml"
    stats_port: int = 22222
    stats_addr: str = "0.0.0.0"
    stats_interval: int = 30000  # ms
    pid_file: str | None = None
    mbuf_size: int = 16384
    metrics_addr: tuple[str, int] | None = None  # keyshard only: (host, port) or off
    nutcracker_quirks: bool = False  # keyshard only: reproduce nutcracker's defects too


class UsageError(Exception):
    """A bad command line; str() is the message without the program name."""


# --------------------------------------------------------------------------------------------
# Value checks, one per option that takes a value: (state, argument) -> None


def _number(opt: str, arg: str) -> int:
    value = nc_atoi(arg)
    if value < 0:
        raise UsageError(f"option -{opt} requires a number")
    return value


def _set_verbose(state: dict[str, Any], arg: str) -> None:
    state["verbose"] = _number("v", arg)


def _set_stats_port(state: dict[str, Any], arg: str) -> None:
    port = _number("s", arg)
    if not valid_port(port):
        raise UsageError(f"option -s value {port} is not a valid port")
    state["stats_port"] = port


def _set_stats_interval(state: dict[str, Any], arg: str) -> None:
    state["stats_interval"] = _number("i", arg)


def _set_mbuf_size(state: dict[str, Any], arg: str) -> None:
    size = nc_atoi(arg)
    if size <= 0:
        raise UsageError("option -m requires a non-zero number")
    if not MBUF_MIN_SIZE <= size <= MBUF_MAX_SIZE:
        raise UsageError(
            f"mbuf chunk size must be between {MBUF_MIN_SIZE} and {MBUF_MAX_SIZE} bytes"
        )
    state["mbuf_size"] = size


def parse_host_port(text: str) -> tuple[str, int] | None:
    """"host:port", split at the last ':' ("[::1]:9100" and "::1:9100" both work)."""
    host, sep, port_text = text.rpartition(":")
    port = nc_atoi(port_text)
    if not sep or not host or not valid_port(port):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _set_metrics_addr(state: dict[str, Any], arg: str) -> None:
    addr = parse_host_port(arg)
    if addr is None:
        raise UsageError(f"option --metrics-addr value '{arg}' is not a valid \"host:port\"")
    state["metrics_addr"] = addr


def _setter(name: str) -> Callable[[dict[str, Any], str | None], None]:
    """A plain string option: the argument as given."""

    def store(state: dict[str, Any], arg: str | None) -> None:
        state[name] = arg

    return store


def _flags(*names: str) -> Callable[[dict[str, Any], str | None], None]:
    def store(state: dict[str, Any], _arg: str | None) -> None:
        for name in names:
            state[name] = True

    return store


# --------------------------------------------------------------------------------------------
# The option table: usage text, parsing and checks all come from it


@dataclass(frozen=True)
class Opt:
    short: str | None
    long: str
    arg: str | None  # None: no argument; else the noun of "requires a ..."
    apply: Callable[[dict[str, Any], Any], None]
    help: str
    default: str | None = None  # shown in the usage


OPTS: tuple[Opt, ...] = (
    Opt("h", "help", None, _flags("help", "version"), "show this help and exit"),
    Opt("V", "version", None, _flags("version"), "show the version and exit"),
    Opt("t", "test-conf", None, _flags("test_conf"), "check the configuration file and exit"),
    Opt("d", "daemonize", None, _flags("daemonize"), "detach and run in the background"),
    Opt("D", "describe-stats", None, _flags("describe_stats", "version"),
        "list the stats metrics and exit"),
    Opt("v", "verbose", "number", _set_verbose, "log level, 0 (emerg) .. 11 (pverb)", "5"),
    Opt("o", "output", "file name", _setter("output"), "log file", "stderr"),
    Opt("c", "conf-file", "file name", _setter("conf_file"), "configuration file",
        "conf/nutcracker.yml"),
    Opt("s", "stats-port", "number", _set_stats_port, "stats port", "22222"),
    Opt("a", "stats-addr", "string", _setter("stats_addr"), "stats address", "0.0.0.0"),
    Opt("i", "stats-interval", "number", _set_stats_interval,
        "stats aggregation interval in ms", "30000"),
    Opt("p", "pid-file", "file name", _setter("pid_file"), "pid file", "off"),
    Opt("m", "mbuf-size", "number", _set_mbuf_size,
        f"buffer chunk size in bytes, {MBUF_MIN_SIZE}..{MBUF_MAX_SIZE}", "16384"),
    Opt(None, "metrics-addr", "host:port", _set_metrics_addr,
        "serve Prometheus metrics on this address", "off"),
    Opt(None, "nutcracker-quirks", None, _flags("nutcracker_quirks"),
        "also reproduce the nutcracker defects keyshard fixes (README)"),
)
_BY_SHORT = {o.short: o for o in OPTS if o.short}


def _missing(opt: Opt) -> UsageError:
    name = f"-{opt.short}" if opt.short else f"--{opt.long}"
    return UsageError(f"option {name} requires a {opt.arg}")


def _find_long(name: str) -> Opt:
    exact = [o for o in OPTS if o.long == name]
    found = exact or [o for o in OPTS if o.long.startswith(name)]
    if len(found) != 1 or not name:
        raise UsageError(f"invalid option -- '--{name}'")
    return found[0]


def _long(word: str, argv: list[str], i: int) -> tuple[Opt, str | None, int]:
    """Parse `--name[=value]` at argv[i - 1]; returns the option, its value, the next index."""
    name, eq, value = word[2:].partition("=")
    opt = _find_long(name)
    if opt.arg is None:
        if eq:  # getopt_long reports the option's short letter here
            raise UsageError(f"invalid option -- '{opt.short}'")
        return opt, None, i
    if eq:
        return opt, value, i
    if i >= len(argv):
        raise _missing(opt)
    return opt, argv[i], i + 1


def _short(word: str, argv: list[str], i: int) -> tuple[list[tuple[Opt, str | None]], int]:
    """The options of a `-abc` cluster, in order, and the next index (the last option of
    the cluster may take the rest of the word or argv[i] as its value)."""
    found: list[tuple[Opt, str | None]] = []
    for j in range(1, len(word)):
        opt = _BY_SHORT.get(word[j])
        if opt is None:
            raise UsageError(f"invalid option -- '{word[j]}'")
        if opt.arg is None:
            found.append((opt, None))
        elif j + 1 < len(word):
            return found + [(opt, word[j + 1 :])], i
        elif i < len(argv):
            return found + [(opt, argv[i])], i + 1
        else:
            raise _missing(opt)
    return found, i


def _scan(argv: list[str]) -> Iterator[tuple[Opt, str | None]]:
    """(option, argument) pairs in command-line order (Rule 1); lazily, so that a bad value
    stops the scan before later options are looked at."""
    i = 0
    while i < len(argv):
        word, i = argv[i], i + 1
        if word == "--":
            return
        if word.startswith("--"):
            opt, value, i = _long(word, argv, i)
            yield opt, value
        elif word.startswith("-") and word != "-":
            found, i = _short(word, argv, i)
            yield from found


def parse_args(argv: list[str]) -> Options:
    """Options from the arguments (without the program name); UsageError if one is bad."""
    state: dict[str, Any] = {}
    for opt, value in _scan(argv):
        opt.apply(state, value)
    return Options(**state)


# --------------------------------------------------------------------------------------------
# Texts


def banner_lines() -> list[str]:
    """The version banner; the second line says whether the compiled twins are in use."""
    extensions = "compiled (Cython)" if speedups_in_use() else "pure Python"
    return [f"This is {PROG}-{__version__}", f"extensions: {extensions}"]


def usage() -> str:
    lines = [
        f"Usage: {PROG} [-?hVdDt] [-v verbosity level] [-o output file]",
        f"{'':{len(PROG) + 8}}[-c conf file] [-s stats port] [-a stats addr]",
        f"{'':{len(PROG) + 8}}[-i stats interval] [-p pid file] [-m mbuf size]",
        f"{'':{len(PROG) + 8}}[--metrics-addr host:port] [--nutcracker-quirks]",
        "",
        "Options:",
    ]
    for opt in OPTS:
        flag = f"-{opt.short}, " if opt.short else "    "
        arg = "" if opt.arg is None else ("=N" if opt.arg == "number" else "=S")
        default = "" if opt.default is None else f" (default: {opt.default})"
        lines.append(f"  {flag}{'--' + opt.long + arg:<18} : {opt.help}{default}")
    return "\n".join(lines) + "\n"


def _err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _show_version(options: Options) -> int:
    text = "\n".join(banner_lines()) + "\n\n"
    if options.help:
        text += usage() + "\n"
    if options.describe_stats:
        text += describe_stats()
    _err(text)
    return 0


def _load(path: str) -> list[PoolConf] | None:
    """The pools of `path`, or None after printing why the file is refused."""
    try:
        return load_config(path)
    except ConfigError as err:
        _err(f"{PROG}: configuration file '{path}' syntax is invalid\n{err}\n")
        return None


def _test_conf(path: str) -> int:
    if _load(path) is None:
        return 1
    _err(f"{PROG}: configuration file '{path}' syntax is ok\n")
    return 0


# --------------------------------------------------------------------------------------------
# A normal run


def _check_stats_addr(options: Options) -> str | None:
    """Why the stats address cannot be resolved, or None (nutcracker fails on it at start)."""
    try:
        socket.getaddrinfo(options.stats_addr, str(options.stats_port), socket.AF_UNSPEC,
                           socket.SOCK_STREAM, 0, socket.AI_NUMERICSERV)
    except (OSError, UnicodeError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return (f"address resolution of node '{options.stats_addr}' service "
                f"'{options.stats_port}' failed: {reason}")
    return None


def _start_logging(options: Options) -> bool:
    from keyshard import log

    try:
        log.setup(options.verbose, options.output)
    except OSError as err:
        _err(f"opening log file '{options.output}' failed: {err.strerror}\n")
        return False
    return True


def _detach(options: Options) -> bool:
    """Daemonize and write the pid file, as asked; False (after saying why) on failure."""
    from keyshard import daemon, log

    if options.daemonize:
        daemon.daemonize()
    if options.pid_file:
        try:
            daemon.write_pid_file(options.pid_file)
        except OSError as err:
            log.logger().error("opening pid file '%s' failed: %s", options.pid_file, err.strerror)
            _err(f"{PROG}: opening pid file '{options.pid_file}' failed: {err.strerror}\n")
            return False
    return True


def _run(options: Options) -> int:
    pools = _load(options.conf_file)
    if pools is None or not _start_logging(options):
        return 1
    problem = _check_stats_addr(options)
    if problem is not None:
        _err(f"{PROG}: {problem}\n")
        return 1
    if not _detach(options):
        return 1
    from keyshard import app

    return int(app.run(options, pools))


def main(argv: list[str] | None = None) -> int:
    """The `keyshard` command; returns the exit status."""
    try:
        options = parse_args(sys.argv[1:] if argv is None else list(argv))
    except UsageError as err:
        _err(f"{PROG}: {err}\n{usage()}")
        return 1
    if options.version:
        return _show_version(options)
    if options.test_conf:
        return _test_conf(options.conf_file)
    return _run(options)


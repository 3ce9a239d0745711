"""Configuration, step one: the YAML stream as nutcracker's pre-validation sees it.

This module owns `ConfigError` and the checks nutcracker runs before it looks at any
directive (its `conf_pre_validate`): the stream holds exactly one YAML document, no
disallowed token (flow style, anchors, aliases, tags, directives, `---`, `...`), and the
event structure is pools of `key: scalar` with exactly one sequence each, depth <= 2.
`config.py` builds on it.

Rule 1: the first failure wins, in nutcracker's order: document, tokens, structure.
Rule 2: a failure is one `ConfigError` line naming the file (and line, and pool when known)
        with nutcracker's own phrase; `.nc_message` is the exact text nutcracker logs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

try:  # libyaml, the same parser nutcracker links against, when PyYAML was built with it
    Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure-Python PyYAML
    Loader = yaml.SafeLoader


class ConfigError(Exception):
    """A config file that must not start the proxy. str(err) is one clear line."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        pool: str | None = None,
        line: int | None = None,
        nc_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.pool = pool
        self.line = line
        self.nc_message = nc_message


# --------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class Where:
    path: str
    line: int | None = None
    pool: str | None = None


def fail(
    where: Where, text: str, nc_message: str | None, detail: str | None = None
) -> ConfigError:
    """One line: conf: file 'F', pool 'P', line N: <nutcracker's phrase> (<detail>)."""
    message = f"conf: file '{where.path}'"
    if where.pool is not None:
        message += f", pool '{where.pool}'"
    if where.line is not None:
        message += f", line {where.line}"
    message += f": {text}"
    if detail:
        message += f" ({detail})"
    return ConfigError(
        " ".join(message.splitlines()),
        path=where.path, pool=where.pool, line=where.line, nc_message=nc_message,
    )


def line_of(node: Any) -> int | None:
    mark = getattr(node, "start_mark", None)
    return None if mark is None else int(mark.line) + 1


def quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Pre-validation: one document, allowed tokens, structure (nutcracker's conf_pre_validate)

_YAML_ERROR_CODES: tuple[tuple[type[yaml.YAMLError], int], ...] = (
    (yaml.reader.ReaderError, 2),
    (yaml.scanner.ScannerError, 3),
    (yaml.parser.ParserError, 4),
    (yaml.composer.ComposerError, 5),
)

# libyaml token numbers, as nutcracker prints them.
_DISALLOWED_TOKENS: dict[type[yaml.Token], tuple[str, int]] = {
    yaml.DocumentStartToken: ("document start", 5),
    yaml.DocumentEndToken: ("document end", 6),
    yaml.FlowSequenceStartToken: ("flow sequence start", 10),
    yaml.FlowSequenceEndToken: ("flow sequence end", 11),
    yaml.FlowMappingStartToken: ("flow mapping start", 12),
    yaml.FlowMappingEndToken: ("flow mapping end", 13),
    yaml.FlowEntryToken: ("flow entry", 15),
    yaml.AliasToken: ("alias", 18),
    yaml.AnchorToken: ("anchor", 19),
    yaml.TagToken: ("tag", 20),
}


def _yaml_failure(err: yaml.YAMLError, path: str, doing: str) -> ConfigError:
    code = next((c for cls, c in _YAML_ERROR_CODES if isinstance(err, cls)), 0)
    mark = getattr(err, "problem_mark", None)
    line = None if mark is None else int(mark.line) + 1
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
    text = f"failed (err {code}) to {doing}"
    return fail(Where(path, line), text, text, str(problem))


def load_document(stream: str | bytes, path: str) -> Any:
    try:
        nodes = list(yaml.compose_all(stream, Loader=Loader))
    except yaml.YAMLError as err:
        raise _yaml_failure(err, path, "get the next yaml document") from None
    if len(nodes) != 1:
        text = f"must contain only 1 document; found {len(nodes)} documents"
        raise fail(Where(path), text, f"'{path}' {text}")
    return nodes[0]


def _token_name(token: yaml.Token) -> tuple[str, int] | None:
    if isinstance(token, yaml.DirectiveToken):
        return ("version directive", 3) if token.name == "YAML" else ("tag directive", 4)
    return _DISALLOWED_TOKENS.get(type(token))


def check_tokens(stream: str | bytes, path: str) -> None:
    try:
        for token in yaml.scan(stream, Loader=Loader):
            found = _token_name(token)
            if found is not None:
                text = f"{found[0]} token ({found[1]}) is disallowed"
                raise fail(Where(path, line_of(token)), text, text)
    except yaml.YAMLError as err:
        raise _yaml_failure(err, path, "scan next token") from None


class _Structure:
    """nutcracker's conf_validate_structure, fed one YAML event at a time.

    Pools (depth 1) are mappings of `key: scalar` (depth 2) holding exactly one sequence.
    Each step returns None or the phrase of the first violation.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.seq = False
        self.count = [0, 0, 0]

    def mapping_start(self) -> str | None:
        error = None
        if self.depth == 1 and self.count[1] != 1:
            error = 'has more than one "key:value" at depth 1'
        elif self.depth >= 2:
            error = "has a depth greater than 2"
        self.depth += 1
        return error

    def mapping_end(self) -> str | None:
        error = None
        if self.depth == 2:
            if not self.seq:
                error = "missing sequence directive at depth 2"
            self.seq = False
        self.depth -= 1
        self.count[self.depth] = 0
        return error

    def sequence_start(self) -> str | None:
        error = None
        if self.seq:
            error = "has more than one sequence directive"
        elif self.depth != 2:
            error = f"has sequence at depth {self.depth} instead of 2"
        elif self.count[2] != 1:
            error = 'has invalid "key:value" at depth 2'
        self.seq = True
        return error

    def sequence_end(self) -> str | None:
        self.count[self.depth] = 0
        return None

    def scalar(self) -> str | None:
        if self.depth == 0:
            return 'has invalid empty "key:" at depth 0'
        if self.depth == 1 and self.count[1] != 0:
            return 'has invalid mapping "key:" at depth 1'
        if self.depth == 2 and self.count[2] == 2:
            self.count[2] = 0  # a "key: value" pair is complete
        self.count[self.depth] += 1
        return None


_STRUCTURE_STEPS: dict[type[yaml.Event], Callable[[_Structure], str | None]] = {
    yaml.MappingStartEvent: _Structure.mapping_start,
    yaml.MappingEndEvent: _Structure.mapping_end,
    yaml.SequenceStartEvent: _Structure.sequence_start,
    yaml.SequenceEndEvent: _Structure.sequence_end,
    yaml.ScalarEvent: _Structure.scalar,
}


def check_structure(stream: str | bytes, path: str) -> None:
    state = _Structure()
    for event in yaml.parse(stream, Loader=Loader):
        step = _STRUCTURE_STEPS.get(type(event))
        error = step(state) if step is not None else None
        if error is not None:
            raise fail(Where(path, line_of(event)), error, f"'{path}' {error}")

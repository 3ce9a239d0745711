#!/usr/bin/env bash
# Installs what keyshard's demo, tests and benchmark need on a Debian machine:
# the backends and nutcracker (apt), and a virtualenv with keyshard and its test and dev
# (type checking) extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="redis-server redis-tools memcached nutcracker libmemcached-tools netcat-openbsd"
missing=""
for cmd in redis-server redis-cli redis-benchmark memcached nutcracker memcslap nc; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
    echo "deps: installing apt packages (missing:$missing)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PKGS >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "deps: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.keyshard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ -n "$(find src -newer "$stamp" -name '*.pyx' 2>/dev/null)" ]; then
    echo "deps: installing keyshard into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -e ".[test,dev]"
    touch "$stamp"
fi

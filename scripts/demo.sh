#!/usr/bin/env bash
# Starts two redis-servers and one memcached on 127.0.0.1, and keyshard in front of them with
# conf/demo.yml. Ctrl-C stops everything (each process by its own PID).
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(mktemp -d /tmp/keyshard-demo.XXXXXX)
pids=()
cleanup() {
    trap - INT TERM EXIT
    echo; echo "demo: stopping"
    # keyshard first (it was started last), then the backends
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup INT TERM EXIT

for port in 6390 6391; do
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run" \
        --daemonize no >"$run/redis-$port.log" 2>&1 &
    pids+=($!)
done
memcached -l 127.0.0.1 -p 11230 -U 0 -u "$(id -un)" -m 64 >"$run/memcached.log" 2>&1 &
pids+=($!)

.venv/bin/keyshard -c conf/demo.yml -s 22222 -a 127.0.0.1 &
pids+=($!)
sleep 1
cat <<TXT

keyshard is running (Ctrl-C stops it and the backends):
  Redis pool 'alpha'     redis-cli -p 22121            (two redis-servers on 6390, 6391)
  memcached pool 'gamma' printf 'set k 0 0 1\r\nv\r\nget k\r\n' | nc -q1 127.0.0.1 22122
  stats                  nc 127.0.0.1 22222

TXT
wait "${pids[-1]}"

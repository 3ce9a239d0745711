#!/usr/bin/env bash
# Runs the whole test suite twice: against the compiled twins (keyshard._speedups, which must
# be built and in use: KEYSHARD_EXPECT_EXTENSIONS=1) and against the pure-Python reference
# (KEYSHARD_NO_EXTENSIONS=1). Fails if either run fails; both always run.
#
#   scripts/test.sh [pytest args]           both modes
#   KEYSHARD_TEST_MODES=pure scripts/test.sh tests/unit   one mode ("compiled" or "pure")
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MODES=${KEYSHARD_TEST_MODES:-"compiled pure"}

# The compiled run must test the current sources: rebuild the extension in place when a
# Cython source is newer than it (or it is missing), the way `pip install -e .` builds it.
ensure_built() {
    local so fresh=1
    for mod in _speedups _netfast; do
        so=$(ls src/keyshard/$mod.*.so 2>/dev/null | head -n 1)
        if [ -z "$so" ] || [ -n "$(find src/keyshard setup.py -newer "$so" \
                \( -name '*.pyx' -o -name '*.pxi' -o -name setup.py \) 2>/dev/null)" ]; then
            fresh=0
        fi
    done
    [ $fresh = 1 ] && return 0
    echo "test: building keyshard._speedups (pip install -e . --no-deps)"
    .venv/bin/pip install -q --no-deps -e . || echo "test: the build failed"
}

status=0
for mode in $MODES; do
    case "$mode" in
    compiled)
        ensure_built
        echo "=== test: compiled extension (keyshard._speedups) ==="
        env -u KEYSHARD_NO_EXTENSIONS KEYSHARD_EXPECT_EXTENSIONS=1 \
            "$PY" -m pytest -p no:cacheprovider "$@"
        ;;
    pure)
        echo "=== test: pure Python (KEYSHARD_NO_EXTENSIONS=1) ==="
        env -u KEYSHARD_EXPECT_EXTENSIONS KEYSHARD_NO_EXTENSIONS=1 \
            "$PY" -m pytest -p no:cacheprovider "$@"
        ;;
    *)
        echo "test: unknown mode '$mode' (compiled, pure)" >&2
        false
        ;;
    esac
    rc=$?
    echo "=== test: $mode: $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)") ==="
    [ $rc -eq 0 ] || status=1
done
exit $status

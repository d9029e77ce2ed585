#!/bin/sh
# Container entrypoint: run `gmrseg ARGS...`, or `torchrun ... -m gmrseg ARGS...`
# when GMRSEG_NPROC_PER_NODE is greater than 1 (one per GPU).
set -eu

if [ "$#" -eq 0 ]; then
    set -- --help
fi

# `docker run IMAGE bash` (or any other program on the PATH) runs that program.
case "$1" in
    -*|validate|train|predict|evaluate|example-data|demo|benchmark) ;;
    *)
        if command -v "$1" >/dev/null 2>&1; then
            exec "$@"
        fi
        ;;
esac

nproc="${GMRSEG_NPROC_PER_NODE:-1}"
case "$nproc" in
    ''|*[!0-9]*)
        echo "gmrseg-entrypoint: GMRSEG_NPROC_PER_NODE must be a positive integer, got '$nproc'" >&2
        exit 2
        ;;
esac

if [ "$nproc" -gt 1 ]; then
    exec torchrun --standalone --nproc_per_node="$nproc" -m gmrseg "$@"
fi
exec gmrseg "$@"

#!/usr/bin/env bash
# Start N local processes of one Python module or script: the local stand-in for a pod launch.
#
#   launch/local_multihost.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-t TIMEOUT_S] [-p PORT] \
#       MODULE_OR_SCRIPT.py [ARGS...]
#
# Every process gets HLLM_COORDINATOR=127.0.0.1:PORT, HLLM_NUM_PROCESSES, HLLM_PROCESS_ID (read by
# launch/local_multihost.py:initialize), JAX_PLATFORMS=cpu and
# XLA_FLAGS=--xla_force_host_platform_device_count=D. Each runs under `timeout TIMEOUT_S` (a crash
# after a collective leaves the others hanging ~150 s otherwise); when one fails, the rest are
# stopped. Output lines are prefixed with [i]. Exit status: 0 when every process exited 0.
set -euo pipefail

N=2 D=2 T=300 PORT=""
while getopts "n:d:t:p:" opt; do
  case "$opt" in
    n) N="$OPTARG" ;; d) D="$OPTARG" ;; t) T="$OPTARG" ;; p) PORT="$OPTARG" ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -lt 1 ]; then sed -n '2,12p' "$0"; exit 2; fi
TARGET="$1"; shift

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
if [ -z "$PORT" ]; then
  PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
fi
if [[ "$TARGET" == *.py ]]; then RUN=("$TARGET"); else RUN=(-m "$TARGET"); fi

TMP="$(mktemp -d)"
pids=()
cleanup() {  # stop every process still running (timeout forwards the signal to its python)
  for f in "$TMP"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
}
trap 'cleanup; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < N; i++)); do
  (
    export HLLM_COORDINATOR="127.0.0.1:$PORT" HLLM_NUM_PROCESSES="$N" HLLM_PROCESS_ID="$i"
    export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    cd "$REPO"
    timeout --kill-after=5 "$T" "$PYTHON" "${RUN[@]}" "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
    echo "$!" > "$TMP/$i.pid"
    wait "$!"
  ) &
  pids+=("$!")
done

status=0
remaining=("${pids[@]}")
while [ "${#remaining[@]}" -gt 0 ]; do
  next=()
  for p in "${remaining[@]}"; do
    if kill -0 "$p" 2>/dev/null; then next+=("$p"); continue; fi
    if ! wait "$p"; then status=1; fi
  done
  if [ "$status" -ne 0 ]; then echo "local_multihost: a process failed; stopping the others" >&2; cleanup; wait || true; break; fi
  remaining=("${next[@]+"${next[@]}"}")
  [ "${#remaining[@]}" -gt 0 ] && sleep 0.2
done
exit "$status"

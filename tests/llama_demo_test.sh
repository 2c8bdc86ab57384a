#!/bin/sh
# tests/llama_demo_test.sh BIN MODEL — a short run of the README's demo
# (kvshm-demo: real llama.cpp workers) on a cache of its own: 2 workers,
# 6 conversations, one worker killed while saving and one holding a pin.
# The demo's exit status covers the replayed restores (max |dlogit| = 0),
# the consistency check, no leaks and both kills; this script adds the hit
# rates (kvshm above 50%, and not below the private caches').
set -eu
bin=${1:?usage: llama_demo_test.sh BIN_DIR MODEL}
model=${2:?usage: llama_demo_test.sh BIN_DIR MODEL}
name="tldemo-$$"
out=$(mktemp /tmp/kvshm-llama-demo-test.XXXXXX)
cleanup() {
	"$bin/shmctl" -n "$name" destroy --force >/dev/null 2>&1 || true
	rm -f "/tmp/kvshm-demo-reaper.$name.log" "$out"
}
trap cleanup EXIT
if ! "$bin/kvshm-demo" -m "$model" -n "$name" -w 2 -c 6 -b 2 -r 2 -s 24M --samples 4 -q >"$out" 2>&1; then
	cat "$out" >&2
	echo "llama_demo_test: kvshm-demo failed" >&2
	exit 1
fi
set -- $(sed -n 's/^hit rate *\([0-9]*\)% *\([0-9]*\)%.*/\1 \2/p' "$out")
leaks=$(sed -n 's/^leaks after the kills *\([0-9]*\).*/\1/p' "$out")
mism=$(sed -n 's/^correctness .* \([0-9]*\) mismatches$/\1/p' "$out")
if [ $# -ne 2 ] || [ "$1" -le 50 ] || [ "$1" -lt "$2" ] || [ "$leaks" != 0 ] || [ "$mism" != 0 ]; then
	cat "$out" >&2
	echo "llama_demo_test: hit rate kvshm '${1:-}'% private '${2:-}'% (want > 50 and >= private), leaks '$leaks', mismatches '$mism'" >&2
	exit 1
fi
echo "llama_demo_test: ok (hit rate $1% shared, $2% private; 2 workers killed, 0 leaks, 0 logit mismatches)"

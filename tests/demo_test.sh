#!/bin/sh
# tests/demo_test.sh BIN — a short run of the stand-in demo
# (kvshm-standin-demo: synthetic states, no engine, over the ram, ram_file
# and disk tiers with demotion and promotion) on a cache of its own: 48 requests, one worker killed while saving and one while
# holding pins. The demo's own exit status covers every restore verified, the
# final consistency check, no leaks and both kills landing where intended;
# this script adds the hit rate and removes the cache and its directories.
set -eu
bin=${1:?usage: demo_test.sh BIN_DIR}
name="tdemo-$$"
out=$(mktemp /tmp/kvshm-demo-test.XXXXXX)
cleanup() {
	"$bin/shmctl" -n "$name" destroy --force >/dev/null 2>&1 || true
	rm -rf "/var/tmp/kvshm-demo.$name" "/dev/shm/kvshm-files.$name" "/tmp/kvshm-demo-reaper.$name.log" "$out"
}
trap cleanup EXIT
if ! "$bin/kvshm-standin-demo" -n "$name" -c 12 --prefill-us 20 --decode-us 50 --no-baseline -q >"$out" 2>&1; then
	cat "$out" >&2
	echo "demo_test: kvshm-standin-demo failed" >&2
	exit 1
fi
rate=$(sed -n 's/^lookups .*hit rate \([0-9]*\)%.*/\1/p' "$out")
leaks=$(sed -n 's/^leaks after the kills *\([0-9]*\).*/\1/p' "$out")
if [ -z "$rate" ] || [ "$rate" -le 50 ] || [ "$leaks" != 0 ]; then
	cat "$out" >&2
	echo "demo_test: hit rate '${rate}'% (want > 50), leaks '${leaks}' (want 0)" >&2
	exit 1
fi
echo "demo_test: ok (hit rate $rate%, 2 workers killed, 0 leaks)"

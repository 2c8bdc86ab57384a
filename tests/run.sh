#!/bin/sh
# Run test programs: tests/run.sh BUILD_DIR test_a test_b ...
# Each program's cmocka verdict goes to stderr as it runs; this prints a
# summary and exits non-zero if any program failed, crashed or hung.
dir=$1
shift
# Tests that run the tools as real processes find them here (the same
# variant as the tests: crash points compiled in, sanitizers for check).
KVSHM_BIN_DIR=$(cd "$dir/bin" 2>/dev/null && pwd)
export KVSHM_BIN_DIR
failed=""
for t in "$@"; do
	printf '\n===== %s =====\n' "$t" >&2
	# 900 s: a hung test is a failure, not a stalled CI.
	if ! timeout -k 10 900 "$dir/tests/$t"; then
		failed="$failed $t"
	fi
done
if [ -n "$failed" ]; then
	printf '\nFAILED:%s\n' "$failed" >&2
	exit 1
fi
printf '\nall %d test programs passed (%s)\n' "$#" "$dir" >&2

#!/bin/sh
# Install what kvshm needs on Debian 12, and nothing that is already there.
#   scripts/deps.sh build    compiler, pkg-config, libbsd, tdb, cmocka, xxhash,
#                            hiredis (the remote tier's client, remote/),
#                            libmicrohttpd (kvshm-reaper --metrics-listen); tmux
#                            (test_shmctl drives `shmctl top` in it)
#   scripts/deps.sh python   the Python package: venv, pip, headers, setuptools
#                            and wheel (an offline build), pytest for its tests
#   scripts/deps.sh remote   redis-server and redis-cli, which the remote tests
#                            start (standalone servers and a cluster)
#   scripts/deps.sh metrics  promtool (Debian's prometheus), which validates the
#                            reaper's /metrics in make test
#   scripts/deps.sh bench    the peers `make bench` runs beside kvshm
#   scripts/deps.sh fuzz     clang and libFuzzer for `make fuzz`
# Runs apt-get only when a package is missing; as root it installs, otherwise
# it names the packages and fails.
set -eu

build_pkgs="gcc make pkg-config libbsd-dev libtdb-dev libcmocka-dev libxxhash-dev libmicrohttpd-dev libhiredis-dev tdb-tools procps tmux"
remote_pkgs="redis-server redis-tools"
bench_pkgs="redis-server memcached libhiredis-dev libmemcached-dev liblmdb-dev"
python_pkgs="python3 python3-venv python3-pip python3-dev python3-setuptools python3-wheel python3-pytest"
metrics_pkgs="prometheus"
fuzz_pkgs="clang libclang-rt-14-dev"

want=""
for group in "${@:-build}"; do
	case "$group" in
	build) want="$want $build_pkgs" ;;
	bench) want="$want $bench_pkgs" ;;
	python) want="$want $python_pkgs" ;;
	metrics) want="$want $metrics_pkgs" ;;
	remote) want="$want $remote_pkgs" ;;
	fuzz) want="$want $fuzz_pkgs" ;;
	*) echo "deps.sh: unknown group '$group' (build, python, metrics, remote, bench, fuzz)" >&2; exit 2 ;;
	esac
done

missing=""
for p in $want; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "deps.sh: missing packages:$missing" >&2
	echo "deps.sh: run as root, or: sudo apt-get install -y$missing" >&2
	exit 1
fi

echo "deps.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2 || true
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing >&2

#!/bin/sh
# Install what kvshm needs on Debian 12, and nothing that is already there.
#   scripts/deps.sh build    compiler, pkg-config, libbsd, tdb, cmocka, jansson
#                            (test_shmctl reads --json with it), xxhash,
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
#   scripts/deps.sh llama    the llama.cpp engine (prebuilt, from npm) under
#                            build/llama/: npm and git from Debian, then the
#                            pinned packages below, verified and unpacked
# Runs apt-get only when a package is missing; as root it installs, otherwise
# it names the packages and fails. The engine is fetched only when
# build/llama/ does not hold it already (a second run fetches nothing).
set -eu

build_pkgs="gcc make pkg-config libbsd-dev libtdb-dev libcmocka-dev libjansson-dev libxxhash-dev libmicrohttpd-dev libhiredis-dev tdb-tools procps tmux"
remote_pkgs="redis-server redis-tools"
bench_pkgs="redis-server memcached libhiredis-dev libmemcached-dev liblmdb-dev"
python_pkgs="python3 python3-venv python3-pip python3-dev python3-setuptools python3-wheel python3-pytest"
metrics_pkgs="prometheus"
fuzz_pkgs="clang libclang-rt-14-dev"
llama_pkgs="npm git ca-certificates"

# The engine: prebuilt llama.cpp for x86-64 Linux, and the source tree it was
# built from (headers, the tokenizer GGUF) as a git bundle inside the second
# package. The integrity strings are npm's dist.integrity for these versions
# (`npm view PKG@VER dist.integrity`): a tarball that does not match is refused.
llama_ver="3.21.1"
llama_bin_pkg="@node-llama-cpp/linux-x64"
llama_bin_tgz="node-llama-cpp-linux-x64-$llama_ver.tgz"
llama_bin_sri="sha512-Totj6RTDMGo3FoK2yNUaz/oGmZD0olAqTrRluFUWmu0kW2i9TOzHSW0OWCAiGkzRCVX0WsU2CyUQo/W2NYtdPA=="
llama_src_pkg="node-llama-cpp"
llama_src_tgz="node-llama-cpp-$llama_ver.tgz"
llama_src_sri="sha512-E3N0Ev2Va0wzydvXYFwM9Hvyo07PoWjt8T/9GMc43Cvt8YkV/NU/tYUgEMC1grTPv2o9PRjQi0G3Wb5P/awiMg=="
llama_libs="libllama.v0.4.0.so libggml.v0.4.0.so libggml-base.so"
llama_headers="include/llama.h ggml/include/ggml.h ggml/include/ggml-alloc.h ggml/include/ggml-backend.h
	ggml/include/ggml-cpu.h ggml/include/ggml-opt.h ggml/include/gguf.h"
llama_vocab="models/ggml-vocab-llama-spm.gguf"

want=""
fetch_llama=0
for group in "${@:-build}"; do
	case "$group" in
	build) want="$want $build_pkgs" ;;
	bench) want="$want $bench_pkgs" ;;
	python) want="$want $python_pkgs" ;;
	metrics) want="$want $metrics_pkgs" ;;
	remote) want="$want $remote_pkgs" ;;
	fuzz) want="$want $fuzz_pkgs" ;;
	llama) want="$want $llama_pkgs"; fetch_llama=1 ;;
	*) echo "deps.sh: unknown group '$group' (build, python, metrics, remote, bench, fuzz, llama)" >&2; exit 2 ;;
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

top=$(cd "$(dirname "$0")/.." && pwd)
eng="$top/build/llama"

# True when build/llama/ holds everything the engine group unpacks.
llama_present() {
	[ -f "$eng/stamp" ] && [ "$(cat "$eng/stamp")" = "$llama_bin_sri $llama_src_sri" ] || return 1
	for f in $llama_libs; do [ -f "$eng/lib/$f" ] || return 1; done
	ls "$eng"/lib/libggml-cpu-*.so >/dev/null 2>&1 || return 1
	for f in $llama_headers; do [ -f "$eng/include/${f##*/}" ] || return 1; done
	[ -f "$eng/$llama_vocab" ]
}

# Debian packages are needed only when the engine must still be fetched.
[ "$fetch_llama" = 1 ] && llama_present && want=$(echo "$want" | sed "s/ $llama_pkgs//")

missing=""
for p in $want; do
	st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$st" in
	*"install ok installed"*) ;;
	*) missing="$missing $p" ;;
	esac
done
# npm may come from elsewhere than Debian (nodesource, nvm): use it if it runs.
case "$missing" in *" npm"*) command -v npm >/dev/null 2>&1 && missing=$(echo "$missing" | sed 's/ npm//') ;; esac

if [ -n "$missing" ]; then
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
fi

[ "$fetch_llama" = 1 ] || exit 0
llama_present && exit 0

# sha512 of FILE against an npm integrity string ("sha512-" + base64).
sri_ok() {
	want_hex=$(printf '%s' "${2#sha512-}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
	have_hex=$(sha512sum "$1" | cut -d' ' -f1)
	[ -n "$want_hex" ] && [ "$want_hex" = "$have_hex" ]
}

# Fetch PKG into build/llama/dl/TGZ unless a verified copy is there.
fetch_pkg() {
	if [ -f "$eng/dl/$2" ] && sri_ok "$eng/dl/$2" "$3"; then
		return 0
	fi
	rm -f "$eng/dl/$2"
	echo "deps.sh: fetching $1@$llama_ver from the npm registry" >&2
	if ! (cd "$eng/dl" && npm pack --silent "$1@$llama_ver" >/dev/null); then
		echo "deps.sh: 'npm pack $1@$llama_ver' failed: llama.cpp cannot be fetched." >&2
		echo "deps.sh: the npm registry must be reachable (check npm's registry and proxy settings," >&2
		echo "deps.sh: 'npm config get registry'), or put $2 (npm pack of $1@$llama_ver) in $eng/dl/" >&2
		exit 1
	fi
	if [ ! -f "$eng/dl/$2" ]; then
		echo "deps.sh: npm pack $1@$llama_ver did not write $eng/dl/$2" >&2
		exit 1
	fi
	if ! sri_ok "$eng/dl/$2" "$3"; then
		echo "deps.sh: $eng/dl/$2 does not match its recorded integrity $3; removed" >&2
		rm -f "$eng/dl/$2"
		exit 1
	fi
}

mkdir -p "$eng/dl"
fetch_pkg "$llama_bin_pkg" "$llama_bin_tgz" "$llama_bin_sri"
fetch_pkg "$llama_src_pkg" "$llama_src_tgz" "$llama_src_sri"

tmp=$(mktemp -d "$eng/unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The shared libraries: llama, ggml, ggml-base and one CPU backend per CPU
# family (ggml picks the best at run time). Not the node addon.
tar -xzf "$eng/dl/$llama_bin_tgz" -C "$tmp" --wildcards 'package/bins/linux-x64/lib*.so'
rm -rf "$eng/lib" && mkdir -p "$eng/lib"
for f in $llama_libs; do mv "$tmp/package/bins/linux-x64/$f" "$eng/lib/"; done
mv "$tmp"/package/bins/linux-x64/libggml-cpu-*.so "$eng/lib/"
# Headers and the tokenizer GGUF from the source bundle.
tar -xzf "$eng/dl/$llama_src_tgz" -C "$tmp" package/llama/gitRelease.bundle
git clone -q --no-checkout "$tmp/package/llama/gitRelease.bundle" "$tmp/src"
# shellcheck disable=SC2086
git -C "$tmp/src" checkout -q HEAD -- $llama_headers "$llama_vocab"
rm -rf "$eng/include" "$eng/models" && mkdir -p "$eng/include" "$eng/models"
for f in $llama_headers; do mv "$tmp/src/$f" "$eng/include/"; done
mv "$tmp/src/$llama_vocab" "$eng/models/"
git -C "$tmp/src" rev-parse HEAD >"$eng/source-commit"
printf '%s\n' "$llama_bin_sri $llama_src_sri" >"$eng/stamp"
echo "deps.sh: llama.cpp ($llama_ver) in $eng: lib/, include/, models/" >&2

#!/bin/sh
# tests/install_test.sh ENGINE MODEL — install into a DESTDIR and build a
# program against the installed kvshm-llama.pc: the headers, the libraries,
# pkg-config metadata, the tools, man pages, unit and completion all land
# where they should, and examples/llama_worker.c (a llama.cpp worker)
# compiles against them and the fetched engine (ENGINE: build/llama), links
# and runs with MODEL.
set -eu
engine=$(cd "${1:?usage: install_test.sh ENGINE_DIR MODEL}" && pwd)
model=$(cd "$(dirname "${2:?usage: install_test.sh ENGINE_DIR MODEL}")" && pwd)/$(basename "$2")
top=$(cd "$(dirname "$0")/.." && pwd)
dest=$(mktemp -d /tmp/kvshm-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
cd "$top"
make --no-print-directory install DESTDIR="$dest" prefix=/usr >/dev/null
for f in usr/include/kvshm.h usr/lib/libkvshm.a usr/lib/libkvshm.so usr/lib/pkgconfig/kvshm.pc \
	usr/include/kvshm-llama.h usr/lib/libkvshm-llama.a usr/lib/libkvshm-llama.so usr/lib/pkgconfig/kvshm-llama.pc \
	usr/bin/kvshm-reaper usr/bin/shmctl usr/share/man/man8/kvshm-reaper.8 usr/share/man/man1/shmctl.1 \
	usr/lib/systemd/system/kvshm-reaper@.service usr/share/bash-completion/completions/shmctl; do
	[ -e "$dest/$f" ] || { echo "install_test: $f was not installed" >&2; exit 1; }
done
grep -q '^ExecStart=/usr/bin/kvshm-reaper' "$dest/usr/lib/systemd/system/kvshm-reaper@.service" ||
	{ echo "install_test: the unit does not name /usr/bin/kvshm-reaper" >&2; exit 1; }
export PKG_CONFIG_PATH="$dest/usr/lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest"
flags=$(pkg-config --cflags --libs kvshm-llama)
cc -std=c11 -Wall -Wextra -Werror examples/llama_worker.c $flags -I"$engine/include" -L"$engine/lib" \
	-l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -l:libggml-base.so -Wl,-rpath,"$engine/lib" -o "$dest/llama_worker"
LD_LIBRARY_PATH="$dest/usr/lib" "$dest/llama_worker" "$model"
# The shared libraries export the API and nothing internal.
for lib in libkvshm.so libkvshm-llama.so; do
	if nm -D --defined-only "$dest/usr/lib/$lib" | grep -q ' kvshm__'; then
		echo "install_test: internal kvshm__ symbols are exported by $lib" >&2
		exit 1
	fi
done
nm -D --defined-only "$dest/usr/lib/libkvshm-llama.so" | grep -q ' kvshm_llama_restore$'
nm -D --defined-only "$dest/usr/lib/libkvshm.so" | grep -q ' kvshm_lookup$'
"$dest/usr/bin/shmctl" --version >/dev/null
make --no-print-directory uninstall DESTDIR="$dest" prefix=/usr >/dev/null
left=$(find "$dest/usr" -type f | wc -l)
[ "$left" -eq 0 ] || { echo "install_test: uninstall left $left files" >&2; find "$dest/usr" -type f >&2; exit 1; }
echo "install_test: DESTDIR install, pkg-config build and run, uninstall: ok"

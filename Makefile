# kvshm — GNU Makefile.
#
#   make            library (static + shared) and tools, release flags
#   make demo       fetch the llama.cpp engine, build, run the worker-pool demo
#   make test       install missing Debian packages and the engine, build the
#                   test variant (crash points compiled in), run every test
#   make check      the same tests under ASan + UBSan (-fno-sanitize-recover=all)
#   make install    prefix=/usr/local DESTDIR= ; make uninstall
#   make clean
#
# Variants: build/rel (release), build/tst (test: crash points, lock-order
# asserts, hash injection), build/san (test + sanitizers). User CFLAGS and
# LDFLAGS are appended, never replaced.

VERSION      := 0.2.0
SOVERSION    := 1

prefix       ?= /usr/local
exec_prefix  ?= $(prefix)
bindir       ?= $(exec_prefix)/bin
libdir       ?= $(exec_prefix)/lib
includedir   ?= $(prefix)/include
datadir      ?= $(prefix)/share
mandir       ?= $(datadir)/man
systemdunitdir ?= $(prefix)/lib/systemd/system
pkgconfigdir ?= $(libdir)/pkgconfig
DESTDIR      ?=

CC           ?= cc
AR           ?= ar
PKG_CONFIG   ?= pkg-config
PKGS         := libbsd-overlay tdb libxxhash hiredis
TEST_PKGS    := cmocka jansson

# Recursively expanded: pkg-config runs after `deps` has installed it.
DEP_CFLAGS    = $(shell $(PKG_CONFIG) --cflags $(PKGS))
DEP_LIBS      = $(shell $(PKG_CONFIG) --libs $(PKGS)) -lm
TEST_LIBS     = $(shell $(PKG_CONFIG) --libs $(TEST_PKGS))

WARN         := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
                -Wpointer-arith -Wformat=2
BASE_CFLAGS   = -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -pthread \
                -Iinclude -I. $(WARN) $(DEP_CFLAGS)
REL_FLAGS    := -O2 -g -DNDEBUG
TST_FLAGS    := -O1 -g -DKVSHM_TEST
SAN_FLAGS    := -O1 -g -DKVSHM_TEST -fsanitize=address,undefined \
                -fno-sanitize-recover=all -fno-omit-frame-pointer

# core/ is layered by folder (docs/architecture.md): its sources and headers
# are every .c and .h one folder down too; remote/ is the Redis client.
LIB_SRCS     := $(sort $(wildcard shm/*.c core/*.c core/*/*.c remote/*.c))
LIB_HDRS     := $(wildcard include/*.h shm/*.h core/*.h core/*/*.h remote/*.h)
TOOL_UTIL    := tools/util.c
TOOL_DEMO    := tools/demo.c
TOOLS        := $(patsubst tools/%.c,%,$(filter-out $(TOOL_UTIL) $(TOOL_DEMO),$(wildcard tools/*.c)))
TESTS        := $(patsubst tests/%.c,%,$(wildcard tests/test_*.c))
TEST_SUPPORT := $(wildcard tests/fixture/*.c)
TEST_HDRS    := tests/harness.h $(wildcard tests/fixture/*.h)

B            := build
REL_OBJS     := $(LIB_SRCS:%.c=$(B)/rel/%.o)

# ---- the llama.cpp engine and libkvshm-llama ----------------------------------
# The engine is fetched (prebuilt, from npm) into $(B)/llama by
# `scripts/deps.sh llama`; everything under llama/ builds only once it is
# there. Its libraries' sonames are their file names and they find each
# other through $ORIGIN; programs here get an rpath to them.
LLAMA_DIR     := $(B)/llama
LLAMA_HAVE     = $(wildcard $(LLAMA_DIR)/stamp)
LLAMA_CFLAGS   = -I$(LLAMA_DIR)/include
LLAMA_LIBS     = -L$(LLAMA_DIR)/lib -l:libllama.v0.4.0.so -l:libggml.v0.4.0.so -l:libggml-base.so -ldl
LLAMA_RPATH    = -Wl,-rpath,$(abspath $(LLAMA_DIR)/lib)
LLAMA_SRCS    := $(sort $(wildcard llama/*.c))
LLAMA_HDRS    := include/kvshm-llama.h $(wildcard llama/*.h)
LLAMA_TOOLS   := $(patsubst llama/tools/%.c,%,$(wildcard llama/tools/*.c))
LLAMA_TESTS   := $(patsubst llama/tests/%.c,%,$(wildcard llama/tests/test_*.c))
LLAMA_REL_OBJS := $(LLAMA_SRCS:%.c=$(B)/rel/%.o)
LLAMA_TST_OBJS := $(LLAMA_SRCS:%.c=$(B)/tst/%.o)
LLAMA_SAN_OBJS := $(LLAMA_SRCS:%.c=$(B)/san/%.o)
TST_OBJS     := $(LIB_SRCS:%.c=$(B)/tst/%.o)
SAN_OBJS     := $(LIB_SRCS:%.c=$(B)/san/%.o)

.PHONY: all lib tools llama deps engine test check install uninstall clean crashpoints demo bench bench-targets fuzz crashtest crashtest-quick layers
.DEFAULT_GOAL := all

all: lib tools $(if $(LLAMA_HAVE),llama)
lib: $(B)/libkvshm.a $(B)/libkvshm.so.$(VERSION) $(B)/kvshm.pc
tools: $(TOOLS:%=$(B)/bin/%) $(B)/bin/kvshm-standin-demo
llama: $(B)/libkvshm-llama.a $(B)/libkvshm-llama.so.$(VERSION) $(B)/kvshm-llama.pc $(LLAMA_TOOLS:%=$(B)/bin/%)

deps:
	@sh scripts/deps.sh build

# The llama.cpp engine, prebuilt from npm, verified, unpacked under
# $(B)/llama/ (scripts/deps.sh llama); a second run fetches nothing.
engine:
	@sh scripts/deps.sh build llama

# ---- objects, one rule per variant -------------------------------------------
$(B)/rel/%.o: %.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) -c $< -o $@
$(B)/tst/%.o: %.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TST_FLAGS) $(CFLAGS) -c $< -o $@
$(B)/san/%.o: %.c $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(CFLAGS) -c $< -o $@

# The adapter's objects also need the engine's headers.
$(LLAMA_REL_OBJS) $(LLAMA_TST_OBJS) $(LLAMA_SAN_OBJS): $(LLAMA_HDRS)
$(LLAMA_REL_OBJS) $(LLAMA_TST_OBJS) $(LLAMA_SAN_OBJS): BASE_CFLAGS += $(LLAMA_CFLAGS)

# ---- library -----------------------------------------------------------------
$(B)/libkvshm.a: $(REL_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
$(B)/libkvshm.so.$(VERSION): $(REL_OBJS)
	$(CC) -shared -pthread -Wl,-soname,libkvshm.so.$(SOVERSION) $(LDFLAGS) -o $@ $^ $(DEP_LIBS)
	ln -sf libkvshm.so.$(VERSION) $(B)/libkvshm.so.$(SOVERSION)
	ln -sf libkvshm.so.$(VERSION) $(B)/libkvshm.so
$(B)/libkvshm-tst.a: $(TST_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
$(B)/libkvshm-san.a: $(SAN_OBJS)
	rm -f $@ && $(AR) rcs $@ $^

# libkvshm-llama: over libkvshm and the engine. The shared library names
# only libllama (no path: a program links the engine itself, with its own
# rpath); its few ggml calls (backend loading, GGUF parsing) resolve at load
# time in libllama's own dependencies, which a program linked with
# --as-needed would otherwise not load before this library asks for them.
$(B)/libkvshm-llama.a: $(LLAMA_REL_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
$(B)/libkvshm-llama-tst.a: $(LLAMA_TST_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
$(B)/libkvshm-llama-san.a: $(LLAMA_SAN_OBJS)
	rm -f $@ && $(AR) rcs $@ $^
$(B)/libkvshm-llama.so.$(VERSION): $(LLAMA_REL_OBJS) $(B)/libkvshm.so.$(VERSION)
	$(CC) -shared -pthread -Wl,-soname,libkvshm-llama.so.$(SOVERSION) $(LDFLAGS) -o $@ $(LLAMA_REL_OBJS) \
	  -L$(B) -lkvshm -L$(LLAMA_DIR)/lib -l:libllama.v0.4.0.so $(shell $(PKG_CONFIG) --libs libxxhash)
	ln -sf libkvshm-llama.so.$(VERSION) $(B)/libkvshm-llama.so.$(SOVERSION)
	ln -sf libkvshm-llama.so.$(VERSION) $(B)/libkvshm-llama.so

# The .pc names the install prefix: written again by `install` for the
# prefix given there.
PC_LINES = 'prefix=$(prefix)' 'exec_prefix=$(exec_prefix)' \
	  'libdir=$(libdir)' 'includedir=$(includedir)' '' \
	  'Name: kvshm' 'Description: crash-proof shared-memory prefix cache' \
	  'Version: $(VERSION)' 'Requires.private: libbsd tdb libxxhash hiredis' \
	  'Libs: -L$${libdir} -lkvshm' 'Libs.private: -lm -pthread' 'Cflags: -I$${includedir}'
$(B)/kvshm.pc: Makefile
	@mkdir -p $(@D)
	printf '%s\n' $(PC_LINES) > $@
# The engine is not installed with it: a program adds the engine's own
# flags (see examples/llama_worker.c).
PC_LLAMA_LINES = 'prefix=$(prefix)' 'exec_prefix=$(exec_prefix)' \
	  'libdir=$(libdir)' 'includedir=$(includedir)' '' \
	  'Name: kvshm-llama' 'Description: llama.cpp sequences restored from and saved to a kvshm cache' \
	  'Version: $(VERSION)' 'Requires: kvshm' 'Requires.private: libxxhash' \
	  'Libs: -L$${libdir} -lkvshm-llama' 'Cflags: -I$${includedir}'
$(B)/kvshm-llama.pc: Makefile
	@mkdir -p $(@D)
	printf '%s\n' $(PC_LLAMA_LINES) > $@

# ---- tools (release) ---------------------------------------------------------
# kvshm-reaper also links libmicrohttpd (its /metrics endpoint).
MHD_PKG       = libmicrohttpd
$(B)/bin/kvshm-reaper $(B)/tst/bin/kvshm-reaper $(B)/san/bin/kvshm-reaper: \
  TOOL_LIBS = $(shell $(PKG_CONFIG) --cflags --libs $(MHD_PKG))
$(B)/bin/%: tools/%.c $(TOOL_UTIL) tools/util.h $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< $(TOOL_UTIL) -o $@ $(B)/libkvshm.a $(DEP_LIBS) $(TOOL_LIBS) $(LDFLAGS)
# The stand-in demo (synthetic states, no engine): only tests/demo_test.sh
# runs it. It and kvshm-demo share the pool, the kills and the reaper
# (tools/demo.c).
$(B)/bin/kvshm-standin-demo: tests/standin/kvshm-standin-demo.c $(TOOL_UTIL) tools/util.h $(TOOL_DEMO) tools/demo.h \
  $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< $(TOOL_UTIL) $(TOOL_DEMO) -o $@ $(B)/libkvshm.a $(DEP_LIBS) $(LDFLAGS)
# Programs over the engine: kvshm-demo (the README's demo), kvshm-mkmodel.
$(B)/bin/kvshm-demo: TOOL_EXTRA = $(TOOL_DEMO)
$(B)/bin/kvshm-demo: $(TOOL_DEMO) tools/demo.h
$(B)/bin/%: llama/tools/%.c $(TOOL_UTIL) tools/util.h $(B)/libkvshm-llama.a $(B)/libkvshm.a $(LIB_HDRS) $(LLAMA_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LLAMA_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< $(TOOL_UTIL) $(TOOL_EXTRA) -o $@ $(B)/libkvshm-llama.a \
	  $(B)/libkvshm.a $(DEP_LIBS) $(LLAMA_LIBS) $(LLAMA_RPATH) $(LDFLAGS)
# Tools linked against the test libraries (crash points compiled in; and
# sanitizers), which the tests run as real processes.
$(B)/tst/bin/%: tools/%.c $(TOOL_UTIL) tools/util.h $(B)/libkvshm-tst.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TST_FLAGS) $(CFLAGS) $< $(TOOL_UTIL) -o $@ $(B)/libkvshm-tst.a $(DEP_LIBS) $(TOOL_LIBS) $(LDFLAGS)
$(B)/san/bin/%: tools/%.c $(TOOL_UTIL) tools/util.h $(B)/libkvshm-san.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(CFLAGS) $< $(TOOL_UTIL) -o $@ $(B)/libkvshm-san.a $(DEP_LIBS) $(TOOL_LIBS) $(LDFLAGS)

# ---- tests -------------------------------------------------------------------
# Crash points are listed from the sources, so a new one is never forgotten by
# the enumeration tests.
$(B)/crashpoints.list: $(LIB_SRCS)
	@mkdir -p $(@D)
	grep -ho 'KVSHM_CRASH_POINT("[^"]*")' $(LIB_SRCS) | sed 's/.*("\(.*\)")/\1/' | sort -u > $@
crashpoints: $(B)/crashpoints.list
	@cat $<

$(B)/tst/tests/%: tests/%.c $(TEST_SUPPORT) $(B)/libkvshm-tst.a $(TEST_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TST_FLAGS) $(CFLAGS) -Itests $< $(TEST_SUPPORT) -o $@ \
	  $(B)/libkvshm-tst.a $(DEP_LIBS) $(TEST_LIBS) $(LDFLAGS)
$(B)/san/tests/%: tests/%.c $(TEST_SUPPORT) $(B)/libkvshm-san.a $(TEST_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(SAN_FLAGS) $(CFLAGS) -Itests $< $(TEST_SUPPORT) -o $@ \
	  $(B)/libkvshm-san.a $(DEP_LIBS) $(TEST_LIBS) $(LDFLAGS)

# The adapter's tests run the real engine (test variant; and sanitizers on
# kvshm's own code: the engine is not instrumented).
$(B)/tst/tests/%: llama/tests/%.c $(TEST_SUPPORT) $(B)/libkvshm-llama-tst.a $(B)/libkvshm-tst.a $(LIB_HDRS) $(LLAMA_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LLAMA_CFLAGS) $(TST_FLAGS) $(CFLAGS) -Itests $< $(TEST_SUPPORT) -o $@ \
	  $(B)/libkvshm-llama-tst.a $(B)/libkvshm-tst.a $(DEP_LIBS) $(TEST_LIBS) $(LLAMA_LIBS) $(LLAMA_RPATH) $(LDFLAGS)
$(B)/san/tests/%: llama/tests/%.c $(TEST_SUPPORT) $(B)/libkvshm-llama-san.a $(B)/libkvshm-san.a $(LIB_HDRS) $(LLAMA_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LLAMA_CFLAGS) $(SAN_FLAGS) $(CFLAGS) -Itests $< $(TEST_SUPPORT) -o $@ \
	  $(B)/libkvshm-llama-san.a $(B)/libkvshm-san.a $(DEP_LIBS) $(TEST_LIBS) $(LLAMA_LIBS) $(LLAMA_RPATH) $(LDFLAGS)

# Models written by kvshm-mkmodel from the fetched tokenizer: the demo's
# (6 layers x 384: prefill ~1,000-2,000 tokens/s per core here, so prefill
# dominates a restore by three orders of magnitude while the whole demo
# stays well under 3 minutes), and two of one small shape for the tests
# (other seeds: same shape, other weights).
LLAMA_VOCAB   := $(LLAMA_DIR)/models/ggml-vocab-llama-spm.gguf
DEMO_MODEL    := $(LLAMA_DIR)/models/kvshm-demo.gguf
DEMO_SHAPE    := --layers 6 --embd 384 --ff 1024 --heads 6 --kv-heads 2
TEST_SHAPE    := --layers 4 --embd 256 --ff 768 --heads 4 --kv-heads 2
$(DEMO_MODEL): | $(B)/bin/kvshm-mkmodel
	$(B)/bin/kvshm-mkmodel $(DEMO_SHAPE) --seed 1 --vocab $(LLAMA_VOCAB) -o $@
$(LLAMA_DIR)/models/test-a.gguf: | $(B)/bin/kvshm-mkmodel
	$(B)/bin/kvshm-mkmodel -q $(TEST_SHAPE) --seed 1 --vocab $(LLAMA_VOCAB) -o $@
$(LLAMA_DIR)/models/test-b.gguf: | $(B)/bin/kvshm-mkmodel
	$(B)/bin/kvshm-mkmodel -q $(TEST_SHAPE) --seed 2 --vocab $(LLAMA_VOCAB) -o $@
LLAMA_TEST_MODELS := $(LLAMA_DIR)/models/test-a.gguf $(LLAMA_DIR)/models/test-b.gguf

# The crash-injection tool (docs/crash-testing.md): the test variant, crash
# points compiled in; it reads $(B)/crashpoints.list at run time.
$(B)/tst/crash/kvshm-crash: tests/crash/kvshm-crash.c tests/fixture/redis.c tests/fixture/redis.h $(B)/libkvshm-tst.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TST_FLAGS) $(CFLAGS) -Itests $< tests/fixture/redis.c -o $@ $(B)/libkvshm-tst.a $(DEP_LIBS) $(LDFLAGS)
CRASH_RUN = KVSHM_BIN_DIR=$(CURDIR)/$(B)/tst/bin $(B)/tst/crash/kvshm-crash --points $(B)/crashpoints.list

# The variant build runs after deps, so pkg-config finds what deps installed.
# After the cmocka tests, a short crash-injection run: every crash point
# (the most frequent ones at a stride) and a few hundred random kills.
test:
	@sh scripts/deps.sh build python metrics llama remote
	@$(MAKE) --no-print-directory all $(TESTS:%=$(B)/tst/tests/%) $(TOOLS:%=$(B)/tst/bin/%) $(B)/crashpoints.list \
	  $(B)/tst/crash/kvshm-crash $(LLAMA_TESTS:%=$(B)/tst/tests/%) $(LLAMA_TEST_MODELS) $(DEMO_MODEL)
	@$(MAKE) --no-print-directory layers
	@KVSHM_LLAMA_MODELS=$(CURDIR)/$(LLAMA_DIR)/models sh tests/run.sh $(B)/tst $(TESTS) $(LLAMA_TESTS)
	@$(CRASH_RUN) $(CRASH_QUICK)
	@sh tests/install_test.sh $(LLAMA_DIR) $(LLAMA_DIR)/models/test-a.gguf
	@sh tests/demo_test.sh $(B)/bin
	@sh tests/llama_demo_test.sh $(B)/bin $(DEMO_MODEL)
	@$(MAKE) --no-print-directory test-python

# The layering (docs/architecture.md), checked over the sources' #include
# lines and the test objects' symbols (scripts/check-layers.py): no include
# or call from a lower layer of core/ to a higher one, shm/ knows nothing of
# core/, tools/ and llama/ use the public API only, no core/ file over 500
# lines.
layers: $(B)/libkvshm-tst.a
	@$(PYTHON) scripts/check-layers.py $(B)/tst

# The short crash-injection run of `make test` on its own.
CRASH_QUICK := --quick --kills 0 --random-kills 300 --seconds 120
crashtest-quick:
	@sh scripts/deps.sh build python metrics remote
	@$(MAKE) --no-print-directory $(B)/libkvshm-tst.a $(TOOLS:%=$(B)/tst/bin/%) $(B)/tst/crash/kvshm-crash \
	  $(B)/crashpoints.list
	@$(CRASH_RUN) $(CRASH_QUICK) $(CRASH_ARGS)

# The long crash-injection campaign: systematic over every crash point and
# every hit, then random kills until 25,000 kills in all. CRASH_ARGS adds
# options (e.g. CRASH_ARGS="--seed 1234" to repeat a run).
crashtest:
	@sh scripts/deps.sh build python metrics remote
	@$(MAKE) --no-print-directory $(B)/libkvshm-tst.a $(TOOLS:%=$(B)/tst/bin/%) $(B)/tst/crash/kvshm-crash \
	  $(B)/crashpoints.list
	@$(CRASH_RUN) --mode both --kills 25000 --seconds 3600 $(CRASH_ARGS)

# ---- the Python package (bindings/python: a C extension over libkvshm) -----------
# Installed with pip into a venv of Debian's python3 (/usr/bin/python3: the
# interpreter python3-dev, python3-pytest, setuptools and wheel serve; a
# python3 earlier on PATH, e.g. pyenv's, may have none of them), offline:
# no build isolation, nothing from an index. Built against this tree's
# header and library (-Werror: the extension compiles without a warning).
# test-python runs pytest from outside the tree, so `import kvshm` is the
# installed package: the binding's tests and tests/python (the reaper's
# /metrics, the tools' --help).
PYTHON       ?= /usr/bin/python3
PYVENV       := $(B)/pyvenv
.PHONY: python test-python
python: all
	@test -x $(PYVENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(PYVENV)
	KVSHM_INCLUDE_DIR=$(CURDIR)/include KVSHM_LIB_DIR=$(CURDIR)/$(B) CFLAGS="$(CFLAGS) -Werror" \
	  $(PYVENV)/bin/pip install -q --no-build-isolation --no-index --no-deps --force-reinstall ./bindings/python
test-python: python $(TOOLS:%=$(B)/tst/bin/%)
	cd $(B) && KVSHM_HEADER=$(CURDIR)/include/kvshm.h KVSHM_BIN_DIR=$(CURDIR)/$(B)/tst/bin \
	  $(CURDIR)/$(PYVENV)/bin/python -m pytest -q -p no:cacheprovider $(CURDIR)/bindings/python/tests \
	  $(wildcard $(CURDIR)/tests/python)

# The README's first command: a pre-forked worker pool on a fresh cache.
# DEMO_ARGS adds options (kvshm-demo --help).
demo:
	@sh scripts/deps.sh build llama
	@$(MAKE) --no-print-directory -j2 all $(DEMO_MODEL)
	@$(B)/bin/kvshm-demo --model $(DEMO_MODEL) $(DEMO_ARGS)

# The adapter's test runs too: kvshm's and the adapter's code instrumented,
# the prebuilt engine not (its allocations are still ASan's, interposed).
check:
	@sh scripts/deps.sh build llama remote
	@$(MAKE) --no-print-directory $(TESTS:%=$(B)/san/tests/%) $(TOOLS:%=$(B)/san/bin/%) $(B)/crashpoints.list \
	  $(LLAMA_TESTS:%=$(B)/san/tests/%) $(LLAMA_TEST_MODELS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  KVSHM_LLAMA_MODELS=$(CURDIR)/$(LLAMA_DIR)/models sh tests/run.sh $(B)/san $(TESTS) $(LLAMA_TESTS)

# ---- benchmarks (release build) ----------------------------------------------
# `make bench` installs the peers (scripts/deps.sh bench), then runs, in one
# invocation: micro, reclaim, peers (kvshm against redis, memcached, lmdb and
# memcpy on the same workload, as ratios) and figures (kvshm only: prefix
# length, disk tier, index rebuild, memory overhead). Tables go to stdout,
# every row to $(B)/bench/results.csv and $(B)/bench/kvshm-figures.csv.
# BENCH_MS: milliseconds per peers measurement; BENCH_REBUILD: entries of the
# rebuild figure.
BENCH_MS      ?= 1000
# The targets of issue 18: each program appends the rows it measures
# (bench/common.h, bench_target); the table is printed once at the end.
BENCH_TARGETS := $(B)/bench/targets.tsv
BENCH_TARGETS_PRINT = echo && echo "targets (issue 18), this run; load average at the end: $$(cut -d' ' -f1-3 /proc/loadavg)" && \
	awk -F'\t' 'BEGIN { printf "  %-72s %-26s %-34s %-14s %s\n", "figure", "before", "this run", "target", "" } \
	  { printf "  %-72s %-26s %-34s %-14s %s\n", $$1, $$2, $$3, $$4, $$5; n++; if ($$5 == "met") m++ } \
	  END { printf "  %d of %d targets met\n", m, n }' $(BENCH_TARGETS)
BENCH_REBUILD ?= 100000
# Recursively expanded: evaluated after deps.sh has installed the packages.
# liblmdb-dev ships lmdb.pc on Debian 12; -llmdb if it ever does not.
BENCH_CFLAGS   = $(shell $(PKG_CONFIG) --cflags hiredis libmemcached) $(shell $(PKG_CONFIG) --cflags lmdb 2>/dev/null)
BENCH_LIBS     = $(shell $(PKG_CONFIG) --libs hiredis libmemcached) $(shell $(PKG_CONFIG) --libs lmdb 2>/dev/null || echo -llmdb)

$(B)/bench/%: bench/%.c bench/common.h $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< -o $@ $(B)/libkvshm.a $(DEP_LIBS) $(LDFLAGS)
$(B)/bench/figures: bench/figures.c bench/common.h $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< -o $@ $(B)/libkvshm.a $(DEP_LIBS) $(LDFLAGS)
$(B)/bench/peers: bench/peers.c bench/common.h $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(BENCH_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< -o $@ $(B)/libkvshm.a $(DEP_LIBS) \
	  $(BENCH_LIBS) $(LDFLAGS)

# The llama figure: the demo's shape and the 12 x 768 one (125M
# parameters, a 250 MB GGUF: also what its fingerprint costs).
BENCH_MODEL   := $(LLAMA_DIR)/models/bench-12x768.gguf
$(BENCH_MODEL): | $(B)/bin/kvshm-mkmodel
	$(B)/bin/kvshm-mkmodel --layers 12 --embd 768 --ff 2048 --heads 12 --kv-heads 4 --seed 1 --vocab $(LLAMA_VOCAB) -o $@
$(B)/bench/llama: bench/llama.c $(B)/libkvshm-llama.a $(B)/libkvshm.a $(LIB_HDRS) $(LLAMA_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LLAMA_CFLAGS) $(REL_FLAGS) $(CFLAGS) $< -o $@ $(B)/libkvshm-llama.a $(B)/libkvshm.a \
	  $(DEP_LIBS) $(LLAMA_LIBS) $(LLAMA_RPATH) $(LDFLAGS)

# The remote tier's client against Redis servers it starts (and, with -c, a
# 3-master cluster for the chunk size and slot layout figures).
$(B)/bench/remote: bench/remote.c bench/common.h tests/fixture/redis.c tests/fixture/redis.h $(B)/libkvshm.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(REL_FLAGS) $(CFLAGS) -Itests $< tests/fixture/redis.c -o $@ $(B)/libkvshm.a $(DEP_LIBS) $(LDFLAGS)

# The targets table of the last `make bench` again.
bench-targets:
	@$(BENCH_TARGETS_PRINT)

bench:
	@sh scripts/deps.sh build bench llama remote
	@$(MAKE) --no-print-directory $(B)/bench/micro $(B)/bench/reclaim $(B)/bench/peers $(B)/bench/figures \
	  $(B)/bench/llama $(DEMO_MODEL) $(BENCH_MODEL) $(B)/bench/remote
	@start=$$(date +%s); rm -f $(BENCH_TARGETS); export KVSHM_BENCH_TARGETS=$(CURDIR)/$(BENCH_TARGETS); \
	echo "bench: load average at the start: $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	$(B)/bench/micro && $(B)/bench/reclaim && \
	$(B)/bench/peers -t $(BENCH_MS) -o $(B)/bench/results.csv && \
	{ $(B)/bench/peers -H -m getonly -z 4096 -t $(BENCH_MS) -o $(B)/bench/results-huge.csv || \
	  echo "peers -H: skipped (mounting a tmpfs with huge=within_size needs root and THP)"; } && \
	$(B)/bench/figures -n $(BENCH_REBUILD) -o $(B)/bench/kvshm-figures.csv && \
	echo && $(B)/bench/llama -o $(B)/bench/llama.csv $(DEMO_MODEL) $(BENCH_MODEL) && \
	$(B)/bench/remote -c -o $(B)/bench/remote.csv && \
	echo && echo "bench: $$(( $$(date +%s) - start )) s in all (micro, reclaim, peers, figures, llama, remote)" && \
	$(BENCH_TARGETS_PRINT) && \
	echo "bench: every row in $(B)/bench/results.csv (peers), $(B)/bench/kvshm-figures.csv (kvshm only)," \
	  "$(B)/bench/llama.csv (llama.cpp restore against prefill) and $(B)/bench/remote.csv (remote tier client)"

# ---- fuzzing (clang's libFuzzer + ASan/UBSan) -----------------------------------
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE -Iinclude -I. -g -O1 -DKVSHM_TEST -DKVSHM_FUZZ $(DEP_CFLAGS) \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_SRCS    := core/tier/fileformat.c shm/crc32c.c core/entry/key.c core/entry/xxpass.c shm/error.c shm/crash.c

$(B)/fuzz/fuzz_file: tests/fuzz/fuzz_file.c $(FUZZ_SRCS) $(LIB_HDRS)
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) $< $(FUZZ_SRCS) -o $@ $(DEP_LIBS)
$(B)/fuzz/seed: tests/fuzz/seed.c $(B)/libkvshm-tst.a $(LIB_HDRS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(TST_FLAGS) $< -o $@ $(B)/libkvshm-tst.a $(DEP_LIBS)

# The attach target links the whole library, built like a release (no
# crash points) but instrumented for libFuzzer and the sanitizers.
FUZZ_LIB_CFLAGS = -std=c11 -D_GNU_SOURCE -Iinclude -I. -g -O1 $(DEP_CFLAGS) \
                -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
FUZZ_LIB_OBJS  := $(LIB_SRCS:%.c=$(B)/fuzz/lib/%.o)
$(B)/fuzz/lib/%.o: %.c $(LIB_HDRS)
	@mkdir -p $(@D)
	clang $(FUZZ_LIB_CFLAGS) -c $< -o $@
$(B)/fuzz/fuzz_attach: tests/fuzz/fuzz_attach.c $(FUZZ_LIB_OBJS) $(LIB_HDRS)
	clang $(FUZZ_LIB_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_LIB_OBJS) -o $@ $(DEP_LIBS) -pthread

# Bounded: FUZZ_SECONDS of libFuzzer on each target (the file parser, then
# attaching a damaged segment); fails on a crash, a leak or a hang.
fuzz:
	@sh scripts/deps.sh build fuzz
	@$(MAKE) --no-print-directory $(B)/fuzz/fuzz_file $(B)/fuzz/seed $(B)/fuzz/fuzz_attach
	@mkdir -p $(B)/fuzz/corpus $(B)/fuzz/corpus-attach
	@$(B)/fuzz/seed $(B)/fuzz/corpus/valid.kvc
	$(B)/fuzz/fuzz_file -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 \
	  -artifact_prefix=$(B)/fuzz/ $(B)/fuzz/corpus
	$(B)/fuzz/fuzz_attach -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=10 -rss_limit_mb=4096 \
	  -artifact_prefix=$(B)/fuzz/attach- $(B)/fuzz/corpus-attach

# ---- install -----------------------------------------------------------------
# A plain install (no DESTDIR: the files are where they will be used) also
# records where the header and library went, for the Python package's build
# (bindings/python/setup.py reads it; PY_RECORD moves it).
PY_RECORD    ?= bindings/python/.kvshm-install
install: all
	install -d $(DESTDIR)$(libdir) $(DESTDIR)$(includedir) $(DESTDIR)$(pkgconfigdir) \
	  $(DESTDIR)$(bindir) $(DESTDIR)$(mandir)/man1 $(DESTDIR)$(mandir)/man8
	install -m 644 $(B)/libkvshm.a $(DESTDIR)$(libdir)/
	install -m 755 $(B)/libkvshm.so.$(VERSION) $(DESTDIR)$(libdir)/
	ln -sf libkvshm.so.$(VERSION) $(DESTDIR)$(libdir)/libkvshm.so.$(SOVERSION)
	ln -sf libkvshm.so.$(VERSION) $(DESTDIR)$(libdir)/libkvshm.so
	install -m 644 include/kvshm.h $(DESTDIR)$(includedir)/
	printf '%s\n' $(PC_LINES) > $(DESTDIR)$(pkgconfigdir)/kvshm.pc
	for t in $(TOOLS); do install -m 755 $(B)/bin/$$t $(DESTDIR)$(bindir)/; done
	for m in $(wildcard man/*.1); do install -m 644 $$m $(DESTDIR)$(mandir)/man1/; done
	for m in $(wildcard man/*.8); do install -m 644 $$m $(DESTDIR)$(mandir)/man8/; done
	install -d $(DESTDIR)$(datadir)/bash-completion/completions $(DESTDIR)$(systemdunitdir)
	install -m 644 dist/shmctl.bash-completion $(DESTDIR)$(datadir)/bash-completion/completions/shmctl
	sed 's|/usr/local/bin|$(bindir)|' dist/kvshm-reaper@.service > $(DESTDIR)$(systemdunitdir)/kvshm-reaper@.service
	@if [ -z "$(DESTDIR)" ]; then printf 'includedir=%s\nlibdir=%s\n' '$(includedir)' '$(libdir)' > $(PY_RECORD); \
	  echo "install: recorded $(libdir) in $(PY_RECORD) for pip install ./bindings/python"; fi
	@# libkvshm-llama, when the engine was there to build it (not the engine itself).
	if [ -f $(B)/libkvshm-llama.so.$(VERSION) ]; then \
	  install -m 644 $(B)/libkvshm-llama.a $(DESTDIR)$(libdir)/ && \
	  install -m 755 $(B)/libkvshm-llama.so.$(VERSION) $(DESTDIR)$(libdir)/ && \
	  ln -sf libkvshm-llama.so.$(VERSION) $(DESTDIR)$(libdir)/libkvshm-llama.so.$(SOVERSION) && \
	  ln -sf libkvshm-llama.so.$(VERSION) $(DESTDIR)$(libdir)/libkvshm-llama.so && \
	  install -m 644 include/kvshm-llama.h $(DESTDIR)$(includedir)/ && \
	  printf '%s\n' $(PC_LLAMA_LINES) > $(DESTDIR)$(pkgconfigdir)/kvshm-llama.pc; fi

uninstall:
	rm -f $(DESTDIR)$(libdir)/libkvshm.a $(DESTDIR)$(libdir)/libkvshm.so*
	rm -f $(DESTDIR)$(includedir)/kvshm.h $(DESTDIR)$(pkgconfigdir)/kvshm.pc
	rm -f $(DESTDIR)$(libdir)/libkvshm-llama.a $(DESTDIR)$(libdir)/libkvshm-llama.so*
	rm -f $(DESTDIR)$(includedir)/kvshm-llama.h $(DESTDIR)$(pkgconfigdir)/kvshm-llama.pc
	for t in $(TOOLS); do rm -f $(DESTDIR)$(bindir)/$$t; done
	for m in $(notdir $(wildcard man/*.1)); do rm -f $(DESTDIR)$(mandir)/man1/$$m; done
	for m in $(notdir $(wildcard man/*.8)); do rm -f $(DESTDIR)$(mandir)/man8/$$m; done
	rm -f $(DESTDIR)$(datadir)/bash-completion/completions/shmctl $(DESTDIR)$(systemdunitdir)/kvshm-reaper@.service
	@if [ -z "$(DESTDIR)" ]; then rm -f $(PY_RECORD); fi

clean:
	rm -rf $(B) bindings/python/build bindings/python/src/*.egg-info bindings/python/src/kvshm/*.so

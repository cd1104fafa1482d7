# clip-tools. `make deps` (root) installs the Debian packages, `make` builds
# bin/, `make check` runs the fast tests. See README.md.

PREFIX ?= /usr/local
CC ?= cc
PKGS := libarchive jansson vips libzmq libutf8proc libjpeg
# Debian's OpenMP build of OpenBLAS: its threads and ours share one OpenMP pool.
BLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp

# CFLAGS is the user's (make CFLAGS=-O3); CLIP_CFLAGS holds what every compile
# needs and comes with every rule. No -march: the binaries run on any x86-64
# and pick their AVX-512 kernels at run time (lib/core/util.h: cpu_has, CLIP_CPU).
CFLAGS ?= -O2 -g
CLIP_CFLAGS := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare \
          -fopenmp -Ilib -I$(BLAS_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) \
          -lopenblas -lm -lpthread

DATADIR = $(PREFIX)/share/clip-tools
DATA_FILES := share/clip-tools/bert-chinese-vocab.txt share/clip-tools/bpe_simple_vocab_16e6.txt.gz \
              share/clip-tools/README.md
# where an installed program looks for its data when it is not beside ../share/clip-tools
build/lib/core/datafile.o: CLIP_CFLAGS += -DCLIP_DATADIR='"$(DATADIR)"'

LIB_SRC := $(wildcard lib/*/*.c)
LIB_OBJ := $(LIB_SRC:lib/%.c=build/lib/%.o)
TOOLS := $(patsubst tools/%.c,bin/%,$(wildcard tools/clip-*.c))
UNIT_TESTS := $(patsubst tests/unit/%.c,build/tests/%,$(wildcard tests/unit/test_*.c))
MANPAGES := $(wildcard man/*.1 man/*.5)

DEB_PACKAGES := build-essential pkg-config libarchive-dev libjansson-dev libvips-dev \
                libopenblas-openmp-dev libzmq3-dev libutf8proc-dev libjpeg-dev bats python3 python3-numpy \
                gnuplot-nox libopenmpi-dev openmpi-bin clang-format
# the PyTorch reference: fixtures regeneration and benchmarks only (the pthread OpenBLAS is
# what the benchmarks run it with, tests/ref/reference_env.py)
DEB_REFERENCE := python3-torch python3-torchvision python3-pil libopenblas0-pthread

all: $(TOOLS)

deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES)

deps-reference: deps
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_REFERENCE)

build/lib/%.o: lib/%.c $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(CFLAGS) -c -o $@ $<

build/libclip.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# what the programs share (tools/tool.h: exiting, which the library never does)
build/tools/tool.o: tools/tool.c tools/tool.h $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(CFLAGS) -c -o $@ $<

bin/%: tools/%.c build/tools/tool.o build/libclip.a
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(CFLAGS) -o $@ $< build/tools/tool.o build/libclip.a $(LDLIBS)

build/bench/%: tests/bench/%.c build/tools/tool.o build/libclip.a
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(CFLAGS) -Itools -o $@ $< build/tools/tool.o build/libclip.a $(LDLIBS)

build/tests/%: tests/unit/%.c tests/unit/unit.h build/tools/tool.o build/libclip.a
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(CFLAGS) -Itests/unit -Itools -o $@ $< build/tools/tool.o build/libclip.a $(LDLIBS)

check: all $(UNIT_TESTS)
	@set -e; for t in $(UNIT_TESTS); do echo "== $$t"; ./$$t; done
	bats tests/bats

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
	    $(DESTDIR)$(DATADIR)
	install -m 644 $(DATA_FILES) $(DESTDIR)$(DATADIR)
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(filter %.1,$(MANPAGES)) $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 $(filter %.5,$(MANPAGES)) $(DESTDIR)$(PREFIX)/share/man/man5

clean:
	rm -rf build bin

.PHONY: all deps deps-reference check install clean
.SECONDARY: $(LIB_OBJ)

# benchmarks, fixture regeneration and pipelines: one fragment per concern
include $(wildcard mk/*.mk pipelines/*.mk)

# Fuzzing. Every tests/fuzz/fuzz_NAME.c is a target (the driver: tests/fuzz/fuzz.h); its seeds
# are tests/fuzz/corpus/NAME/ (tests/fuzz/make_seeds.py writes them; fuzz_checkpoint's are the
# checkpoint fixtures, and fuzz_safetensors has small.safetensors too). Two builds of each:
#   build-asan/fuzz/fuzz_NAME   the built-in mutator, gcc, ASan + UBSan, linked with the ASan
#                               library of mk/asan.mk: fuzz_NAME ITERATIONS SEED FILE...
#   build-fuzz/fuzz_NAME        libFuzzer (clang, apt-get install clang), the library rebuilt
#                               with coverage in build-fuzz/
# make fuzz            each target for FUZZ_SECONDS under libFuzzer where clang has it, else
#                      FUZZ_ITERS inputs of the built-in driver; prints per target the
#                      executions and the crashes (a crash: its input under build-fuzz/)
# make fuzz-NAME       one target, built-in driver, FUZZ_ITERS inputs
# make libfuzz-NAME    one target under libFuzzer for FUZZ_SECONDS
# make fuzz-smoke      FUZZ_SMOKE_ITERS inputs of each, built-in driver (a few seconds each): part
#                      of make check

FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_SECONDS ?= 60
FUZZ_ITERS ?= 1000000
FUZZ_SMOKE_ITERS ?= 5000
FUZZ_SEED ?= 1
FUZZ_CC ?= clang
FUZZ_CORPUS_checkpoint := $(wildcard tests/fixtures/ckpt/*.pth tests/fixtures/ckpt/*.safetensors)
FUZZ_CORPUS_safetensors := $(wildcard tests/fuzz/corpus/safetensors/*) tests/fixtures/ckpt/small.safetensors
fuzz_corpus = $(or $(FUZZ_CORPUS_$(1)),$(wildcard tests/fuzz/corpus/$(1)/*))
# a sanitizer error stops the run and its input is kept (fuzz.h)
FUZZ_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=0 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

build-asan/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h build-asan/tools/tool.o build-asan/libclip.a
	@mkdir -p $(@D)
	$(CC) $(CLIP_CFLAGS) $(ASAN_CFLAGS) $(SAN_FLAGS) -Itests/fuzz -Itools -o $@ $< \
		build-asan/tools/tool.o build-asan/libclip.a $(LDLIBS)

# libFuzzer: the library with coverage, so that the mutations are guided inside it
FUZZ_LIB_OBJ := $(LIB_SRC:lib/%.c=build-fuzz/lib/%.o)
LIBFUZZER_FLAGS := -O1 -g -Wno-pass-failed -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

build-fuzz/lib/core/datafile.o: CLIP_CFLAGS += -DCLIP_DATADIR='"$(DATADIR)"'

build-fuzz/lib/%.o: lib/%.c $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CLIP_CFLAGS) $(LIBFUZZER_FLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

build-fuzz/libclip.a: $(FUZZ_LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h build-fuzz/libclip.a
	$(FUZZ_CC) $(CLIP_CFLAGS) $(LIBFUZZER_FLAGS) -fsanitize=fuzzer -DUSE_LIBFUZZER -Itests/fuzz -Itools \
		-o $@ $< tools/tool.c build-fuzz/libclip.a $(LDLIBS)

fuzz-%: build-asan/fuzz/fuzz_%
	@env $(FUZZ_ENV) tests/fuzz/run.sh builtin $(FUZZ_ITERS) $* $< $(call fuzz_corpus,$*)

libfuzz-%: build-fuzz/fuzz_%
	@tests/fuzz/run.sh libfuzzer $(FUZZ_SECONDS) $* $< $(call fuzz_corpus,$*)

fuzz-smoke: $(FUZZ_TARGETS:%=build-asan/fuzz/fuzz_%)
	@$(foreach t,$(FUZZ_TARGETS),env $(FUZZ_ENV) tests/fuzz/run.sh builtin $(FUZZ_SMOKE_ITERS) \
	    $(t) build-asan/fuzz/fuzz_$(t) $(call fuzz_corpus,$(t)) &&) true

# libFuzzer where clang can link it, else the built-in driver; every target runs, and a crash
# in one fails the whole
fuzz:
	@probe=$$(mktemp); \
	if echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' | \
	    $(FUZZ_CC) -fsanitize=fuzzer -x c - -o $$probe 2>/dev/null; then \
	    rm -f $$probe; \
	    $(MAKE) --no-print-directory $(FUZZ_TARGETS:%=build-fuzz/fuzz_%) >/dev/null || exit 1; \
	    echo "fuzz: libFuzzer, $(FUZZ_SECONDS) s per target"; rc=0; \
	    $(foreach t,$(FUZZ_TARGETS),tests/fuzz/run.sh libfuzzer $(FUZZ_SECONDS) $(t) \
	        build-fuzz/fuzz_$(t) $(call fuzz_corpus,$(t)) || rc=1;) exit $$rc; \
	else \
	    rm -f $$probe; \
	    $(MAKE) --no-print-directory $(FUZZ_TARGETS:%=build-asan/fuzz/fuzz_%) >/dev/null || exit 1; \
	    echo "fuzz: no libFuzzer ($(FUZZ_CC) -fsanitize=fuzzer), $(FUZZ_ITERS) inputs of the" \
	         "built-in driver per target"; rc=0; \
	    $(foreach t,$(FUZZ_TARGETS),env $(FUZZ_ENV) tests/fuzz/run.sh builtin $(FUZZ_ITERS) $(t) \
	        build-asan/fuzz/fuzz_$(t) $(call fuzz_corpus,$(t)) || rc=1;) exit $$rc; \
	fi

check: fuzz-smoke

clean-fuzz:
	rm -rf build-fuzz

clean: clean-fuzz

.PHONY: fuzz fuzz-smoke clean-fuzz
.SECONDARY: $(FUZZ_LIB_OBJ)

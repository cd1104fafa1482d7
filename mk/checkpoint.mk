# Checkpoints: fixture regeneration (needs PyTorch: make deps-reference) and fuzzing.

fixtures-checkpoint:
	/usr/bin/python3 tests/ref/make_checkpoints.py tests/fixtures/ckpt

CKPT_SRC := tools/tool.c lib/core/util.c lib/core/strmap.c lib/core/dtype.c lib/core/atomic_file.c \
            $(filter-out lib/ckpt/param_table.c,$(wildcard lib/ckpt/*.c))
CKPT_FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Ilib -Itools \
                    $(shell pkg-config --cflags libarchive jansson 2>/dev/null)
CKPT_FUZZ_LIBS := $(shell pkg-config --libs libarchive jansson 2>/dev/null) -lm
CKPT_CORPUS := $(wildcard tests/fixtures/ckpt/*.pth tests/fixtures/ckpt/*.safetensors)
FUZZ_ITERS ?= 1000000
FUZZ_SEED ?= 1
FUZZ_SECONDS ?= 300

# the built-in mutation fuzzer under ASan + UBSan
build/fuzz/fuzz_checkpoint: tests/fuzz/fuzz_checkpoint.c $(CKPT_SRC) $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CKPT_FUZZ_CFLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all -o $@ \
		tests/fuzz/fuzz_checkpoint.c $(CKPT_SRC) $(CKPT_FUZZ_LIBS)

# libFuzzer (apt-get install clang libclang-rt-14-dev)
build/fuzz/libfuzz_checkpoint: tests/fuzz/fuzz_checkpoint.c $(CKPT_SRC) $(wildcard lib/*/*.h)
	@mkdir -p $(@D)
	clang $(CKPT_FUZZ_CFLAGS) -DUSE_LIBFUZZER -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all -o $@ tests/fuzz/fuzz_checkpoint.c $(CKPT_SRC) $(CKPT_FUZZ_LIBS)

fuzz-checkpoint: build/fuzz/fuzz_checkpoint
	build/fuzz/fuzz_checkpoint $(FUZZ_ITERS) $(FUZZ_SEED) $(CKPT_CORPUS)

libfuzz-checkpoint: build/fuzz/libfuzz_checkpoint
	@mkdir -p build/fuzz/corpus
	cp $(CKPT_CORPUS) build/fuzz/corpus/
	build/fuzz/libfuzz_checkpoint -max_total_time=$(FUZZ_SECONDS) -max_len=16384 build/fuzz/corpus

# a one-second run of the built-in fuzzer is part of `make check`
fuzz-checkpoint-smoke: build/fuzz/fuzz_checkpoint
	build/fuzz/fuzz_checkpoint 20000 $(FUZZ_SEED) $(CKPT_CORPUS)

check: fuzz-checkpoint-smoke

.PHONY: fixtures-checkpoint fuzz-checkpoint libfuzz-checkpoint fuzz-checkpoint-smoke

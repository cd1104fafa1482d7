# Training: PyTorch-reference parity fixtures and the step benchmark (both need
# make deps-reference).
#   make bench-train                          ViT-B/16 + BERT-base, batch 8 and 32, fp32 and bf16,
#                                             and batch 32 with --lock-image (32lock: the image
#                                             tower's forward only) and a cached epoch of it
#                                             (32cached: the text tower only)
#   make bench-train BENCH_ARCH=small BENCH_CONFIGS=64   the from-scratch model

BENCH_ARCH ?= base
BENCH_CONFIGS ?= 8,8amp,32,32amp,32lock,32cached
BENCH_STEPS ?= 2

bench-train: build/bench/bench_train
	/usr/bin/python3 tests/ref/bench_train.py build/bench/bench_train --arch $(BENCH_ARCH) \
	    --configs $(BENCH_CONFIGS) --steps $(BENCH_STEPS)

fixtures-train:
	rm -rf tests/fixtures/train
	/usr/bin/python3 tests/ref/train_ref.py fixtures tests/fixtures/train
	/usr/bin/python3 tests/ref/train_ref.py english tests/fixtures/train/en
	/usr/bin/python3 tests/ref/train_ref.py lock tests/fixtures/train/expected_lock.json

# only the English model's tests/fixtures/train/en
fixtures-train-english:
	rm -rf tests/fixtures/train/en
	/usr/bin/python3 tests/ref/train_ref.py english tests/fixtures/train/en

# only the locked-tower runs' tests/fixtures/train/expected_lock.json
fixtures-train-lock:
	/usr/bin/python3 tests/ref/train_ref.py lock tests/fixtures/train/expected_lock.json

.PHONY: bench-train fixtures-train fixtures-train-english fixtures-train-lock

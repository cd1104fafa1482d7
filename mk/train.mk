# Training: PyTorch-reference parity fixtures and the step benchmark (both need
# make deps-reference).
#   make bench-train                          ViT-B/16 + BERT-base, batch 32: fp32 and bf16,
#                                             and batch 32 with --lock-image (32lock: the image
#                                             tower's forward only), a cached epoch of it
#                                             (32cached: the text tower only), --mask-ratio 0.5
#                                             (32mask) and --grad-checkpointing (32ckpt)
#   make bench-train BENCH_ARCH=small BENCH_CONFIGS=64   the from-scratch model
#   make bench-train BENCH_CONFIGS=128,128ckpt BENCH_STEPS=1   the memory of batch 128 (~17 GiB plain)


BENCH_ARCH ?= base
BENCH_CONFIGS ?= 32,32amp,32lock,32cached,32mask,32ckpt
BENCH_STEPS ?= 2

bench-train: build/bench/bench_train
	/usr/bin/python3 tests/ref/bench_train.py build/bench/bench_train --arch $(BENCH_ARCH) \
	    --configs $(BENCH_CONFIGS) --steps $(BENCH_STEPS)

fixtures-train:
	rm -rf tests/fixtures/train
	/usr/bin/python3 tests/ref/train_ref.py fixtures tests/fixtures/train
	/usr/bin/python3 tests/ref/train_ref.py english tests/fixtures/train/en
	/usr/bin/python3 tests/ref/train_ref.py mask tests/fixtures/train/mask
	/usr/bin/python3 tests/ref/train_ref.py lock tests/fixtures/train/expected_lock.json

# only the English model's tests/fixtures/train/en
fixtures-train-english:
	rm -rf tests/fixtures/train/en
	/usr/bin/python3 tests/ref/train_ref.py english tests/fixtures/train/en

# only the patch-dropout run's tests/fixtures/train/mask (from the committed init.pth, train.tar)
fixtures-train-mask:
	rm -rf tests/fixtures/train/mask
	/usr/bin/python3 tests/ref/train_ref.py mask tests/fixtures/train/mask

# only the locked-tower runs' tests/fixtures/train/expected_lock.json
fixtures-train-lock:
	/usr/bin/python3 tests/ref/train_ref.py lock tests/fixtures/train/expected_lock.json

.PHONY: bench-train fixtures-train fixtures-train-english fixtures-train-mask fixtures-train-lock

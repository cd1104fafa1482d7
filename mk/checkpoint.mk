# Checkpoints: fixture regeneration (needs PyTorch: make deps-reference). Their fuzzer,
# tests/fuzz/fuzz_checkpoint.c, is built and run by mk/fuzz.mk.

fixtures-checkpoint:
	/usr/bin/python3 tests/ref/make_checkpoints.py tests/fixtures/ckpt

.PHONY: fixtures-checkpoint

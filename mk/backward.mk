# Backward passes: PyTorch-reference gradient fixtures (speed: make bench-train).

fixtures-backward:
	/usr/bin/python3 tests/ref/backward_ref.py tests/fixtures/backward

.PHONY: fixtures-backward

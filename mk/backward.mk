# Backward passes: PyTorch-reference gradient fixtures (speed: make bench-train).

fixtures-backward:
	/usr/bin/python3 tests/ref/backward_ref.py tests/fixtures/backward

# only the English tower's en_* files
fixtures-backward-english:
	/usr/bin/python3 tests/ref/backward_ref.py --english tests/fixtures/backward

.PHONY: fixtures-backward fixtures-backward-english

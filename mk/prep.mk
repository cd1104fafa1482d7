# clip-prep: parity fixtures from the PyTorch/PIL reference, and the speed comparison.

# regenerate tests/fixtures/prep (needs `make deps-reference`)
fixtures-prep:
	rm -rf tests/fixtures/prep
	/usr/bin/python3 tests/ref/prep_ref.py fixtures tests/fixtures/prep

# clip-prep vs the reference pipeline on the first BENCH_PREP_N cn_val images of DATA=FOLDER (1000 = all of
# them, so that process start-up weighs little), with the libjpeg-turbo decode-alone ceiling
BENCH_PREP_N ?= 1000
bench-prep: bin/clip-prep build/bench/bench_decode
	DATA='$(DATA)' tests/ref/bench_prep.sh $(BENCH_PREP_N) 224 160

.PHONY: fixtures-prep bench-prep

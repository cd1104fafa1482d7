# bf16 GEMM (AVX512_BF16): cblas_sgemm vs gemm_bf16 on the training shapes, and
# the tiny PyTorch rounding fixture.

BENCH_GEMM_ARGS ?= 3
bench-gemm: build/bench/bench_gemm
	build/bench/bench_gemm $(BENCH_GEMM_ARGS)

fixtures-gemm:
	/usr/bin/python3 tests/ref/gemm_ref.py tests/fixtures/gemm

.PHONY: bench-gemm fixtures-gemm

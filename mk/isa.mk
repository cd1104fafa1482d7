# Portable binaries (lib/core/util.h: cpu_has, CLIP_CPU), checked two ways:
#  - tests/check_isa.sh: objdump finds no instruction beyond x86-64's SSE2
#    baseline outside the functions marked CLIP_TARGET_*, in the library and
#    the programs;
#  - the kernel tests on a CPU without AVX-512: valgrind's (its CPUID has no
#    AVX-512 and it stops with SIGILL at the first AVX-512 instruction), so
#    they pass only if every kernel takes its portable path there; and
#    clip-prep's resize (test_image loads libvips, whose libhwy valgrind cannot
#    run), whose samples must be the AVX-512 run's byte for byte. Skipped,
#    saying so, where valgrind is not installed (make deps installs it).
# Part of make check; also: CLIP_CPU=generic make check.

ISA_TESTS := build/tests/test_gemm_int8 build/tests/test_model build/tests/test_backward \
             build/tests/test_gemm_bf16
DEB_PACKAGES += valgrind

check-isa: build/libclip.a $(TOOLS) $(ISA_TESTS)
	tests/check_isa.sh $(LIB_OBJ) $(TOOLS)
	@if ! command -v valgrind >/dev/null; then \
	    echo "check-isa: no valgrind: the tests on a CPU without AVX-512 are skipped"; \
	else set -e; for t in $(ISA_TESTS); do \
	    echo "== valgrind (no AVX-512) $$t"; \
	    env -u OPENBLAS_CORETYPE valgrind --tool=none -q ./$$t > build/check-isa.log 2>&1 || \
	        { cat build/check-isa.log; exit 1; }; \
	    tail -1 build/check-isa.log; \
	done; \
	echo "== valgrind (no AVX-512) bin/clip-prep --size 160, against the AVX-512 run"; \
	prep="bin/clip-prep --annotations tests/fixtures/flickr8k-mini/cn_mini.json \
	      --root tests/fixtures/flickr8k-mini --size 160"; \
	$$prep -o build/check-isa-prep.tar; \
	env -u OPENBLAS_CORETYPE valgrind --tool=none -q $$prep -o build/check-isa-prep-vg.tar; \
	tar -xOf build/check-isa-prep.tar > build/check-isa-prep.bin; \
	tar -xOf build/check-isa-prep-vg.tar > build/check-isa-prep-vg.bin; \
	cmp build/check-isa-prep.bin build/check-isa-prep-vg.bin && echo "same samples"; fi

check: check-isa

.PHONY: check-isa

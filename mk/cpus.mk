# The suite on the code paths of other CPUs: OpenBLAS's kernels as OPENBLAS_CORETYPE picks them
# (the environment may set it; tools must pass with and without), and our portable kernels
# (CLIP_CPU=generic: no AVX-512 path taken). `make check` runs the unit tests under each
# setting (seconds each); `make check-cpus` runs the whole suite, bats included, under each.
CPU_SETTINGS := OPENBLAS_CORETYPE=Haswell OPENBLAS_CORETYPE=SkylakeX OPENBLAS_CORETYPE=Zen \
                unset:OPENBLAS_CORETYPE CLIP_CPU=generic
# env arguments of one setting
cpu_env = case $$s in unset:*) e="env -u $${s\#unset:}";; *) e="env $$s";; esac

unit-cpus: $(UNIT_TESTS)
	@set -e; for s in $(CPU_SETTINGS); do $(cpu_env); \
	    for t in $(UNIT_TESTS); do $$e ./$$t > build/cpus.log 2>&1 || \
	        { cat build/cpus.log; echo "$$t failed with $$s" >&2; exit 1; }; done; \
	    echo "unit tests pass with $$s"; \
	done

check-cpus: all $(UNIT_TESTS)
	@set -e; for s in $(CPU_SETTINGS); do $(cpu_env); \
	    echo "== make check with $$s"; $$e $(MAKE) -s check CHECK_CPUS_RUNNING=1; done

ifndef CHECK_CPUS_RUNNING
check: unit-cpus
endif

.PHONY: unit-cpus check-cpus

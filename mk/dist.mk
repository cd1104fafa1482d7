# Data-parallel training over MPI (Open MPI, libopenmpi-dev + openmpi-bin from `make deps`).
# lib/train/dist.c is the only file compiled with MPI's flags and clip-train the only program
# linked with its libraries: libclip.a stays usable without MPI (nothing else pulls dist.o in).
# Without libopenmpi-dev dist.c builds as a stub that refuses to run under mpirun.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS := $(shell pkg-config --libs ompi-c 2>/dev/null)
# (the same in the sanitizer and libFuzzer trees, mk/asan.mk and mk/fuzz.mk)
DIST_OBJ := build/lib/train/dist.o build-asan/lib/train/dist.o build-fuzz/lib/train/dist.o
ifeq ($(strip $(MPI_LIBS)),)
$(DIST_OBJ): CLIP_CFLAGS += -DCLIP_NO_MPI
else
$(DIST_OBJ): CLIP_CFLAGS += $(MPI_CFLAGS)
bin/clip-train bin-asan/clip-train: LDLIBS += $(MPI_LIBS)
endif

# The data-parallel step against one process at the same global batch (tests/ref/bench_dist.py):
# 1 process x 2 threads vs 2 ranks x 1 thread; s/step, the share of the step spent waiting for
# the collectives, the bytes all-reduced per step. Small model by default; the reference's
#   make bench-dist BENCH_DIST_ARCH=base          ViT-B/16 + BERT-base, global batch 16
BENCH_DIST_ARCH ?= small
BENCH_DIST_BATCH ?= 16
BENCH_DIST_STEPS ?= 3

bench-dist: bin/clip-train
	/usr/bin/python3 tests/ref/bench_dist.py bin --arch $(BENCH_DIST_ARCH) \
	    --global-batch $(BENCH_DIST_BATCH) --steps $(BENCH_DIST_STEPS)

.PHONY: bench-dist

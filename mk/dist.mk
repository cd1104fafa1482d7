# Data-parallel training over MPI (Open MPI, libopenmpi-dev + openmpi-bin from `make deps`).
# lib/train/dist.c is the only file compiled with MPI's flags and clip-train the only program
# linked with its libraries: libclip.a stays usable without MPI (nothing else pulls dist.o in).
# Without libopenmpi-dev dist.c builds as a stub that refuses to run under mpirun.
MPI_CFLAGS := $(shell pkg-config --cflags ompi-c 2>/dev/null)
MPI_LIBS := $(shell pkg-config --libs ompi-c 2>/dev/null)
ifeq ($(strip $(MPI_LIBS)),)
build/lib/train/dist.o: CLIP_CFLAGS += -DCLIP_NO_MPI
else
build/lib/train/dist.o: CLIP_CFLAGS += $(MPI_CFLAGS)
bin/clip-train: LDLIBS += $(MPI_LIBS)
endif

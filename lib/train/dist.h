/* Data-parallel training over MPI (Open MPI): the train_comm (train/comm.h)
 * of the processes mpirun started. Only the tools that train in parallel
 * link it, with the MPI libraries (`pkg-config ompi-c`); libclip.a's other
 * users never pull it in. Built without MPI (CLIP_NO_MPI), dist_launched()
 * still tells, and dist_open() refuses with an error. */
#ifndef CLIP_DIST_H
#define CLIP_DIST_H

#include "train/comm.h"

/* gradients are all-reduced in buckets of this many floats (4 MiB) */
#define DIST_BUCKET_FLOATS ((size_t)1 << 20)

/* Whether a launcher started this process as one rank of several (Open
 * MPI's mpirun sets OMPI_COMM_WORLD_SIZE, a PMIx launcher PMIX_RANK).
 * Without one the tools run as one process and never initialise MPI (no
 * singleton: that would start Open MPI's runtime for nothing). */
int dist_launched(void);

/* MPI_Init_thread (MPI_THREAD_SERIALIZED: a thread of the comm runs the
 * bucketed gradient all-reduce while the caller's backward goes on), errors
 * returned rather than fatal. The comm of MPI_COMM_WORLD; NULL with an
 * error. dist_close finalises MPI. */
train_comm *dist_open(int *argc, char ***argv);
void dist_close(train_comm *c);
/* "host:pid" of rank r (gathered at dist_open), for messages. */
const char *dist_where(const train_comm *c, int r);

#endif

/* The collective operations of data-parallel training, as a table of calls so
 * that the trainer and the evaluation stay free of MPI: train/dist.c
 * implements it over MPI (only clip-train links it); a test can implement it
 * over threads. A NULL train_comm is one process.
 *
 * Every call is collective: all ranks make it, in the same order, with the
 * same sizes. Each returns 0, or -1 with an error. Between allreduce_start
 * and allreduce_wait the caller makes no other call of the table and leaves
 * the buffers alone (the implementation may run the reduction on its own
 * thread, overlapping the caller's computation). */
#ifndef CLIP_COMM_H
#define CLIP_COMM_H

#include <stddef.h>
#include <stdint.h>

enum { COMM_SUM, COMM_MAX };

typedef struct train_comm train_comm;

/* what went through the table, for the log and the benchmarks */
typedef struct {
    uint64_t bytes_allreduced; /* payload of allreduce_start (floats * 4) */
    uint64_t bytes_gathered;   /* payload received by allgather and reduce_scatter */
    double seconds_blocked;    /* the caller's time inside the calls (allreduce_wait included) */
} comm_stats;

struct train_comm {
    int rank, size;
    void *impl;
    comm_stats stats;
    /* all: [size][bytes], every rank's block in rank order */
    int (*allgather)(train_comm *c, const void *mine, size_t bytes, void *all);
    /* mine [n]: the sum over the ranks of block `rank` of their all [size][n] */
    int (*reduce_scatter)(train_comm *c, const float *all, size_t n, float *mine);
    /* x [n] in place: the sum (COMM_SUM) or maximum (COMM_MAX) over the ranks */
    int (*allreduce_f64)(train_comm *c, double *x, size_t n, int op);
    /* x [n] in place: the sum over the ranks, in buckets; may still be under
     * way when it returns. Several starts may be queued before one wait. */
    int (*allreduce_start)(train_comm *c, float *x, size_t n);
    int (*allreduce_wait)(train_comm *c);
    /* x [bytes] from rank 0 to every rank */
    int (*bcast)(train_comm *c, void *x, size_t bytes);
};

#endif

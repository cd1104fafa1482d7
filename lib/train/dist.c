#include "train/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"

int dist_launched(void)
{
    const char *n = getenv("OMPI_COMM_WORLD_SIZE");
    return (n && *n) || getenv("PMIX_RANK") != NULL;
}

#ifdef CLIP_NO_MPI

train_comm *dist_open(int *argc, char ***argv)
{
    clip_set_error("started by mpirun, but this clip-train was built without MPI (install "
                   "libopenmpi-dev: make deps, and rebuild)");
    return NULL;
}
void dist_close(train_comm *c) {}
const char *dist_where(const train_comm *c, int r) { return "?"; }

#else

#include <mpi.h>
#include <pthread.h>

#define WHERE_LEN 96

typedef struct {
    float *x;
    size_t n;
} reduce_job;

typedef struct {
    char (*where)[WHERE_LEN]; /* [size] "host:pid" */
    int threaded;             /* MPI_THREAD_SERIALIZED granted: reductions on the thread */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    reduce_job *queue; /* [cap] jobs start..end-1 pending */
    size_t start, end, cap;
    int busy, quit, failed;
    char error[512];
} dist_impl;

static int mpi_fail(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    clip_set_error("MPI %s: %.*s (has another rank died?)", what, len, msg);
    return -1;
}

/* MPI counts are ints: large payloads go in pieces */
#define PIECE ((size_t)1 << 30)

static int reduce_buckets(float *x, size_t n, char *err, size_t errlen)
{
    for (size_t off = 0; off < n; off += DIST_BUCKET_FLOATS) {
        size_t k = n - off < DIST_BUCKET_FLOATS ? n - off : DIST_BUCKET_FLOATS;
        int rc = MPI_Allreduce(MPI_IN_PLACE, x + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            int len = 0;
            MPI_Error_string(rc, msg, &len);
            snprintf(err, errlen, "MPI gradient all-reduce: %.*s (has another rank died?)", len,
                     msg);
            return -1;
        }
    }
    return 0;
}

static void *reduce_thread(void *arg)
{
    dist_impl *d = arg;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (d->start == d->end && !d->quit) pthread_cond_wait(&d->wake, &d->lock);
        if (d->start == d->end) break;
        reduce_job job = d->queue[d->start++];
        d->busy = 1;
        pthread_mutex_unlock(&d->lock);
        char err[512];
        int rc = reduce_buckets(job.x, job.n, err, sizeof err);
        pthread_mutex_lock(&d->lock);
        d->busy = 0;
        if (rc && !d->failed) {
            d->failed = 1;
            snprintf(d->error, sizeof d->error, "%s", err);
        }
        pthread_cond_broadcast(&d->done);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static int c_allgather(train_comm *c, const void *mine, size_t bytes, void *all)
{
    double t0 = now_seconds();
    char *tmp = NULL;
    int rc = MPI_SUCCESS;
    if (bytes <= PIECE) {
        rc = MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    } else {
        /* piece by piece through a [size][piece] buffer */
        if (!(tmp = malloc((size_t)c->size * PIECE))) {
            clip_set_error("out of memory gathering %zu bytes", bytes);
            return -1;
        }
        for (size_t off = 0; rc == MPI_SUCCESS && off < bytes; off += PIECE) {
            size_t k = bytes - off < PIECE ? bytes - off : PIECE;
            rc = MPI_Allgather((const char *)mine + off, (int)k, MPI_BYTE, tmp, (int)k, MPI_BYTE,
                               MPI_COMM_WORLD);
            for (int r = 0; rc == MPI_SUCCESS && r < c->size; r++)
                memcpy((char *)all + (size_t)r * bytes + off, tmp + (size_t)r * k, k);
        }
        free(tmp);
    }
    c->stats.seconds_blocked += now_seconds() - t0;
    c->stats.bytes_gathered += (uint64_t)bytes * (c->size - 1);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "all-gather");
}

static int c_reduce_scatter(train_comm *c, const float *all, size_t n, float *mine)
{
    double t0 = now_seconds();
    int rc = MPI_SUCCESS;
    if (n <= PIECE / sizeof(float)) {
        rc = MPI_Reduce_scatter_block(all, mine, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    } else {
        /* block by block: rank r's block reduced onto r */
        for (int r = 0; rc == MPI_SUCCESS && r < c->size; r++)
            for (size_t off = 0; rc == MPI_SUCCESS && off < n; off += PIECE / sizeof(float)) {
                size_t k = n - off < PIECE / sizeof(float) ? n - off : PIECE / sizeof(float);
                rc = MPI_Reduce(all + (size_t)r * n + off, r == c->rank ? mine + off : NULL, (int)k,
                                MPI_FLOAT, MPI_SUM, r, MPI_COMM_WORLD);
            }
    }
    c->stats.seconds_blocked += now_seconds() - t0;
    c->stats.bytes_gathered += (uint64_t)n * sizeof(float) * (c->size - 1);
    return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "reduce-scatter");
}

static int c_allreduce_f64(train_comm *c, double *x, size_t n, int op)
{
    double t0 = now_seconds();
    int rc = MPI_Allreduce(MPI_IN_PLACE, x, (int)n, MPI_DOUBLE, op == COMM_MAX ? MPI_MAX : MPI_SUM,
                           MPI_COMM_WORLD);
    c->stats.seconds_blocked += now_seconds() - t0;
    return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "all-reduce");
}

static int c_allreduce_start(train_comm *c, float *x, size_t n)
{
    dist_impl *d = c->impl;
    c->stats.bytes_allreduced += (uint64_t)n * sizeof(float);
    if (!d->threaded) {
        double t0 = now_seconds();
        char err[512];
        int rc = reduce_buckets(x, n, err, sizeof err);
        c->stats.seconds_blocked += now_seconds() - t0;
        if (rc) clip_set_error("%s", err);
        return rc;
    }
    pthread_mutex_lock(&d->lock);
    if (d->start == d->end) d->start = d->end = 0;
    if (d->end == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 8;
        reduce_job *q = realloc(d->queue, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&d->lock);
            clip_set_error("out of memory queueing a gradient all-reduce");
            return -1;
        }
        d->queue = q, d->cap = cap;
    }
    d->queue[d->end++] = (reduce_job){x, n};
    pthread_cond_signal(&d->wake);
    pthread_mutex_unlock(&d->lock);
    return 0;
}

static int c_allreduce_wait(train_comm *c)
{
    dist_impl *d = c->impl;
    if (!d->threaded) return 0;
    double t0 = now_seconds();
    pthread_mutex_lock(&d->lock);
    while (d->start != d->end || d->busy) pthread_cond_wait(&d->done, &d->lock);
    int failed = d->failed;
    if (failed) clip_set_error("%s", d->error);
    pthread_mutex_unlock(&d->lock);
    c->stats.seconds_blocked += now_seconds() - t0;
    return failed ? -1 : 0;
}

static int c_bcast(train_comm *c, void *x, size_t bytes)
{
    double t0 = now_seconds();
    int rc = MPI_SUCCESS;
    for (size_t off = 0; rc == MPI_SUCCESS && off < bytes; off += PIECE) {
        size_t k = bytes - off < PIECE ? bytes - off : PIECE;
        rc = MPI_Bcast((char *)x + off, (int)k, MPI_BYTE, 0, MPI_COMM_WORLD);
    }
    c->stats.seconds_blocked += now_seconds() - t0;
    return rc == MPI_SUCCESS ? 0 : mpi_fail(rc, "broadcast");
}

train_comm *dist_open(int *argc, char ***argv)
{
    int provided = 0, rc = MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
        mpi_fail(rc, "initialisation");
        return NULL;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    train_comm *c = calloc(1, sizeof *c);
    dist_impl *d = calloc(1, sizeof *d);
    if (!c || !d) goto oom;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    c->impl = d;
    c->allgather = c_allgather;
    c->reduce_scatter = c_reduce_scatter;
    c->allreduce_f64 = c_allreduce_f64;
    c->allreduce_start = c_allreduce_start;
    c->allreduce_wait = c_allreduce_wait;
    c->bcast = c_bcast;
    if (!(d->where = calloc(c->size, sizeof *d->where))) goto oom;
    char mine[WHERE_LEN], host[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(host, &len);
    snprintf(mine, sizeof mine, "%.*s:%ld", len < 64 ? len : 64, host, (long)getpid());
    if (c_allgather(c, mine, WHERE_LEN, d->where)) goto fail;
    c->stats = (comm_stats){0};
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->wake, NULL);
    pthread_cond_init(&d->done, NULL);
    d->threaded = provided >= MPI_THREAD_SERIALIZED &&
                  pthread_create(&d->thread, NULL, reduce_thread, d) == 0;
    return c;
oom:
    clip_set_error("out of memory starting MPI");
fail:
    if (d) free(d->where);
    free(d);
    free(c);
    MPI_Finalize();
    return NULL;
}

void dist_close(train_comm *c)
{
    if (!c) return;
    dist_impl *d = c->impl;
    if (d->threaded) {
        pthread_mutex_lock(&d->lock);
        d->quit = 1;
        pthread_cond_signal(&d->wake);
        pthread_mutex_unlock(&d->lock);
        pthread_join(d->thread, NULL);
    }
    MPI_Finalize();
    free(d->queue);
    free(d->where);
    free(d);
    free(c);
}

const char *dist_where(const train_comm *c, int r)
{
    const dist_impl *d = c->impl;
    return r >= 0 && r < c->size ? d->where[r] : "?";
}

#endif

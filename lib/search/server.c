/* Why a ROUTER socket: with a REP socket one garbage peer cost the next real
 * request its reply. libzmq falls back to ZMTP 1.0 for a peer whose first
 * byte is not 0xff, and turns its random bytes into messages; REP pushes a
 * message's routing frames towards the reply pipe before it knows whether
 * the message is a valid request, and on one without the empty delimiter
 * rolls them back. Once the garbage peer has gone, its routing id finds no
 * pipe, and libzmq 4.3's router_t::rollback() then leaves the socket inside
 * a "message being sent" that the next request's envelope is taken to be
 * the rest of: that request's reply goes nowhere. A ROUTER socket is never
 * rolled back; each message is parsed here, and answered (or not) alone. */
#include "search/server.h"
#include "core/util.h"
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_FRAMES 16 /* of a message kept (routing frames + request); more are counted only */

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_RUNNING, SLOT_DONE, SLOT_ABANDONED };

/* A request held: queued, being answered by a worker, or answered. */
typedef struct {
    enum slot_state state;
    uint64_t seq;              /* arrival order */
    double deadline;           /* now_seconds() */
    zmq_msg_t env[MAX_FRAMES]; /* the envelope the reply goes back with (main thread's) */
    int n_env;
    query_request req; /* the worker's while SLOT_RUNNING */
    char *reply;       /* SLOT_DONE: JSON text */
} slot;

struct query_server {
    void *ctx, *sock;
    char *addr;
    query_server_options o;
    query_engine *qe;
    pthread_mutex_t mu; /* guards the slots' state, seq and reply, busy, shutdown */
    pthread_cond_t work;
    slot slots[QUERY_SERVER_MAX_PENDING];
    uint64_t next_seq;
    pthread_t *threads;
    int n_threads, busy, shutdown;
    int wake[2]; /* a worker writes a byte to wake[1] when it has answered */
};

query_server *query_server_open(const char *addr, const query_server_options *o)
{
    if (o->max_request < 1 || o->max_request > ((size_t)1 << 30) || !(o->time_budget > 0) ||
        o->workers < 1 || o->workers > QUERY_SERVER_MAX_PENDING) {
        clip_set_error("%s: server options out of range (max request %zu bytes, budget %g s, %d "
                       "workers)",
                       addr, o->max_request, o->time_budget, o->workers);
        return NULL;
    }
    query_server *s = xcalloc(1, sizeof *s);
    s->o = *o;
    s->addr = xstrdup(addr);
    s->ctx = zmq_ctx_new();
    s->sock = zmq_socket(s->ctx, ZMQ_ROUTER);
    int64_t max_msg = 2 * (int64_t)o->max_request;
    int handshake = QUERY_SERVER_HANDSHAKE_MS, hwm = 16;
    zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
    zmq_setsockopt(s->sock, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake);
    zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof hwm); /* messages queued per peer */
    if (zmq_bind(s->sock, addr)) {
        clip_set_error("%s: cannot bind: %s", addr, zmq_strerror(zmq_errno()));
        zmq_close(s->sock);
        zmq_ctx_term(s->ctx);
        free(s->addr);
        free(s);
        return NULL;
    }
    if (pipe2(s->wake, O_NONBLOCK | O_CLOEXEC)) { /* out of descriptors */
        clip_set_error("%s: pipe: %s", addr, strerror(errno));
        zmq_close(s->sock);
        zmq_ctx_term(s->ctx);
        free(s->addr);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    return s;
}

/* ---- replies (main thread) ---- */

static void send_reply(query_server *s, zmq_msg_t *env, int n_env, const char *text)
{
    /* ROUTER never blocks: a reply to a peer that has gone, or whose queue is
     * full, is dropped. The envelope's frames are sent as copies: the caller
     * closes its own. */
    for (int i = 0; i < n_env; i++) {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        zmq_msg_copy(&copy, &env[i]);
        while (zmq_msg_send(&copy, s->sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 &&
               zmq_errno() == EINTR) {}
        zmq_msg_close(&copy);
    }
    while (zmq_send(s->sock, text, strlen(text), ZMQ_DONTWAIT) < 0 && zmq_errno() == EINTR) {}
}

/* {"error": clip_error()} */
static void send_error(query_server *s, zmq_msg_t *env, int n_env)
{
    json_t *j = query_error_json(clip_error());
    char *text = json_dumps(j, JSON_COMPACT);
    send_reply(s, env, n_env, text);
    free(text);
    json_decref(j);
}

static void free_slot(slot *sl)
{
    for (int i = 0; i < sl->n_env; i++) zmq_msg_close(&sl->env[i]);
    sl->n_env = 0;
    query_request_free(&sl->req);
    free(sl->reply);
    sl->reply = NULL;
    sl->state = SLOT_FREE;
}

/* Past a request's deadline its worker gets this long to say where it stopped
 * before the main thread answers for it */
static double grace(const query_server *s) { return fmin(0.2, 0.1 * s->o.time_budget); }

/* Sends what the workers have answered, and the budget's error for requests
 * past their deadline (a worker still on one drops its answer). Under s->mu. */
static void collect(query_server *s)
{
    double now = now_seconds() - grace(s);
    for (int i = 0; i < QUERY_SERVER_MAX_PENDING; i++) {
        slot *sl = &s->slots[i];
        if (sl->state == SLOT_DONE) {
            send_reply(s, sl->env, sl->n_env, sl->reply);
            free_slot(sl);
        } else if ((sl->state == SLOT_QUEUED || sl->state == SLOT_RUNNING) && now > sl->deadline) {
            clip_set_error("request: over the time budget of %g s while %s (--time-budget SEC)",
                           s->o.time_budget,
                           sl->state == SLOT_QUEUED ? "waiting for a worker" : "being answered");
            send_error(s, sl->env, sl->n_env);
            if (sl->state == SLOT_QUEUED) {
                free_slot(sl);
            } else { /* the worker frees the rest */
                for (int f = 0; f < sl->n_env; f++) zmq_msg_close(&sl->env[f]);
                sl->n_env = 0;
                sl->state = SLOT_ABANDONED;
            }
        }
    }
}

/* ---- requests (main thread) ---- */

/* One message of n kept frames (frames[0] the routing id; `extra` more were
 * dropped, of extra_bytes) -> an answer now, or a slot for a worker. */
static void take_message(query_server *s, zmq_msg_t *frames, int n, int extra, size_t extra_bytes,
                         int *quit)
{
    int body = 1; /* REQ: [id][...][empty][json]; DEALER: [id][json] */
    for (int i = 1; i < n; i++)
        if (zmq_msg_size(&frames[i]) == 0) {
            body = i + 1;
            break;
        }
    int n_body = n - body + extra;
    size_t bytes = extra_bytes;
    for (int i = body; i < n; i++) bytes += zmq_msg_size(&frames[i]);
    int n_env = body < n ? body : n;
    query_request req;
    if (n_body != 1 || extra) {
        clip_set_error("request: %d frames after the routing envelope; send the JSON as one "
                       "message (a REQ or DEALER socket)",
                       n_body);
    } else if (bytes > s->o.max_request) {
        clip_set_error("request: %zu bytes, more than the limit of %zu (--max-request BYTES)",
                       bytes, s->o.max_request);
    } else if (!query_request_parse(zmq_msg_data(&frames[body]), bytes, &req)) {
        if (req.kind == QUERY_QUIT) {
            *quit = 1;
            send_reply(s, frames, n_env, "{\"ok\":true}");
            query_request_free(&req);
            goto out;
        }
        pthread_mutex_lock(&s->mu);
        slot *sl = NULL;
        for (int i = 0; i < QUERY_SERVER_MAX_PENDING && !sl; i++)
            if (s->slots[i].state == SLOT_FREE) sl = &s->slots[i];
        if (sl) {
            for (int i = 0; i < n_env; i++) {
                zmq_msg_init(&sl->env[i]);
                zmq_msg_move(&sl->env[i], &frames[i]);
            }
            sl->n_env = n_env;
            sl->req = req;
            sl->seq = s->next_seq++;
            sl->deadline = now_seconds() + s->o.time_budget;
            sl->state = SLOT_QUEUED;
            pthread_cond_signal(&s->work);
        }
        pthread_mutex_unlock(&s->mu);
        if (sl) goto out;
        query_request_free(&req);
        clip_set_error("request: the server is busy with %d requests; try again later",
                       QUERY_SERVER_MAX_PENDING);
    }
    send_error(s, frames, n_env);
out:
    for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
}

/* Reads the messages waiting (at most 64, so that replies go out between);
 * -1 on a socket error. */
static int receive(query_server *s, int *quit)
{
    for (int m = 0; m < 64 && !*quit; m++) {
        zmq_msg_t frames[MAX_FRAMES];
        int n = 0, extra = 0, more = 1;
        size_t extra_bytes = 0;
        while (more) {
            zmq_msg_t f;
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, s->sock, ZMQ_DONTWAIT) < 0) {
                int e = zmq_errno();
                zmq_msg_close(&f);
                for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
                if (e == EAGAIN || e == EINTR) return 0; /* the parts of a message come together */
                clip_set_error("%s: receive: %s", s->addr, zmq_strerror(e));
                return -1;
            }
            more = zmq_msg_more(&f);
            if (n < MAX_FRAMES) {
                frames[n++] = f;
            } else {
                extra++;
                extra_bytes += zmq_msg_size(&f);
                zmq_msg_close(&f);
            }
        }
        if (n < 2) { /* a routing id and nothing: nothing to answer */
            for (int i = 0; i < n; i++) zmq_msg_close(&frames[i]);
            continue;
        }
        take_message(s, frames, n, extra, extra_bytes, quit);
    }
    return 0;
}

/* ---- workers ---- */

static void *worker(void *arg)
{
    query_server *s = arg;
    if (s->qe->threads > 0) omp_set_num_threads(s->qe->threads); /* main's setting is its own */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        slot *job = NULL;
        while (!s->shutdown) {
            for (int i = 0; i < QUERY_SERVER_MAX_PENDING; i++)
                if (s->slots[i].state == SLOT_QUEUED && (!job || s->slots[i].seq < job->seq))
                    job = &s->slots[i];
            if (job) break;
            pthread_cond_wait(&s->work, &s->mu);
        }
        if (!job) break;
        job->state = SLOT_RUNNING;
        s->busy++;
        pthread_mutex_unlock(&s->mu);

        query_budget b = {job->deadline, s->o.time_budget};
        json_t *r = query_run(s->qe, &job->req, &b);
        if (!r) r = query_error_json(clip_error());
        char *text = json_dumps(r, JSON_COMPACT);
        json_decref(r);
        if (!text) {
            json_t *e = query_error_json("request: the reply could not be written as JSON");
            text = json_dumps(e, JSON_COMPACT);
            json_decref(e);
        }

        pthread_mutex_lock(&s->mu);
        s->busy--;
        if (job->state == SLOT_ABANDONED) { /* answered already by collect() */
            free(text);
            free_slot(job);
        } else {
            job->reply = text;
            job->state = SLOT_DONE;
        }
        if (write(s->wake[1], "", 1) < 0) {} /* full: main is awake anyway */
    }
    pthread_mutex_unlock(&s->mu);
    image_thread_done();
    return NULL;
}

static int start_workers(query_server *s)
{
    /* signals go to the main thread (and its OpenMP threads), whose poll they end */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    s->threads = xcalloc(s->o.workers, sizeof *s->threads);
    int err = 0;
    for (s->n_threads = 0; s->n_threads < s->o.workers && !err; s->n_threads++)
        if ((err = pthread_create(&s->threads[s->n_threads], NULL, worker, s))) break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        clip_set_error("%s: cannot start worker thread %d: %s", s->addr, s->n_threads + 1,
                       strerror(err));
        return -1;
    }
    return 0;
}

/* ---- the loop ---- */

int query_server_run(query_server *s, query_engine *qe)
{
    s->qe = qe;
    if (!s->n_threads && start_workers(s) < 0) return -1;
    int quit = 0, stopping = 0;
    for (;;) {
        int stop = quit || (s->o.stop && *s->o.stop);
        pthread_mutex_lock(&s->mu);
        if (stop && !stopping) { /* nothing more is received: answer what is queued */
            stopping = 1;
            for (int i = 0; i < QUERY_SERVER_MAX_PENDING; i++)
                if (s->slots[i].state == SLOT_QUEUED) {
                    clip_set_error("request: the server is stopping");
                    send_error(s, s->slots[i].env, s->slots[i].n_env);
                    free_slot(&s->slots[i]);
                }
        }
        collect(s);
        double next = INFINITY;
        int running = 0;
        for (int i = 0; i < QUERY_SERVER_MAX_PENDING; i++) {
            slot *sl = &s->slots[i];
            if (sl->state == SLOT_QUEUED || sl->state == SLOT_RUNNING || sl->state == SLOT_DONE) {
                running += sl->state != SLOT_QUEUED;
                if (sl->deadline < next) next = sl->deadline;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (stopping && !running) break;
        double wait_ms = fmin(200, fmax(0, (next + grace(s) - now_seconds()) * 1000));
        zmq_pollitem_t items[2] = {
            {.socket = s->sock, .events = stopping ? 0 : ZMQ_POLLIN},
            {.fd = s->wake[0], .events = ZMQ_POLLIN},
        };
        int n = zmq_poll(items, 2, (long)ceil(wait_ms));
        if (n < 0 && zmq_errno() != EINTR) {
            clip_set_error("%s: poll: %s", s->addr, zmq_strerror(zmq_errno()));
            return -1;
        }
        if (n <= 0) continue;
        if (items[1].revents) {
            char drain[64];
            while (read(s->wake[0], drain, sizeof drain) > 0) {}
        }
        if ((items[0].revents & ZMQ_POLLIN) && receive(s, &quit)) return -1;
    }
    return quit ? 0 : 1;
}

int query_server_close(query_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->shutdown = 1;
    pthread_cond_broadcast(&s->work);
    int stuck = s->busy;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++) {
        if (stuck)
            pthread_detach(s->threads[i]);
        else
            pthread_join(s->threads[i], NULL);
    }
    /* not 0: the last replies may still be queued; 1 s bounds the wait for a
     * client that went away */
    int linger = 1000;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(s->sock);
    while (zmq_ctx_term(s->ctx) < 0 && zmq_errno() == EINTR) {}
    const char *path = strncmp(s->addr, "ipc://", 6) ? NULL : s->addr + 6;
    if (path && *path != '@' && strcmp(path, "*")) unlink(path); /* libzmq 4.3 leaves it */
    if (stuck) return -1;                                        /* the stuck workers still use s */
    for (int i = 0; i < QUERY_SERVER_MAX_PENDING; i++) free_slot(&s->slots[i]);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->mu);
    free(s->threads);
    free(s->addr);
    free(s);
    return 0;
}

char *query_server_ask(const char *addr, const char *req, size_t len, int timeout_ms,
                       size_t *reply_len)
{
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_REQ);
    int linger = 0;
    char *reply = NULL;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_connect(sock, addr)) {
        clip_set_error("%s: cannot connect: %s", addr, zmq_strerror(zmq_errno()));
    } else if (zmq_send(sock, req, len, 0) < 0) {
        clip_set_error("%s: send: %s", addr, zmq_strerror(zmq_errno()));
    } else if (zmq_msg_recv(&msg, sock, 0) < 0) {
        clip_set_error("%s: no reply within %d s: %s", addr, timeout_ms / 1000,
                       zmq_strerror(zmq_errno()));
    } else {
        *reply_len = zmq_msg_size(&msg);
        reply = xmalloc(*reply_len + 1);
        memcpy(reply, zmq_msg_data(&msg), *reply_len);
        reply[*reply_len] = 0;
    }
    zmq_msg_close(&msg);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return reply;
}

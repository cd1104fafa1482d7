/* clip-query's request server: JSON requests (search/query.h) on a ZeroMQ
 * ROUTER socket, each answered on its own by a pool of worker threads, so
 * that a slow or garbage request holds up no other client.
 *
 * A request is one message from a REQ socket ([routing id][empty][JSON]) or
 * a DEALER socket ([routing id][JSON]); the reply goes back with the same
 * envelope: a query_run result, {"ok": true} for {"quit": true}, or
 * {"error": "..."}. Limits, each answered with an error, the server going on:
 *   max_request   bytes of a request; ZMQ_MAXMSGSIZE is twice it, so that a
 *                 bigger message is not even read (its peer is disconnected
 *                 and gets no reply);
 *   time_budget   seconds from a request's arrival to its reply: a request
 *                 not answered by then is answered with an error, by its
 *                 worker (which gives up at the next stage: see query_budget)
 *                 or, a tenth of the budget (at most 0.2 s) later, by the
 *                 server, the worker's answer then dropped;
 *   pending       at most QUERY_SERVER_MAX_PENDING requests held (queued or
 *                 being answered); one more is answered "busy" at once.
 * A peer that does not finish the ZeroMQ handshake within
 * QUERY_SERVER_HANDSHAKE_MS is disconnected. */
#ifndef CLIP_SERVER_H
#define CLIP_SERVER_H

#include <signal.h>
#include <stddef.h>

#include "search/query.h"

#define QUERY_SERVER_MAX_REQUEST ((size_t)1 << 20)
#define QUERY_SERVER_TIME_BUDGET 60.0
#define QUERY_SERVER_WORKERS 4
#define QUERY_SERVER_MAX_PENDING 64
#define QUERY_SERVER_HANDSHAKE_MS 10000

typedef struct {
    size_t max_request;          /* bytes, 1..1 GiB */
    double time_budget;          /* seconds, > 0 */
    int workers;                 /* requests answered at once, 1..QUERY_SERVER_MAX_PENDING */
    volatile sig_atomic_t *stop; /* NULL, or set non-zero (by a signal handler) to stop */
} query_server_options;

typedef struct query_server query_server;

/* Binds a ROUTER socket to addr (tcp://, ipc://, ...). NULL with
 * clip_error() naming addr. */
query_server *query_server_open(const char *addr, const query_server_options *o);

/* Answers requests with qe (whose threads field sets the workers' OpenMP
 * threads) until {"quit": true} (0) or *o->stop (1). Then it receives no
 * more: the requests still queued are answered with an error, the ones
 * being answered get their reply (or the budget's error), and it returns.
 * -1 with clip_error() if the socket fails. */
int query_server_run(query_server *s, query_engine *qe);

/* Closes the socket (waiting up to 1 s for the last replies to go out) and
 * removes the file of an ipc:// address. 0; or -1 when a worker is still
 * stuck in a request past its budget (a read that does not return): its
 * thread and memory are then left to the process's exit, and qe must not be
 * destroyed. */
int query_server_close(query_server *s);

/* The client side: sends req (len bytes) to a server at addr on a REQ socket
 * and waits at most timeout_ms for the reply: malloc'd, NUL-terminated,
 * *reply_len bytes. NULL with clip_error() naming addr (cannot connect, no
 * reply in time). */
char *query_server_ask(const char *addr, const char *req, size_t len, int timeout_ms,
                       size_t *reply_len);

#endif

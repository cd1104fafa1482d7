#include "io/stream.h"
#include "io/shards.h"
#include "core/atomic_file.h"
#include "core/util.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

int stream_is_zmq(const char *endpoint)
{
    const char *e = endpoint;
    if (*e == '@' || *e == '>') e++;
    return !strncmp(e, "tcp://", 6) || !strncmp(e, "ipc://", 6) || !strncmp(e, "inproc://", 9);
}

/* ZeroMQ endpoint: "[@|>]tcp://host:port[?name=value&...]" (clip-stream(5)).
 * '@' binds, '>' connects; readers bind and writers connect by default. */
typedef struct {
    char addr[512];
    int bind;
    int producers;    /* reader: streams that must end before the stream does */
    int credit;       /* samples a producer may have in flight, not acknowledged;
                       * a writer's 0 takes the reader's */
    int timeout_ms;   /* the longest wait hearing nothing from the other side; 0: no limit */
    int heartbeat_ms; /* a connection silent this long (ZMTP heartbeats) is dead */
} zmq_endpoint;

#define STREAM_DEFAULT_CREDIT 16
#define STREAM_DEFAULT_TIMEOUT_S 60
#define STREAM_DEFAULT_HEARTBEAT_S 10
#define STREAM_MAX_PRODUCERS 4096
/* the largest message a reader takes; libzmq drops a peer that sends more */
#define STREAM_MAX_MESSAGE ((int64_t)4 << 30)
/* a reader probes its producers, and an unanswered writer repeats its hello, this often */
#define STREAM_TICK_MS 1000

static int parse_zmq_endpoint(const char *endpoint, int bind_default, zmq_endpoint *z)
{
    *z = (zmq_endpoint){.bind = bind_default,
                        .producers = 1,
                        .credit = 0,
                        .timeout_ms = STREAM_DEFAULT_TIMEOUT_S * 1000,
                        .heartbeat_ms = STREAM_DEFAULT_HEARTBEAT_S * 1000};
    const char *e = endpoint;
    if (*e == '@')
        z->bind = 1, e++;
    else if (*e == '>')
        z->bind = 0, e++;
    if (strlen(e) >= sizeof z->addr) {
        clip_set_error("%s: endpoint longer than %zu bytes", endpoint, sizeof z->addr - 1);
        return -1;
    }
    snprintf(z->addr, sizeof z->addr, "%s", e);
    char *q = strchr(z->addr, '?');
    if (!q) return 0;
    *q++ = 0;
    char *save;
    for (char *opt = strtok_r(q, "&", &save); opt; opt = strtok_r(NULL, "&", &save)) {
        static const struct {
            const char *name;
            long lo, hi;
        } options[] = {{"producers", 1, STREAM_MAX_PRODUCERS},
                       {"credit", 1, 65536},
                       {"hwm", 1, 65536},
                       {"timeout", 0, 7 * 86400},
                       {"heartbeat", 1, 3600}};
        char *eq = strchr(opt, '=');
        int k = -1;
        for (int i = 0; eq && i < (int)(sizeof options / sizeof *options); i++)
            if ((size_t)(eq - opt) == strlen(options[i].name) &&
                !strncmp(opt, options[i].name, eq - opt))
                k = i;
        if (k < 0) {
            clip_set_error("%s: unknown endpoint option '%s' (producers=N, credit=N, "
                           "timeout=SECONDS, heartbeat=SECONDS)",
                           endpoint, opt);
            return -1;
        }
        char *end;
        errno = 0;
        long v = strtol(eq + 1, &end, 10);
        if (end == eq + 1 || *end || errno || v < options[k].lo || v > options[k].hi) {
            clip_set_error("%s: endpoint option '%s' wants a whole number from %ld to %ld",
                           endpoint, opt, options[k].lo, options[k].hi);
            return -1;
        }
        switch (k) {
        case 0: z->producers = (int)v; break;
        case 1:
        case 2: z->credit = (int)v; break; /* hwm: the older name of a writer's credit */
        case 3: z->timeout_ms = (int)v * 1000; break;
        default: z->heartbeat_ms = (int)v * 1000; break;
        }
    }
    return 0;
}

/* Each endpoint has a context of its own. A reader is a ROUTER socket, a
 * writer a DEALER named by `id` (its routing id), with a monitor socket
 * (*monitor) that reports its reader's disconnection; both ends detect a
 * dead peer with ZMTP heartbeats. Nothing is bounded by high-water marks:
 * the credit (samples not yet acknowledged) bounds what is queued. */
static void *zmq_open(const char *endpoint, int type, const char *id, zmq_endpoint *z, void **ctx,
                      void **monitor)
{
    if (parse_zmq_endpoint(endpoint, type == ZMQ_ROUTER, z)) return NULL;
    *ctx = zmq_ctx_new();
    void *sock = zmq_socket(*ctx, type);
    int zero = 0, one = 1;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &zero, sizeof zero);
    int ivl = z->heartbeat_ms / 4 > 100 ? z->heartbeat_ms / 4 : 100;
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_TIMEOUT, &z->heartbeat_ms, sizeof z->heartbeat_ms);
    zmq_setsockopt(sock, ZMQ_HEARTBEAT_TTL, &z->heartbeat_ms, sizeof z->heartbeat_ms);
    if (type == ZMQ_ROUTER) {
        /* a send to a producer whose connection is gone fails (EHOSTUNREACH)
         * instead of vanishing: that is how a reader finds its dead producers */
        zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
        zmq_setsockopt(sock, ZMQ_IMMEDIATE, &one, sizeof one);
        int64_t max = STREAM_MAX_MESSAGE;
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max);
    } else {
        zmq_setsockopt(sock, ZMQ_ROUTING_ID, id, strlen(id));
        /* watched before connecting, so no disconnection goes unseen */
        zmq_socket_monitor(sock, "inproc://stream-monitor", ZMQ_EVENT_DISCONNECTED);
        *monitor = zmq_socket(*ctx, ZMQ_PAIR);
        zmq_setsockopt(*monitor, ZMQ_LINGER, &zero, sizeof zero);
        zmq_connect(*monitor, "inproc://stream-monitor");
    }
    int rc = z->bind ? zmq_bind(sock, z->addr) : zmq_connect(sock, z->addr);
    if (rc) {
        clip_set_error("%s: cannot %s: %s", z->addr, z->bind ? "bind" : "connect",
                       zmq_strerror(zmq_errno()));
        if (type != ZMQ_ROUTER) zmq_close(*monitor);
        zmq_close(sock);
        zmq_ctx_term(*ctx);
        return NULL;
    }
    return sock;
}

/* The protocol (clip-stream(5)): single-part messages whose first byte is
 * their kind; counts are u64, credits u32, little-endian. */
enum {
    MSG_HELLO = 'H',   /* writer: u32 credit wanted (0: the reader's) */
    MSG_SAMPLE = 'S',  /* writer: u64 sequence number from 0, the sample */
    MSG_END = 'E',     /* writer: u64 samples sent; the stream is complete */
    MSG_ABORT = 'X',   /* writer: u64 samples sent; the producer failed */
    MSG_WELCOME = 'W', /* reader: u32 credit granted */
    MSG_ACK = 'A',     /* reader: u64 samples passed on so far */
    MSG_DONE = 'D',    /* reader: u64 samples passed on: all of them, and the end */
    MSG_REFUSED = 'R', /* reader: why, as text */
};

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* A reader's view of one producer, known by its routing id. */
typedef struct {
    unsigned char id[256];
    size_t id_len;
    char name[64];     /* the id, printable */
    uint64_t received; /* samples arrived (the next sequence number) */
    uint64_t passed;   /* samples passed on to the consumer: acknowledged */
    uint32_t credit;
    int ended;
} zmq_producer;

typedef struct {
    zmq_msg_t msg; /* a MSG_SAMPLE */
    int producer;
} zmq_queued;

typedef struct {
    void *ctx, *sock;
    zmq_endpoint ep;
    zmq_producer *producers; /* ep.producers slots, the first n_known in use */
    int n_known, n_ended;
    zmq_queued *queue; /* ring, in arrival order; at most credit per producer */
    size_t q_head, q_len, q_cap;
    int handed;        /* producer of the sample last returned, unacknowledged; -1 */
    double last_probe; /* seconds (now_seconds) */
    char *failure;     /* set once the stream has failed: every later read repeats it */
} zmq_reader;

typedef struct {
    void *ctx, *sock, *monitor;
    zmq_endpoint ep;
    uint64_t sent, acked;
    uint32_t window; /* samples in flight allowed: 0 until the reader's welcome */
    int hello_sent, welcomed, ended, done;
    double last_heard, last_hello; /* seconds (now_seconds) */
    char *failure;
} zmq_writer;

static void writer_hello(zmq_writer *z);

/* ---- reader ---- */

struct stream_reader {
    const char *name;
    struct archive *ar;
    int fd, close_fd, at_eof;
    unsigned char buf[1 << 16];
    /* A tar stream cut at a member boundary looks complete to libarchive;
     * the end-of-archive marker (two zero blocks) tells it apart. */
    unsigned char tail[1024];
    size_t total;
    int have_pending; /* a header of the next sample has been read */
    char *pending_key;
    char *pending_path;
    const char *pending_field; /* points into pending_path */
    size_t pending_size;
    size_t samples;
    char *last_key;
    zmq_reader *zmq; /* ZeroMQ endpoints only */
    /* shards (io/shards.h): read one after the other through cur */
    char **shards;
    size_t n_shards, next_shard;
    stream_reader *cur;
};

static void reader_set_last(stream_reader *r, const char *key)
{
    free(r->last_key);
    r->last_key = xstrdup(key);
}

static int where(char *buf, size_t n, stream_reader *r)
{
    if (r->last_key) return snprintf(buf, n, "after sample %s (#%zu)", r->last_key, r->samples);
    return snprintf(buf, n, "before the first sample");
}

static la_ssize_t raw_read(struct archive *a, void *ctx, const void **out);

stream_reader *stream_open_read(const char *endpoint)
{
    stream_reader *r = xcalloc(1, sizeof *r);
    r->name = (!endpoint || !strcmp(endpoint, "-")) ? "<stdin>" : endpoint;
    if (endpoint && stream_is_zmq(endpoint)) {
        zmq_reader *z = xcalloc(1, sizeof *z);
        if (!(z->sock = zmq_open(endpoint, ZMQ_ROUTER, NULL, &z->ep, &z->ctx, NULL))) {
            free(z);
            free(r);
            return NULL;
        }
        if (!z->ep.credit) z->ep.credit = STREAM_DEFAULT_CREDIT;
        z->producers = xcalloc(z->ep.producers, sizeof *z->producers);
        z->handed = -1;
        z->last_probe = now_seconds();
        r->zmq = z;
        return r;
    }
    if (endpoint && (strchr(endpoint, '{') || strstr(endpoint, "::"))) {
        if (!(r->shards = shards_expand(endpoint, &r->n_shards))) {
            free(r);
            return NULL;
        }
        for (size_t i = 0; i < r->n_shards; i++) /* a missing shard fails now, not hours later */
            if (access(r->shards[i], R_OK)) {
                clip_set_error("%s: %s (shard %zu of %zu of %s)", r->shards[i], strerror(errno),
                               i + 1, r->n_shards, endpoint);
                stream_close_read(r);
                return NULL;
            }
        if (!(r->cur = stream_open_read(r->shards[r->next_shard++]))) {
            stream_close_read(r);
            return NULL;
        }
        return r;
    }
    if (!endpoint || !strcmp(endpoint, "-")) {
        r->fd = 0;
    } else if ((r->fd = open(endpoint, O_RDONLY)) < 0) {
        clip_set_error("%s: %s", endpoint, strerror(errno));
        free(r);
        return NULL;
    } else {
        r->close_fd = 1;
    }
    r->ar = archive_read_new();
    archive_read_support_format_tar(r->ar);
    archive_read_support_format_empty(r->ar);
    archive_read_support_filter_all(r->ar);
    if (archive_read_open(r->ar, r, NULL, raw_read, NULL) != ARCHIVE_OK) {
        clip_set_error("%s: not a tar stream of samples: %s", r->name, archive_error_string(r->ar));
        stream_close_read(r);
        return NULL;
    }
    return r;
}

static la_ssize_t raw_read(struct archive *a, void *ctx, const void **out)
{
    stream_reader *r = ctx;
    ssize_t n;
    do n = read(r->fd, r->buf, sizeof r->buf);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        archive_set_error(a, errno, "read error: %s", strerror(errno));
        return -1;
    }
    size_t keep = sizeof r->tail;
    if ((size_t)n >= keep) {
        memcpy(r->tail, r->buf + n - keep, keep);
    } else if (n > 0) {
        memmove(r->tail, r->tail + n, keep - n);
        memcpy(r->tail + keep - n, r->buf, n);
    }
    r->total += (size_t)n;
    *out = r->buf;
    return n;
}

static int ends_with_marker(const stream_reader *r)
{
    if (r->total == 0 || archive_filter_code(r->ar, 0) != ARCHIVE_FILTER_NONE) return 1;
    if (r->total < sizeof r->tail) return 0;
    for (size_t i = 0; i < sizeof r->tail; i++)
        if (r->tail[i]) return 0;
    return 1;
}

/* Next regular-file member header: 1, 0 at end, -1 on error. */
static int next_member(stream_reader *r)
{
    if (r->at_eof) return 0;
    for (;;) {
        struct archive_entry *e;
        int rc = archive_read_next_header(r->ar, &e);
        if (rc == ARCHIVE_EOF) {
            r->at_eof = 1;
            if (!ends_with_marker(r)) {
                char w[600];
                where(w, sizeof w, r);
                clip_set_error("%s: truncated tar stream (no end-of-archive marker) %s", r->name,
                               w);
                return -1;
            }
            return 0;
        }
        if (rc < ARCHIVE_WARN) {
            char w[600];
            where(w, sizeof w, r);
            if (r->samples == 0 && !r->pending_key)
                clip_set_error("%s: not a tar stream of samples: %s", r->name,
                               archive_error_string(r->ar));
            else
                clip_set_error("%s: malformed or truncated tar stream %s: %s", r->name, w,
                               archive_error_string(r->ar));
            return -1;
        }
        if (archive_entry_filetype(e) != AE_IFREG) continue; /* directories etc. */
        const char *path = archive_entry_pathname(e);
        const char *field;
        char *key;
        if (!path || sample_split_member_name(path, &key, &field)) {
            clip_set_error("%s: member '%s' is not named <key>.<field>", r->name, path ? path : "");
            return -1;
        }
        free(r->pending_key);
        free(r->pending_path);
        r->pending_key = key;
        r->pending_path = xstrdup(path);
        r->pending_field = r->pending_path + (field - path);
        r->pending_size = archive_entry_size_is_set(e) ? (size_t)archive_entry_size(e) : 0;
        r->have_pending = 1;
        return 1;
    }
}

static int read_member_data(stream_reader *r, sample *s)
{
    const size_t limit = STREAM_MAX_MEMBER;
    if (r->pending_size > limit) {
        clip_set_error("%s: sample %s: member %s claims %zu bytes, more than the limit of %zu "
                       "for one field",
                       r->name, r->pending_key, r->pending_path, r->pending_size, limit);
        return -1;
    }
    /* memory follows the bytes that arrive, up to the declared size, not the size alone: a
     * 1 KB stream claiming a 1 GB member is refused as truncated, not out of memory */
    const size_t first = 1 << 20;
    size_t declared = r->pending_size, cap = declared < first ? declared : first, n = 0;
    unsigned char *buf = xmalloc(cap ? cap : 1);
    for (;;) {
        if (n == cap) {
            if (n > limit) {
                free(buf);
                clip_set_error("%s: sample %s: member %s has more than the limit of %zu bytes "
                               "for one field",
                               r->name, r->pending_key, r->pending_path, limit);
                return -1;
            }
            cap = cap ? 2 * cap : 4096;
            if (n < declared && cap > declared) cap = declared;
            if (cap > limit + 1) cap = limit + 1;
            buf = xrealloc(buf, cap);
        }
        la_ssize_t got = archive_read_data(r->ar, buf + n, cap - n);
        if (got < 0) {
            free(buf);
            clip_set_error("%s: sample %s: member %s truncated or unreadable: %s", r->name,
                           r->pending_key, r->pending_path, archive_error_string(r->ar));
            return -1;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    const char *field = r->pending_field;
    if (sample_get(s, field)) {
        free(buf);
        clip_set_error("%s: sample %s: field %s appears twice", r->name, s->key, field);
        return -1;
    }
    sample_set(s, field, buf, n);
    return 0;
}

/* A sample, after a message's kind and sequence number: u32 key length, key,
 * u32 field count, then per field u32 name length, name, u64 size, data. */
static int take(const unsigned char **p, const unsigned char *end, void *dst, size_t n)
{
    if ((size_t)(end - *p) < n) return -1;
    memcpy(dst, *p, n);
    *p += n;
    return 0;
}

static int decode_sample(const unsigned char *p, size_t len, sample *s)
{
    const unsigned char *end = p + len;
    uint32_t kl, nf;
    if (take(&p, end, &kl, 4) || kl > (size_t)(end - p)) return -1;
    s->key = xstrndup((const char *)p, kl);
    p += kl;
    if (take(&p, end, &nf, 4)) return -1;
    for (uint32_t i = 0; i < nf; i++) {
        uint32_t nl;
        uint64_t size;
        if (take(&p, end, &nl, 4) || nl > (size_t)(end - p)) return -1;
        char *name = xstrndup((const char *)p, nl);
        p += nl;
        if (take(&p, end, &size, 8) || size > (uint64_t)(end - p) || size > STREAM_MAX_MEMBER ||
            sample_get(s, name)) {
            free(name);
            return -1;
        }
        sample_set_copy(s, name, p, size);
        free(name);
        p += size;
    }
    return p == end ? 0 : -1;
}

static int reader_fail(stream_reader *r, zmq_reader *z, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int reader_fail(stream_reader *r, zmq_reader *z, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_set_verror(r->name, fmt, ap);
    va_end(ap);
    if (!z->failure) z->failure = xstrdup(clip_error());
    return -1;
}

/* "1 of 2 producers ended their streams, 1 never connected" */
static void describe_producers(const zmq_reader *z, int dead, char *buf, size_t n)
{
    int streaming = z->n_known - z->n_ended - dead, absent = z->ep.producers - z->n_known;
    int len = snprintf(buf, n, "%d of %d producer%s ended %s stream%s", z->n_ended, z->ep.producers,
                       z->ep.producers == 1 ? "" : "s", z->ep.producers == 1 ? "its" : "their",
                       z->ep.producers == 1 ? "" : "s");
    if (dead && len < (int)n) len += snprintf(buf + len, n - len, ", %d disconnected", dead);
    if (streaming && len < (int)n)
        len += snprintf(buf + len, n - len, ", %d still streaming", streaming);
    if (absent && len < (int)n) snprintf(buf + len, n - len, ", %d never connected", absent);
}

/* To one producer, by routing id: 0, or 1 when its connection is gone. */
static int reader_send(zmq_reader *z, const void *id, size_t id_len, const void *msg, size_t n)
{
    if (zmq_send(z->sock, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return zmq_errno() == EHOSTUNREACH;
    zmq_send(z->sock, msg, n, ZMQ_DONTWAIT);
    return 0;
}

/* The producer's count of samples passed on: MSG_DONE once its stream has
 * ended and every sample is passed on. Also the probe of a live producer. */
static int reader_ack(zmq_reader *z, zmq_producer *p)
{
    unsigned char m[9];
    m[0] = p->ended && p->passed == p->received ? MSG_DONE : MSG_ACK;
    memcpy(m + 1, &p->passed, 8);
    return reader_send(z, p->id, p->id_len, m, sizeof m);
}

static void reader_refuse(zmq_reader *z, const zmq_msg_t *id, const char *why)
{
    char m[256];
    int n = snprintf(m, sizeof m, "%c%s", MSG_REFUSED, why);
    reader_send(z, zmq_msg_data((zmq_msg_t *)id), zmq_msg_size((zmq_msg_t *)id), m, (size_t)n);
}

/* The sample handed to the consumer last is passed on once it asks for the
 * next one (or closes): it has written or used it. */
static void reader_pass_on(zmq_reader *z)
{
    if (z->handed < 0) return;
    zmq_producer *p = &z->producers[z->handed];
    z->handed = -1;
    p->passed++;
    reader_ack(z, p);
}

/* 1: a message of a stream of this reader's; 0: one it ignored or refused
 * (it does not keep a reader waiting); -1: the stream has failed. */
static int reader_handle(stream_reader *r, zmq_reader *z, zmq_msg_t *id, zmq_msg_t *body)
{
    const unsigned char *m = zmq_msg_data(body);
    size_t n = zmq_msg_size(body), id_len = zmq_msg_size(id);
    zmq_producer *p = NULL;
    for (int i = 0; i < z->n_known && !p; i++)
        if (z->producers[i].id_len == id_len &&
            !memcmp(z->producers[i].id, zmq_msg_data(id), id_len))
            p = &z->producers[i];
    int kind = n ? m[0] : 0;
    if (kind == MSG_HELLO) {
        if (!p) {
            if (z->n_known == z->ep.producers || id_len > sizeof p->id) {
                char why[128];
                snprintf(why, sizeof why, "it takes %d producer%s and all of them have connected",
                         z->ep.producers, z->ep.producers == 1 ? "" : "s");
                reader_refuse(z, id, why);
                return 0;
            }
            p = &z->producers[z->n_known++];
            memset(p, 0, sizeof *p);
            memcpy(p->id, zmq_msg_data(id), id_len);
            p->id_len = id_len;
            size_t k = 0;
            for (size_t i = 0; i < id_len && k + 1 < sizeof p->name; i++) {
                unsigned char c = p->id[i];
                p->name[k++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
            }
            p->name[k] = 0;
            uint32_t want = n >= 5 ? get_u32(m + 1) : 0;
            p->credit = (uint32_t)z->ep.credit;
            if (want && want < p->credit) p->credit = want;
        }
        unsigned char w[5] = {MSG_WELCOME};
        memcpy(w + 1, &p->credit, 4); /* again for a repeated hello: it is idempotent */
        reader_send(z, p->id, p->id_len, w, sizeof w);
        return 1;
    }
    if (kind != MSG_SAMPLE && kind != MSG_END && kind != MSG_ABORT) return 0; /* not ours */
    if (!p) {
        if (kind != MSG_ABORT)
            reader_refuse(z, id,
                          "this reader has no stream open from you "
                          "(it was started after your stream began)");
        return 0;
    }
    if (n < 9)
        return reader_fail(r, z, "producer %s sent a message of %zu bytes, too short", p->name, n);
    uint64_t count = get_u64(m + 1);
    if (p->ended)
        return reader_fail(r, z, "producer %s sent more after ending its stream", p->name);
    if (kind == MSG_ABORT)
        return reader_fail(r, z,
                           "producer %s aborted its stream after %llu sample%s (its own error "
                           "says why)",
                           p->name, (unsigned long long)count, count == 1 ? "" : "s");
    if (kind == MSG_END) {
        if (count != p->received)
            return reader_fail(r, z,
                               "producer %s ended its stream after sending %llu samples, but "
                               "%llu arrived: %llu lost",
                               p->name, (unsigned long long)count, (unsigned long long)p->received,
                               (unsigned long long)(count - p->received));
        p->ended = 1;
        z->n_ended++;
        if (p->passed == p->received) reader_ack(z, p);
        return 1;
    }
    if (count != p->received)
        return reader_fail(r, z, "producer %s: sample #%llu arrived where #%llu was due (%s)",
                           p->name, (unsigned long long)count, (unsigned long long)p->received,
                           count > p->received ? "samples lost in transit" : "a repeat");
    if (p->received - p->passed >= p->credit)
        return reader_fail(r, z,
                           "producer %s sent sample #%llu beyond its credit of %u samples "
                           "not acknowledged",
                           p->name, (unsigned long long)count, p->credit);
    if (z->q_len == z->q_cap) {
        size_t cap = z->q_cap ? 2 * z->q_cap : 16;
        zmq_queued *q = xmalloc(cap * sizeof *q);
        for (size_t i = 0; i < z->q_len; i++) {
            zmq_queued *from = &z->queue[(z->q_head + i) % z->q_cap];
            q[i].producer = from->producer;
            zmq_msg_init(&q[i].msg);
            zmq_msg_move(&q[i].msg, &from->msg);
            zmq_msg_close(&from->msg);
        }
        free(z->queue);
        z->queue = q;
        z->q_head = 0;
        z->q_cap = cap;
    }
    zmq_queued *slot = &z->queue[(z->q_head + z->q_len++) % z->q_cap];
    slot->producer = (int)(p - z->producers);
    zmq_msg_init(&slot->msg);
    zmq_msg_move(&slot->msg, body);
    p->received++;
    return 1;
}

/* Every message waiting, without blocking: 1 if any arrived, 0 if none, -1 on
 * a fault of the stream. */
static int reader_drain(stream_reader *r, zmq_reader *z)
{
    int got = 0;
    for (;;) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, z->sock, ZMQ_DONTWAIT) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&id);
            if (err == EAGAIN) return got;
            if (err == EINTR) continue;
            return reader_fail(r, z, "receive failed: %s", zmq_strerror(err));
        }
        zmq_msg_init(&body);
        int more = zmq_msg_more(&id), rc = 0;
        if (more) zmq_msg_recv(&body, z->sock, 0); /* the rest of a message is there already */
        if (more && !zmq_msg_more(&body)) {
            rc = reader_handle(r, z, &id, &body);
            got |= rc > 0;
        } else { /* not a DEALER's single-part message: not from a writer */
            for (int extra = more && zmq_msg_more(&body); extra;) {
                zmq_msg_t part;
                zmq_msg_init(&part);
                zmq_msg_recv(&part, z->sock, 0);
                extra = zmq_msg_more(&part);
                zmq_msg_close(&part);
            }
        }
        zmq_msg_close(&body);
        zmq_msg_close(&id);
        if (rc < 0) return -1;
    }
}

/* Every producer still streaming is sent its acknowledgement count again; one
 * whose connection is gone (it died, or its heartbeats stopped) fails the
 * stream unless its end-of-stream turns up among the messages left. */
static int reader_probe(stream_reader *r, zmq_reader *z)
{
    z->last_probe = now_seconds();
    int gone = 0;
    for (int i = 0; i < z->n_known; i++)
        if (!z->producers[i].ended && reader_ack(z, &z->producers[i])) gone = 1;
    if (!gone) return 0;
    if (reader_drain(r, z) < 0) return -1;
    for (int i = 0; i < z->n_known; i++) {
        zmq_producer *p = &z->producers[i];
        if (p->ended || !reader_ack(z, p)) continue;
        char state[160];
        describe_producers(z, 1, state, sizeof state);
        return reader_fail(r, z,
                           "producer %s disconnected after %llu sample%s without ending its "
                           "stream (it died, or its heartbeats stopped for %d s): %s",
                           p->name, (unsigned long long)p->received, p->received == 1 ? "" : "s",
                           z->ep.heartbeat_ms / 1000, state);
    }
    return 0;
}

static int stream_read_zmq(stream_reader *r, sample *s)
{
    zmq_reader *z = r->zmq;
    if (z->failure) {
        clip_set_error("%s", z->failure);
        return -1;
    }
    reader_pass_on(z);
    double waiting_since = now_seconds();
    for (;;) {
        int got = reader_drain(r, z);
        if (got < 0) return -1;
        double now = now_seconds();
        if (got) waiting_since = now;
        if (now - z->last_probe >= STREAM_TICK_MS / 1000.0 && reader_probe(r, z)) return -1;
        if (z->q_len) {
            zmq_queued *q = &z->queue[z->q_head];
            z->q_head = (z->q_head + 1) % z->q_cap;
            z->q_len--;
            int rc = decode_sample((const unsigned char *)zmq_msg_data(&q->msg) + 9,
                                   zmq_msg_size(&q->msg) - 9, s);
            zmq_msg_close(&q->msg);
            if (rc) {
                char w[600];
                where(w, sizeof w, r);
                return reader_fail(r, z,
                                   "malformed sample message from producer %s %s (a field "
                                   "over %zu bytes, twice, or cut short)",
                                   z->producers[q->producer].name, w, STREAM_MAX_MEMBER);
            }
            z->handed = q->producer;
            r->samples++;
            reader_set_last(r, s->key);
            return 1;
        }
        if (z->n_ended == z->ep.producers) return 0;
        int wait_ms = STREAM_TICK_MS;
        if (z->ep.timeout_ms) {
            double left = waiting_since + z->ep.timeout_ms / 1000.0 - now;
            if (left <= 0) {
                char state[160];
                describe_producers(z, 0, state, sizeof state);
                return reader_fail(r, z,
                                   "nothing arrived for %d s: %s; the endpoint option "
                                   "timeout=SECONDS waits longer",
                                   z->ep.timeout_ms / 1000, state);
            }
            if (left * 1000 < wait_ms) wait_ms = (int)(left * 1000) + 1;
        }
        zmq_pollitem_t item = {z->sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, wait_ms); /* EINTR: look again */
    }
}

int stream_read(stream_reader *r, sample *s)
{
    sample_clear(s);
    if (r->zmq) return stream_read_zmq(r, s);
    while (r->cur) {
        int rc = stream_read(r->cur, s);
        if (rc != 0 || r->next_shard == r->n_shards) return rc;
        stream_close_read(r->cur);
        if (!(r->cur = stream_open_read(r->shards[r->next_shard++]))) return -1;
    }
    if (!r->have_pending) {
        int rc = next_member(r);
        if (rc <= 0) return rc;
    }
    s->key = xstrdup(r->pending_key);
    for (;;) {
        if (read_member_data(r, s)) return -1;
        r->have_pending = 0;
        int rc = next_member(r);
        if (rc < 0) return -1;
        if (rc == 0 || strcmp(r->pending_key, s->key)) break;
    }
    r->samples++;
    reader_set_last(r, s->key);
    return 1;
}

void stream_close_read(stream_reader *r)
{
    if (!r) return;
    stream_close_read(r->cur);
    shards_free(r->shards, r->n_shards);
    if (r->ar) archive_read_free(r->ar);
    if (r->close_fd) close(r->fd);
    if (r->zmq) {
        zmq_reader *z = r->zmq;
        reader_pass_on(z);
        int linger = 2000; /* for the last acknowledgements to leave */
        zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(z->sock);
        zmq_ctx_term(z->ctx);
        for (size_t i = 0; i < z->q_len; i++)
            zmq_msg_close(&z->queue[(z->q_head + i) % z->q_cap].msg);
        free(z->queue);
        free(z->producers);
        free(z->failure);
        free(z);
    }
    free(r->pending_key);
    free(r->pending_path);
    free(r->last_key);
    free(r);
}

/* ---- writer ---- */

struct stream_writer {
    struct archive *aw;
    char *name;        /* for messages: the file, the device or <stdout> */
    atomic_file *file; /* a regular file: written under a temporary name, renamed at close */
    time_t mtime;
    int failed;
    zmq_writer *zmq; /* ZeroMQ endpoints only */
};

/* "NAME: what: No space left on device": libarchive's errno where it kept one */
static void set_write_error(const stream_writer *w, const char *key, const char *what)
{
    int err = archive_errno(w->aw);
    const char *why = err > 0 ? strerror(err) : archive_error_string(w->aw);
    if (key)
        clip_set_error("%s: sample %s: %s: %s%s", w->name, key, what, why ? why : "I/O error",
                       err == EFBIG ? " (the file size limit: ulimit -f)" : "");
    else
        clip_set_error("%s: %s: %s%s", w->name, what, why ? why : "I/O error",
                       err == EFBIG ? " (the file size limit: ulimit -f)" : "");
}

static void writer_free(stream_writer *w)
{
    if (w->aw) archive_write_free(w->aw);
    atomic_file_abort(w->file);
    free(w->name);
    free(w);
}

stream_writer *stream_open_write(const char *endpoint)
{
    stream_writer *w = xcalloc(1, sizeof *w);
    if (endpoint && stream_is_zmq(endpoint)) {
        zmq_writer *z = xcalloc(1, sizeof *z);
        /* the routing id names this producer to its reader, unique per stream */
        char host[64] = "", id[128];
        gethostname(host, sizeof host - 1);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(id, sizeof id, "%s:%ld:%llx", host, (long)getpid(),
                 (unsigned long long)((uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec) ^
                     (unsigned long long)(uintptr_t)z);
        if (!(z->sock = zmq_open(endpoint, ZMQ_DEALER, id, &z->ep, &z->ctx, &z->monitor))) {
            free(z);
            free(w);
            return NULL;
        }
        writer_hello(z);
        w->zmq = z;
        return w;
    }
    const char *sde = getenv("SOURCE_DATE_EPOCH");
    w->mtime = sde ? (time_t)strtoll(sde, NULL, 10) : time(NULL);
    int to_stdout = !endpoint || !strcmp(endpoint, "-");
    w->name = xstrdup(to_stdout ? "<stdout>" : endpoint);
    if (!to_stdout && atomic_file_applies(endpoint) && !(w->file = atomic_file_create(endpoint))) {
        writer_free(w);
        return NULL;
    }
    w->aw = archive_write_new();
    archive_write_set_format_pax_restricted(w->aw);
    archive_write_set_bytes_per_block(w->aw, 64 << 10); /* 10 KB: ~15 writes per image */
    archive_write_set_bytes_in_last_block(w->aw, 1);
    int rc = to_stdout ? archive_write_open_fd(w->aw, 1)
             : w->file ? archive_write_open_fd(w->aw, atomic_file_fd(w->file))
                       : archive_write_open_filename(w->aw, endpoint); /* a device or fifo */
    if (rc != ARCHIVE_OK) {
        set_write_error(w, NULL, "cannot open");
        writer_free(w);
        return NULL;
    }
    return w;
}

static void put(unsigned char **p, const void *src, size_t n)
{
    memcpy(*p, src, n);
    *p += n;
}

static int writer_fail(zmq_writer *z, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int writer_fail(zmq_writer *z, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    clip_set_verror(z->ep.addr, fmt, ap);
    va_end(ap);
    clip_set_error("%s (%llu sample%s sent, %llu not acknowledged)", clip_error(),
                   (unsigned long long)z->sent, z->sent == 1 ? "" : "s",
                   (unsigned long long)(z->sent - z->acked));
    if (!z->failure) z->failure = xstrdup(clip_error());
    return -1;
}

static void writer_hello(zmq_writer *z)
{
    unsigned char m[5] = {MSG_HELLO};
    uint32_t want = (uint32_t)z->ep.credit;
    memcpy(m + 1, &want, 4);
    /* '@' and no reader connected yet: the next tick repeats it */
    if (zmq_send(z->sock, m, sizeof m, ZMQ_DONTWAIT) >= 0) z->hello_sent = 1;
    z->last_hello = now_seconds();
}

/* The reader's messages waiting: 0, or -1 once the stream has failed. */
static int writer_receive(zmq_writer *z)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return 0;
        }
        const unsigned char *d = zmq_msg_data(&m);
        size_t n = zmq_msg_size(&m);
        int kind = n ? d[0] : 0;
        z->last_heard = now_seconds();
        if (kind == MSG_WELCOME && n >= 5 && get_u32(d + 1) >= 1) {
            z->welcomed = 1;
            z->window = get_u32(d + 1);
        } else if ((kind == MSG_ACK || kind == MSG_DONE) && n >= 9) {
            uint64_t passed = get_u64(d + 1);
            if (passed > z->sent) {
                zmq_msg_close(&m);
                return writer_fail(z, "the reader acknowledged %llu samples, more than were sent",
                                   (unsigned long long)passed);
            }
            if (passed > z->acked) z->acked = passed;
            if (kind == MSG_DONE && z->ended && passed == z->sent) z->done = 1;
        } else if (kind == MSG_REFUSED) {
            int len = n - 1 > 300 ? 300 : (int)n - 1;
            int rc =
                writer_fail(z, "the reader refused this stream: %.*s", len, (const char *)d + 1);
            zmq_msg_close(&m);
            return rc;
        }
        zmq_msg_close(&m);
    }
}

/* What has arrived from the reader and the monitor, waiting up to wait_ms for
 * the first of it: 0, or -1 once the stream has failed. */
static int writer_pump(zmq_writer *z, int wait_ms)
{
    if (wait_ms > 0) {
        zmq_pollitem_t items[2] = {{z->sock, 0, ZMQ_POLLIN, 0}, {z->monitor, 0, ZMQ_POLLIN, 0}};
        zmq_poll(items, 2, wait_ms); /* EINTR: look anyway */
    }
    if (writer_receive(z)) return -1;
    int disconnected = 0;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, z->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        int more = zmq_msg_more(&ev);
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2) memcpy(&event, zmq_msg_data(&ev), 2);
        zmq_msg_close(&ev);
        while (more) { /* the event's second frame: the endpoint */
            zmq_msg_init(&ev);
            zmq_msg_recv(&ev, z->monitor, 0);
            more = zmq_msg_more(&ev);
            zmq_msg_close(&ev);
        }
        disconnected |= event == ZMQ_EVENT_DISCONNECTED;
    }
    if (!disconnected) return 0;
    /* what the reader said before it went counts: its last acknowledgements */
    if (writer_receive(z)) return -1;
    if (z->done) return 0;
    if (z->sent || z->ended)
        return writer_fail(z,
                           "lost the reader: it went away, or did not answer heartbeats for "
                           "%d s",
                           z->ep.heartbeat_ms / 1000);
    /* nothing sent but the hello: the stream can begin again with a new reader */
    z->welcomed = z->hello_sent = 0;
    z->window = 0;
    return 0;
}

static int has_credit(const zmq_writer *z) { return z->sent - z->acked < z->window; }
static int all_acknowledged(const zmq_writer *z) { return z->done; }

/* Until ready(z): the hello repeated every tick while no reader has answered;
 * -1 when the reader is lost, refuses, or says nothing for the timeout. */
static int writer_wait(zmq_writer *z, int (*ready)(const zmq_writer *))
{
    double since = now_seconds();
    for (;;) {
        if (writer_pump(z, 0)) return -1;
        if (ready(z)) return 0;
        double now = now_seconds();
        if (!z->welcomed && now - z->last_hello >= STREAM_TICK_MS / 1000.0) writer_hello(z);
        int wait_ms = STREAM_TICK_MS;
        if (z->ep.timeout_ms) {
            double quiet_since = z->last_heard > since ? z->last_heard : since;
            double left = quiet_since + z->ep.timeout_ms / 1000.0 - now;
            if (left <= 0) {
                if (!z->welcomed)
                    return writer_fail(z,
                                       "no reader answered for %d s; the endpoint option "
                                       "timeout=SECONDS waits longer",
                                       z->ep.timeout_ms / 1000);
                return writer_fail(z,
                                   "the reader acknowledged nothing for %d s; the endpoint "
                                   "option timeout=SECONDS waits longer",
                                   z->ep.timeout_ms / 1000);
            }
            if (left * 1000 < wait_ms) wait_ms = (int)(left * 1000) + 1;
        }
        if (writer_pump(z, wait_ms)) return -1;
    }
}

/* Sends m (consumed), after the hello if it has not left yet; a writer bound
 * with '@' waits here for its reader. */
static int writer_send(zmq_writer *z, zmq_msg_t *m)
{
    double since = now_seconds();
    for (;;) {
        if (!z->hello_sent) writer_hello(z);
        if (z->hello_sent && zmq_msg_send(m, z->sock, ZMQ_DONTWAIT) >= 0) return 0;
        int err = zmq_errno();
        if (err != EAGAIN && err != EINTR) {
            zmq_msg_close(m);
            return writer_fail(z, "send failed: %s", zmq_strerror(err));
        }
        if (z->ep.timeout_ms && now_seconds() - since >= z->ep.timeout_ms / 1000.0) {
            zmq_msg_close(m);
            return writer_fail(z, "no reader connected for %d s", z->ep.timeout_ms / 1000);
        }
        if (writer_pump(z, 100)) {
            zmq_msg_close(m);
            return -1;
        }
    }
}

static int stream_write_zmq(stream_writer *w, const sample *s)
{
    zmq_writer *z = w->zmq;
    if (z->failure) {
        clip_set_error("%s", z->failure);
        return -1;
    }
    if (writer_wait(z, has_credit)) return -1;
    size_t len = 1 + 8 + 8 + strlen(s->key);
    for (int i = 0; i < s->n; i++) len += 12 + strlen(s->fields[i].name) + s->fields[i].size;
    zmq_msg_t m;
    zmq_msg_init_size(&m, len);
    unsigned char *p = zmq_msg_data(&m);
    uint32_t kl = (uint32_t)strlen(s->key), nf = (uint32_t)s->n;
    *p++ = MSG_SAMPLE;
    put(&p, &z->sent, 8);
    put(&p, &kl, 4);
    put(&p, s->key, kl);
    put(&p, &nf, 4);
    for (int i = 0; i < s->n; i++) {
        uint32_t nl = (uint32_t)strlen(s->fields[i].name);
        uint64_t size = s->fields[i].size;
        put(&p, &nl, 4);
        put(&p, s->fields[i].name, nl);
        put(&p, &size, 8);
        if (size) put(&p, s->fields[i].data, size);
    }
    if (writer_send(z, &m)) return -1;
    z->sent++;
    return 0;
}

/* Ends the stream and waits for the reader to have passed on every sample;
 * `abort`: tells the reader this stream failed, without waiting. */
static int close_zmq_writer(zmq_writer *z, int abort)
{
    int rc = 0;
    if (abort) {
        if (!z->failure && (z->welcomed || z->sent)) {
            unsigned char m[9] = {MSG_ABORT};
            memcpy(m + 1, &z->sent, 8);
            int linger = 1000; /* time for it to leave; the reader fails either way */
            zmq_setsockopt(z->sock, ZMQ_LINGER, &linger, sizeof linger);
            zmq_send(z->sock, m, sizeof m, ZMQ_DONTWAIT);
        }
    } else if (z->failure) {
        clip_set_error("%s", z->failure);
        rc = -1;
    } else {
        zmq_msg_t m;
        zmq_msg_init_size(&m, 9);
        unsigned char *d = zmq_msg_data(&m);
        d[0] = MSG_END;
        memcpy(d + 1, &z->sent, 8);
        if (writer_send(z, &m) || (z->ended = 1, writer_wait(z, all_acknowledged))) rc = -1;
    }
    zmq_close(z->monitor);
    zmq_close(z->sock);
    zmq_ctx_term(z->ctx);
    free(z->failure);
    free(z);
    return rc;
}

int stream_write(stream_writer *w, const sample *s)
{
    if (!s->key || !*s->key || strchr(s->key, '.') != NULL) {
        clip_set_error("sample key '%s' is empty or contains a dot", s->key ? s->key : "");
        return -1;
    }
    if (w->zmq) return stream_write_zmq(w, s);
    struct archive_entry *e = archive_entry_new();
    for (int i = 0; i < s->n; i++) {
        const sample_field *f = &s->fields[i];
        /* any length: pax headers carry names past ustar's 100 (+155) bytes */
        size_t plen = strlen(s->key) + strlen(f->name) + 2;
        char *path = xmalloc(plen);
        snprintf(path, plen, "%s.%s", s->key, f->name);
        archive_entry_clear(e);
        archive_entry_set_pathname(e, path);
        free(path);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_size(e, (la_int64_t)f->size);
        archive_entry_set_mtime(e, w->mtime, 0);
        if (archive_write_header(w->aw, e) != ARCHIVE_OK ||
            (f->size && archive_write_data(w->aw, f->data, f->size) != (la_ssize_t)f->size)) {
            set_write_error(w, s->key, "write failed");
            archive_entry_free(e);
            w->failed = 1;
            return -1;
        }
    }
    archive_entry_free(e);
    return 0;
}

int stream_close_write(stream_writer *w)
{
    int rc = 0;
    if (w->zmq) {
        rc = close_zmq_writer(w->zmq, w->failed);
        free(w);
        return rc;
    }
    if (w->failed) {
        /* no end-of-archive marker: a reader of a stream cut short sees it truncated */
        archive_write_fail(w->aw);
        rc = -1;
    } else if (archive_write_close(w->aw) != ARCHIVE_OK) {
        set_write_error(w, NULL, "write failed");
        rc = -1;
    }
    if (w->file) {
        atomic_file *f = w->file;
        w->file = NULL;
        if (rc)
            atomic_file_abort(f);
        else if (atomic_file_commit(f))
            rc = -1;
    }
    writer_free(w);
    return rc;
}

void stream_abort_write(stream_writer *w)
{
    w->failed = 1;
    stream_close_write(w);
}

/* The ZeroMQ stream protocol (clip-stream(5)) against a peer written here:
 * a raw DEALER playing a producer to stream_open_read, a raw ROUTER playing a
 * reader to stream_open_write. The reader acknowledges a sample when it is
 * passed on, not on receipt, and fails on a gap, a repeat, an overrun of the
 * credit, a short end-of-stream, an abort or a malformed sample; the writer
 * keeps to the credit it is granted, waits for the end to be confirmed, and
 * fails on a refusal or an impossible acknowledgement. */
#include "io/stream.h"
#include "unit.h"
#include "core/util.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static char addr[128]; /* ipc://..., one per test */
static int n_addr;

static const char *next_addr(void)
{
    snprintf(addr, sizeof addr, "ipc:///tmp/clip-test-zmq-%d-%d.ipc", (int)getpid(), n_addr++);
    return addr;
}

static void make_sample(sample *s, int i)
{
    char key[32];
    sample_clear(s);
    snprintf(key, sizeof key, "s%d", i);
    sample_set_key(s, key);
    sample_set_copy(s, "json", "{}", 2);
}

/* a sample message as a writer sends it: kind, u64 seq, u32 key length, key,
 * u32 field count, per field u32 name length, name, u64 size, data */
static size_t sample_msg(unsigned char *m, uint64_t seq, const char *key, uint64_t claimed)
{
    unsigned char *p = m;
    uint32_t kl = (uint32_t)strlen(key), nf = 1, nl = 4;
    *p++ = 'S';
    memcpy(p, &seq, 8), p += 8;
    memcpy(p, &kl, 4), p += 4;
    memcpy(p, key, kl), p += kl;
    memcpy(p, &nf, 4), p += 4;
    memcpy(p, &nl, 4), p += 4;
    memcpy(p, "json", 4), p += 4;
    memcpy(p, &claimed, 8), p += 8;
    memcpy(p, "{}", 2), p += 2;
    return (size_t)(p - m);
}

static size_t count_msg(unsigned char *m, char kind, uint64_t n)
{
    m[0] = (unsigned char)kind;
    memcpy(m + 1, &n, 8);
    return 9;
}

static size_t hello_msg(unsigned char *m, uint32_t credit)
{
    m[0] = 'H';
    memcpy(m + 1, &credit, 4);
    return 5;
}

/* ---- a raw producer against stream_open_read ---- */

typedef struct {
    void *ctx, *sock;
} peer;

static peer producer_connect(const char *endpoint)
{
    peer p = {zmq_ctx_new(), NULL};
    p.sock = zmq_socket(p.ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(p.sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(p.sock, ZMQ_ROUTING_ID, "raw-producer", 12);
    zmq_connect(p.sock, endpoint);
    return p;
}

static void peer_close(peer *p)
{
    zmq_close(p->sock);
    zmq_ctx_term(p->ctx);
}

static void send_raw(peer *p, const unsigned char *m, size_t n) { zmq_send(p->sock, m, n, 0); }

/* The next message of `kind` within ms milliseconds, others skipped; its u64
 * (or u32 for 'W') in *value. 0 if none came. */
static int expect(peer *p, char kind, int ms, uint64_t *value)
{
    zmq_setsockopt(p->sock, ZMQ_RCVTIMEO, &ms, sizeof ms);
    unsigned char m[512];
    int n;
    while ((n = zmq_recv(p->sock, m, sizeof m, 0)) >= 0) {
        if (n < 1 || m[0] != (unsigned char)kind) continue;
        if (value) {
            *value = 0;
            memcpy(value, m + 1, kind == 'W' ? 4 : 8);
        }
        return 1;
    }
    return 0;
}

/* The largest count in the acknowledgements that came within ms */
static uint64_t max_ack_within(peer *p, int ms)
{
    uint64_t best = 0, v;
    while (expect(p, 'A', ms, &v))
        if (v > best) best = v;
    return best;
}

static void test_acknowledged_when_passed_on(void)
{
    char ep[160];
    snprintf(ep, sizeof ep, "%s?timeout=5", next_addr());
    stream_reader *r = stream_open_read(ep);
    CHECK(r != NULL, "%s", clip_error());
    peer p = producer_connect(addr);
    unsigned char m[256];
    send_raw(&p, m, hello_msg(m, 0));
    send_raw(&p, m, sample_msg(m, 0, "a", 2));
    send_raw(&p, m, sample_msg(m, 1, "b", 2));
    sample s;
    sample_init(&s);
    int rc = stream_read(r, &s);
    CHECK(rc == 1 && !strcmp(s.key, "a"), "first sample: rc %d (%s)", rc, clip_error());
    uint64_t credit = 0;
    CHECK(expect(&p, 'W', 2000, &credit) && credit == 16, "welcome with credit 16: %llu",
          (unsigned long long)credit);
    /* received, not yet passed on: nothing acknowledged */
    uint64_t acked = max_ack_within(&p, 300);
    CHECK(acked == 0, "acknowledged %llu before the consumer asked for more",
          (unsigned long long)acked);
    rc = stream_read(r, &s);
    CHECK(rc == 1 && !strcmp(s.key, "b"), "second sample: rc %d", rc);
    uint64_t v = 0;
    CHECK(expect(&p, 'A', 2000, &v) && v == 1, "asking for the second passes the first on: %llu",
          (unsigned long long)v);
    send_raw(&p, m, count_msg(m, 'E', 2));
    rc = stream_read(r, &s);
    CHECK(rc == 0, "the end: rc %d (%s)", rc, clip_error());
    CHECK(expect(&p, 'D', 2000, &v) && v == 2, "done after both were passed on: %llu",
          (unsigned long long)v);
    stream_close_read(r);
    peer_close(&p);
    sample_free(&s);
}

static void test_acknowledged_at_close(void)
{
    stream_reader *r = stream_open_read(next_addr());
    CHECK(r != NULL, "%s", clip_error());
    peer p = producer_connect(addr);
    unsigned char m[256];
    send_raw(&p, m, hello_msg(m, 0));
    send_raw(&p, m, sample_msg(m, 0, "a", 2));
    sample s;
    sample_init(&s);
    CHECK(stream_read(r, &s) == 1, "%s", clip_error());
    stream_close_read(r);
    uint64_t v = 0;
    CHECK(expect(&p, 'A', 2000, &v) && v == 1, "the last sample passed on at close: %llu",
          (unsigned long long)v);
    peer_close(&p);
    sample_free(&s);
}

/* a producer sending `script` (after its hello): the reader's reads fail with `want` */
static void expect_reader_failure(const char *what, uint32_t want_credit,
                                  const unsigned char *msgs[], const size_t *lens, int n,
                                  const char *want)
{
    char ep[160];
    snprintf(ep, sizeof ep, "%s?timeout=3", next_addr());
    stream_reader *r = stream_open_read(ep);
    CHECK(r != NULL, "%s", clip_error());
    peer p = producer_connect(addr);
    unsigned char h[8];
    send_raw(&p, h, hello_msg(h, want_credit));
    for (int i = 0; i < n; i++) send_raw(&p, msgs[i], lens[i]);
    usleep(200 * 1000); /* all of it there before the first read */
    sample s;
    sample_init(&s);
    int rc, reads = 0;
    clip_clear_error();
    while ((rc = stream_read(r, &s)) == 1 && reads < 10) reads++;
    CHECK(rc == -1 && strstr(clip_error(), want), "%s: rc %d after %d samples: %s", what, rc, reads,
          clip_error());
    /* the failure stays */
    CHECK(stream_read(r, &s) == -1 && strstr(clip_error(), want), "%s, read again: %s", what,
          clip_error());
    stream_close_read(r);
    peer_close(&p);
    sample_free(&s);
}

static void test_reader_faults(void)
{
    unsigned char s0[64], s1[64], s2[64], e3[9], x1[9], big[64];
    size_t l0 = sample_msg(s0, 0, "a", 2), l1 = sample_msg(s1, 1, "b", 2);
    size_t l2 = sample_msg(s2, 2, "c", 2), le = count_msg(e3, 'E', 3), lx = count_msg(x1, 'X', 1);
    size_t lb = sample_msg(big, 0, "a", 1000);
    {
        const unsigned char *m[] = {s0, s2};
        size_t l[] = {l0, l2};
        expect_reader_failure("gap", 0, m, l, 2,
                              "sample #2 arrived where #1 was due (samples lost");
    }
    {
        const unsigned char *m[] = {s0, s0};
        size_t l[] = {l0, l0};
        expect_reader_failure("repeat", 0, m, l, 2,
                              "sample #0 arrived where #1 was due (a repeat)");
    }
    {
        const unsigned char *m[] = {s0, s1};
        size_t l[] = {l0, l1};
        expect_reader_failure("credit", 1, m, l, 2,
                              "sent sample #1 beyond its credit of 1 samples");
    }
    {
        const unsigned char *m[] = {s0, e3};
        size_t l[] = {l0, le};
        expect_reader_failure("short end", 0, m, l, 2,
                              "ended its stream after sending 3 samples, but 1 arrived: 2 lost");
    }
    {
        const unsigned char *m[] = {s0, x1};
        size_t l[] = {l0, lx};
        expect_reader_failure("abort", 0, m, l, 2, "aborted its stream after 1 sample");
    }
    {
        const unsigned char *m[] = {big};
        size_t l[] = {lb};
        expect_reader_failure("field cut short", 0, m, l, 1, "malformed sample message");
    }
}

static void test_stranger_refused(void)
{
    char ep[160];
    snprintf(ep, sizeof ep, "%s?timeout=1", next_addr());
    stream_reader *r = stream_open_read(ep);
    CHECK(r != NULL, "%s", clip_error());
    peer p = producer_connect(addr);
    unsigned char m[64];
    /* no hello: a stream begun with another reader */
    send_raw(&p, m, sample_msg(m, 5, "a", 2));
    sample s;
    sample_init(&s);
    int rc = stream_read(r, &s);
    CHECK(rc == -1 && strstr(clip_error(), "nothing arrived for 1 s: 0 of 1 producer ended its "
                                           "stream, 1 never connected"),
          "a stranger's sample is not one: rc %d, %s", rc, clip_error());
    CHECK(expect(&p, 'R', 1000, NULL), "the stranger is told");
    stream_close_read(r);
    peer_close(&p);
    sample_free(&s);
}

/* ---- a raw reader against stream_open_write ---- */

static peer reader_bind(const char *endpoint)
{
    peer p = {zmq_ctx_new(), NULL};
    p.sock = zmq_socket(p.ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(p.sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_bind(p.sock, endpoint);
    return p;
}

/* the next message from the writer within ms: its kind, its id in id[], its
 * u64 in *value; 0 if none */
static int from_writer(peer *p, int ms, unsigned char *id, size_t *id_len, uint64_t *value)
{
    zmq_setsockopt(p->sock, ZMQ_RCVTIMEO, &ms, sizeof ms);
    int n = zmq_recv(p->sock, id, 255, 0);
    if (n < 0) return 0;
    *id_len = (size_t)n;
    unsigned char m[512];
    n = zmq_recv(p->sock, m, sizeof m, 0);
    if (n < 1) return 0;
    *value = 0;
    if (n >= 9) memcpy(value, m + 1, 8);
    return m[0];
}

static void to_writer(peer *p, const unsigned char *id, size_t id_len, const unsigned char *m,
                      size_t n)
{
    zmq_send(p->sock, id, id_len, ZMQ_SNDMORE);
    zmq_send(p->sock, m, n, 0);
}

static void welcome(peer *p, const unsigned char *id, size_t id_len, uint32_t credit)
{
    unsigned char w[5] = {'W'};
    memcpy(w + 1, &credit, 4);
    to_writer(p, id, id_len, w, 5);
}

/* the writer's hello; its id in id[] */
static int await_hello(peer *p, unsigned char *id, size_t *id_len)
{
    uint64_t v;
    int kind;
    while ((kind = from_writer(p, 3000, id, id_len, &v)) && kind != 'H') {}
    return kind == 'H';
}

static void test_writer_keeps_to_its_credit(void)
{
    peer rd = reader_bind(next_addr());
    char ep[160];
    snprintf(ep, sizeof ep, "%s?timeout=1", addr);
    stream_writer *w = stream_open_write(ep);
    CHECK(w != NULL, "%s", clip_error());
    unsigned char id[256];
    size_t id_len = 0;
    CHECK(await_hello(&rd, id, &id_len), "a hello");
    welcome(&rd, id, id_len, 3);
    sample s;
    sample_init(&s);
    int ok = 0;
    for (int i = 0; i < 3; i++) {
        make_sample(&s, i);
        ok += stream_write(w, &s) == 0;
    }
    CHECK(ok == 3, "3 samples within the credit: %d (%s)", ok, clip_error());
    make_sample(&s, 3);
    int rc = stream_write(w, &s);
    CHECK(rc == -1 && strstr(clip_error(), "the reader acknowledged nothing for 1 s") &&
              strstr(clip_error(), "(3 samples sent, 3 not acknowledged)"),
          "the fourth waits for credit, then fails: %s", clip_error());
    uint64_t seq, n_samples = 0;
    int kind;
    while ((kind = from_writer(&rd, 300, id, &id_len, &seq)))
        if (kind == 'S' && seq == n_samples) n_samples++;
    CHECK(n_samples == 3, "the reader got samples #0..#2 in order, no more: %llu",
          (unsigned long long)n_samples);
    CHECK(stream_close_write(w) == -1, "close repeats the failure");
    peer_close(&rd);
    sample_free(&s);
}

static void test_writer_close_waits_for_done(void)
{
    for (int done = 0; done < 2; done++) {
        peer rd = reader_bind(next_addr());
        char ep[160];
        snprintf(ep, sizeof ep, "%s?timeout=1", addr);
        stream_writer *w = stream_open_write(ep);
        unsigned char id[256];
        size_t id_len = 0;
        CHECK(await_hello(&rd, id, &id_len), "a hello");
        welcome(&rd, id, id_len, 4);
        sample s;
        sample_init(&s);
        make_sample(&s, 0);
        CHECK(stream_write(w, &s) == 0, "%s", clip_error());
        unsigned char m[9];
        to_writer(&rd, id, id_len, m, count_msg(m, done ? 'D' : 'A', 1));
        clip_clear_error();
        int rc = stream_close_write(w);
        if (done)
            CHECK(rc == 0, "done: close returns 0 (%s)", clip_error());
        else
            CHECK(rc == -1 && strstr(clip_error(), "(1 sample sent, 0 not acknowledged)"),
                  "acknowledged but the end never confirmed: close fails: %s", clip_error());
        uint64_t v, end = 99;
        int kind;
        while ((kind = from_writer(&rd, 300, id, &id_len, &v)))
            if (kind == 'E') end = v;
        CHECK(end == 1, "the end-of-stream carries the count: %llu", (unsigned long long)end);
        peer_close(&rd);
        sample_free(&s);
    }
}

static void test_writer_faults(void)
{
    /* refused */
    peer rd = reader_bind(next_addr());
    stream_writer *w = stream_open_write(addr);
    unsigned char id[256], m[64];
    size_t id_len = 0;
    CHECK(await_hello(&rd, id, &id_len), "a hello");
    m[0] = 'R';
    memcpy(m + 1, "full up", 7);
    to_writer(&rd, id, id_len, m, 8);
    sample s;
    sample_init(&s);
    make_sample(&s, 0);
    CHECK(stream_write(w, &s) == -1 &&
              strstr(clip_error(), "the reader refused this stream: full up"),
          "refused: %s", clip_error());
    stream_close_write(w);
    peer_close(&rd);
    /* an acknowledgement of samples never sent */
    rd = reader_bind(next_addr());
    w = stream_open_write(addr);
    CHECK(await_hello(&rd, id, &id_len), "a hello");
    welcome(&rd, id, id_len, 4);
    to_writer(&rd, id, id_len, m, count_msg(m, 'A', 5));
    usleep(200 * 1000);
    CHECK(stream_write(w, &s) == -1 &&
              strstr(clip_error(), "acknowledged 5 samples, more than were sent"),
          "impossible acknowledgement: %s", clip_error());
    stream_close_write(w);
    peer_close(&rd);
    /* an aborted writer says so */
    rd = reader_bind(next_addr());
    w = stream_open_write(addr);
    CHECK(await_hello(&rd, id, &id_len), "a hello");
    welcome(&rd, id, id_len, 4);
    CHECK(stream_write(w, &s) == 0, "%s", clip_error());
    stream_abort_write(w);
    uint64_t v, aborted = 99;
    int kind;
    while (aborted == 99 && (kind = from_writer(&rd, 1000, id, &id_len, &v)))
        if (kind == 'X') aborted = v;
    CHECK(aborted == 1, "abort sends its count, no end: %llu", (unsigned long long)aborted);
    peer_close(&rd);
    sample_free(&s);
}

/* A reader that went away before the first sample: the writer begins again
 * with the next one, which gets the whole stream. */
typedef struct {
    const char *endpoint;
    uint64_t samples, end;
} second_reader;

static void *serve_second(void *arg)
{
    second_reader *a = arg;
    peer rd = reader_bind(a->endpoint);
    unsigned char id[256];
    size_t id_len = 0;
    if (await_hello(&rd, id, &id_len)) {
        welcome(&rd, id, id_len, 4);
        uint64_t v;
        int kind;
        a->end = 99;
        while ((kind = from_writer(&rd, 3000, id, &id_len, &v)) && kind != 'E')
            if (kind == 'S' && v == a->samples) {
                a->samples++;
                unsigned char m[9];
                to_writer(&rd, id, id_len, m, count_msg(m, 'A', a->samples));
            }
        if (kind == 'E') {
            a->end = v;
            unsigned char m[9];
            to_writer(&rd, id, id_len, m, count_msg(m, 'D', v));
            usleep(300 * 1000); /* for the done to leave */
        }
    }
    peer_close(&rd);
    return NULL;
}

static void test_writer_survives_reader_before_first_sample(void)
{
    peer rd = reader_bind(next_addr());
    char ep[160];
    snprintf(ep, sizeof ep, "%s?timeout=5", addr);
    stream_writer *w = stream_open_write(ep);
    unsigned char id[256];
    size_t id_len = 0;
    CHECK(await_hello(&rd, id, &id_len), "a hello");
    welcome(&rd, id, id_len, 4);
    peer_close(&rd); /* the first reader goes before any sample */
    usleep(300 * 1000);
    second_reader a = {addr, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, serve_second, &a);
    sample s;
    sample_init(&s);
    int ok = 0;
    for (int i = 0; i < 3; i++) {
        make_sample(&s, i);
        ok += stream_write(w, &s) == 0;
    }
    int rc = stream_close_write(w);
    pthread_join(t, NULL);
    CHECK(ok == 3 && rc == 0, "the stream went to the second reader: %d written, close %d (%s)", ok,
          rc, clip_error());
    CHECK(a.samples == 3 && a.end == 3, "the second reader got %llu samples, end %llu",
          (unsigned long long)a.samples, (unsigned long long)a.end);
    sample_free(&s);
}

int main(void)
{
    test_acknowledged_when_passed_on();
    test_acknowledged_at_close();
    test_reader_faults();
    test_stranger_refused();
    test_writer_keeps_to_its_credit();
    test_writer_close_waits_for_done();
    test_writer_faults();
    test_writer_survives_reader_before_first_sample();
    for (int i = 0; i < n_addr; i++) {
        char path[128];
        snprintf(path, sizeof path, "/tmp/clip-test-zmq-%d-%d.ipc", (int)getpid(), i);
        unlink(path);
    }
    return unit_done();
}

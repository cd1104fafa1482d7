/* The stream library: .npy round trips and malformed headers; N samples
 * through a pipe, a file (sequential and random access) and ZeroMQ arrive
 * exactly once (in order for pipes and files); truncation is an error. */
#include "tool.h"
#include "io/sample_file.h"
#include "io/stream.h"
#include "unit.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define N_SAMPLES 300

static void make_sample(sample *s, int i)
{
    char key[64], json[128];
    sample_clear(s);
    snprintf(key, sizeof key, "dir/sample_%05d", i);
    sample_set_key(s, key);
    snprintf(json, sizeof json, "{\"i\": %d}", i);
    sample_set_copy(s, "json", json, strlen(json));
    int64_t shape[2] = {i % 7 + 1, 3};
    int32_t v[24];
    for (int k = 0; k < 24; k++) v[k] = i * 100 + k;
    sample_set_npy(s, "tok.npy", DT_I32, 2, shape, v);
    if (i % 3 == 0) sample_set_copy(s, "unknown.bin", "\0\1\2", 3); /* passes through */
}

static int sample_matches(const sample *s, int i)
{
    sample want;
    sample_init(&want);
    make_sample(&want, i);
    int ok = s->key && !strcmp(s->key, want.key) && s->n == want.n;
    for (int k = 0; ok && k < want.n; k++) {
        const sample_field *f = sample_get(s, want.fields[k].name);
        ok = f && f->size == want.fields[k].size && !memcmp(f->data, want.fields[k].data, f->size);
    }
    sample_free(&want);
    return ok;
}

static void write_range(const char *endpoint, int from, int to)
{
    stream_writer *w = stream_open_write(endpoint);
    if (!w) die("%s", clip_error());
    sample s;
    sample_init(&s);
    for (int i = from; i < to; i++) {
        make_sample(&s, i);
        if (stream_write(w, &s)) die("%s", clip_error());
    }
    if (stream_close_write(w)) die("%s", clip_error());
    sample_free(&s);
}

static void write_samples(const char *endpoint, int n) { write_range(endpoint, 0, n); }

/* Reads everything; returns how many samples matched their expected index
 * in order; *count gets the number read; *seen counts arrivals per index. */
static int read_samples(const char *endpoint, int *count, int *seen, int *rc_out)
{
    stream_reader *r = stream_open_read(endpoint);
    if (!r) {
        *count = 0;
        *rc_out = -1;
        return 0;
    }
    sample s;
    sample_init(&s);
    int in_order = 0, n = 0, rc;
    while ((rc = stream_read(r, &s)) == 1) {
        int idx = -1;
        sscanf(strrchr(s.key, '_') + 1, "%d", &idx);
        if (idx >= 0 && idx < N_SAMPLES) seen[idx]++;
        if (idx == n && sample_matches(&s, idx)) in_order++;
        n++;
    }
    *rc_out = rc;
    stream_close_read(r);
    sample_free(&s);
    *count = n;
    return in_order;
}

static void test_npy(void)
{
    int64_t shape[3] = {2, 3, 4};
    float v[24];
    for (int i = 0; i < 24; i++) v[i] = i * 0.5f;
    size_t len;
    unsigned char *b = npy_encode(DT_F32, 3, shape, v, &len);
    npy_array a;
    CHECK(npy_parse(b, len, &a, "t") == 0, "%s", clip_error());
    CHECK(a.ndim == 3 && a.shape[0] == 2 && a.shape[2] == 4 && a.dtype == DT_F32, "shape");
    CHECK(!memcmp(a.data, v, sizeof v), "data");
    CHECK((len - sizeof v) % 64 == 0, "header padded to 64");
    CHECK(npy_parse(b, len - 1, &a, "t") == -1 && strstr(clip_error(), "truncated"), "%s",
          clip_error());
    for (size_t cut = 0; cut < len; cut += 7)
        CHECK(npy_parse(b, cut, &a, "t") == -1, "cut %zu", cut);
    b[20] = '#'; /* {'descr': #<f4', ...: a broken header, refused with a message, no crash */
    clip_clear_error();
    int rc = npy_parse(b, len, &a, "t");
    CHECK(rc == -1 && !strncmp(clip_error(), "t: ", 3), "corrupted header: rc %d, %s", rc,
          clip_error());
    free(b);
    int64_t one[1] = {5};
    b = npy_encode(DT_U8, 1, one, "abcde", &len);
    CHECK(npy_parse(b, len, &a, "t") == 0 && a.count == 5, "1-d");
    CHECK(memmem(b, len, "(5,)", 4) != NULL, "1-d shape written as (5,)");
    free(b);
}

static void test_file(void)
{
    char path[] = "/tmp/clip-test-stream-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    write_samples(path, N_SAMPLES);
    int seen[N_SAMPLES] = {0}, n, rc;
    int ok = read_samples(path, &n, seen, &rc);
    CHECK(rc == 0 && n == N_SAMPLES && ok == N_SAMPLES, "file: %d of %d in order (rc %d): %s", ok,
          n, rc, clip_error());

    sample_file *f = sample_file_open(path);
    CHECK(f && sample_file_count(f) == N_SAMPLES, "random access count");
    if (f) {
        sample s;
        sample_init(&s);
        int good = 0;
        for (int k = 0; k < N_SAMPLES; k++) {
            int i = (k * 7919) % N_SAMPLES;
            good += sample_file_read(f, i, &s) == 0 && sample_matches(&s, i);
        }
        CHECK(good == N_SAMPLES, "random access: %d good", good);
        sample_free(&s);
        sample_file_close(f);
    }

    /* truncation at many points: an error naming a sample, never a crash */
    size_t len;
    char *data = read_file(path, &len);
    int errors = 0, points = 0;
    for (size_t cut = 100; cut < len - 1024; cut += len / 37) {
        FILE *t = fopen(path, "wb");
        fwrite(data, 1, cut, t);
        fclose(t);
        memset(seen, 0, sizeof seen);
        read_samples(path, &n, seen, &rc);
        points++;
        errors +=
            rc == -1 && (strstr(clip_error(), "sample") || strstr(clip_error(), "truncated") ||
                         strstr(clip_error(), "not a tar stream"));
    }
    CHECK(errors == points, "truncated streams: %d of %d reported (%s)", errors, points,
          clip_error());
    free(data);
    unlink(path);
}

/* Shards in brace notation are one sequence of samples, in the order named. */
static void test_shards(void)
{
    char dir[] = "/tmp/clip-test-shards-XXXXXX", path[96], spec[96];
    if (!mkdtemp(dir)) die("mkdtemp");
    int cuts[] = {0, 100, 101, 300}; /* shard 1 holds one sample */
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/part-%02d.tar", dir, k);
        write_range(path, cuts[k], cuts[k + 1]);
    }
    snprintf(spec, sizeof spec, "%s/part-{00..02}.tar", dir);
    sample_file *f = sample_file_open(spec);
    CHECK(f && sample_file_count(f) == N_SAMPLES && sample_file_shards(f) == 3,
          "shards: %zu samples in %zu files: %s", f ? sample_file_count(f) : 0,
          f ? sample_file_shards(f) : 0, clip_error());
    if (f) {
        sample s;
        sample_init(&s);
        int good = 0;
        for (int k = 0; k < N_SAMPLES; k++) {
            int i = (k * 7919) % N_SAMPLES;
            good += sample_file_read(f, i, &s) == 0 && sample_matches(&s, i);
        }
        CHECK(good == N_SAMPLES, "shards: %d of %d read back as written", good, N_SAMPLES);
        sample_free(&s);
        sample_file_close(f);
    }
    int seen[N_SAMPLES] = {0}, n, rc;
    int in_order = read_samples(spec, &n, seen, &rc);
    CHECK(rc == 0 && n == N_SAMPLES && in_order == N_SAMPLES,
          "shards as one stream: %d of %d in order (rc %d): %s", in_order, n, rc, clip_error());
    snprintf(spec, sizeof spec, "%s/part-{00..03}.tar", dir);
    clip_clear_error();
    memset(seen, 0, sizeof seen);
    read_samples(spec, &n, seen, &rc);
    CHECK(rc == -1 && n == 0 && strstr(clip_error(), "part-03.tar") &&
              strstr(clip_error(), "shard 4 of 4"),
          "a missing shard fails the stream at open, naming it: %s", clip_error());
    clip_clear_error();
    f = sample_file_open(spec);
    CHECK(!f && strstr(clip_error(), "part-03.tar"), "a missing shard is named: %s", clip_error());
    sample_file_close(f);
    CHECK(!sample_file_open("/dev/null") && strstr(clip_error(), "/dev/null"),
          "a device is not a random-access file: %s", clip_error());
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/part-%02d.tar", dir, k);
        unlink(path);
    }
    rmdir(dir);
}

static void test_pipe(void)
{
    int p[2];
    if (pipe(p)) die("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        write_samples("-", N_SAMPLES);
        _exit(0);
    }
    close(p[1]);
    int saved = dup(0);
    dup2(p[0], 0);
    close(p[0]);
    int seen[N_SAMPLES] = {0}, n, rc;
    int ok = read_samples("-", &n, seen, &rc);
    dup2(saved, 0);
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(rc == 0 && n == N_SAMPLES && ok == N_SAMPLES, "pipe: %d of %d in order", ok, n);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pipe: the writer exited with status %#x",
          status);
}

/* producer processes push to one bound reader; every sample arrives exactly once */
typedef struct {
    const char *endpoint;
    int first, step;
} producer_arg;

static void *producer(void *p)
{
    producer_arg *a = p;
    stream_writer *w = stream_open_write(a->endpoint);
    if (!w) die("%s", clip_error());
    sample s;
    sample_init(&s);
    for (int i = a->first; i < N_SAMPLES; i += a->step) {
        make_sample(&s, i);
        if (stream_write(w, &s)) die("%s", clip_error());
    }
    if (stream_close_write(w)) die("%s", clip_error());
    sample_free(&s);
    return NULL;
}

static void test_zmq(const char *bind_ep, const char *connect_ep, int producers)
{
    char ep[256];
    snprintf(ep, sizeof ep, "%s?producers=%d", bind_ep, producers);
    stream_reader *r = stream_open_read(ep);
    CHECK(r != NULL, "%s", clip_error());
    pid_t pids[8];
    for (int k = 0; k < producers; k++) {
        if ((pids[k] = fork()) == 0) {
            producer_arg a = {connect_ep, k, producers};
            producer(&a);
            _exit(0);
        }
    }
    int seen[N_SAMPLES] = {0}, n = 0, intact = 0;
    sample s;
    sample_init(&s);
    while (r && stream_read(r, &s) == 1) {
        int idx = atoi(strrchr(s.key, '_') + 1);
        if (idx >= 0 && idx < N_SAMPLES) seen[idx]++;
        intact += sample_matches(&s, idx);
        n++;
    }
    stream_close_read(r);
    sample_free(&s);
    int writers_ok = 0;
    for (int k = 0; k < producers; k++) {
        int status = -1;
        waitpid(pids[k], &status, 0);
        writers_ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CHECK(writers_ok == producers, "zmq %s x%d: %d writers exited 0", bind_ep, producers,
          writers_ok);
    int once = 0;
    for (int i = 0; i < N_SAMPLES; i++) once += seen[i] == 1;
    CHECK(n == N_SAMPLES && once == N_SAMPLES && intact == N_SAMPLES,
          "zmq %s x%d: read %d, exactly-once %d, intact %d", bind_ep, producers, n, once, intact);
}

int main(void)
{
    test_npy();
    test_file();
    test_shards();
    test_pipe();
    char ipc[128];
    snprintf(ipc, sizeof ipc, "ipc:///tmp/clip-test-%d.ipc", (int)getpid());
    test_zmq(ipc, ipc, 1);
    test_zmq("tcp://127.0.0.1:47311", "tcp://127.0.0.1:47311", 3);
    /* writers far ahead of the reader: back-pressure, and nothing lost at disconnect */
    char ipc_hwm[160];
    snprintf(ipc_hwm, sizeof ipc_hwm, "%s?hwm=2", ipc);
    test_zmq(ipc, ipc_hwm, 2);
    unlink(ipc + 6);
    return unit_done();
}

/* core/atomic_file: an output appears whole at commit or not at all; the
 * temporary files of dead processes go, those of live ones stay; a signal,
 * an exit or a write past the size limit leaves no temporary file; the
 * registry holds up under threads and says when it is full. */
#include "tool.h"
#include "core/atomic_file.h"
#include "core/util.h"
#include "unit.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[64];

static const char *in_dir(const char *name)
{
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static int exists(const char *path)
{
    struct stat st;
    return !lstat(path, &st);
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) == EOF || fclose(f)) die("%s: cannot write", path);
}

static int holds(const char *path, const char *text)
{
    size_t n;
    char *got = read_file(path, &n);
    int ok = got && n == strlen(text) && !memcmp(got, text, n);
    free(got);
    return ok;
}

/* names in dir containing ".tmp-" */
static int temp_files(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp-")) n++;
    if (d) closedir(d);
    return n;
}

/* atomic_file_create, or stop the test saying why (rather than crash on NULL) */
static atomic_file *created(const char *path)
{
    atomic_file *f = atomic_file_create(path);
    if (!f) die("FAIL: atomic_file_create: %s", clip_error());
    return f;
}

static int write_text(int fd, void *ctx)
{
    const char *s = ctx;
    return write(fd, s, strlen(s)) == (ssize_t)strlen(s) ? 0 : -1;
}

static int fail_midway(int fd, void *ctx)
{
    (void)write(fd, "half", 4);
    clip_set_error("%s: failed on purpose", (const char *)ctx);
    return -1;
}

static void test_commit_and_abort(void)
{
    const char *out = in_dir("out.bin");
    atomic_file *f = created(out);
    char want_tmp[300];
    snprintf(want_tmp, sizeof want_tmp, "%s.tmp-%ld", out, (long)getpid());
    CHECK(!strcmp(atomic_file_temp_path(f), want_tmp), "temp %s", atomic_file_temp_path(f));
    CHECK(exists(want_tmp), "the temporary file exists while writing");
    CHECK(!exists(out), "the output is not there before commit");
    CHECK(write(atomic_file_fd(f), "new", 3) == 3, "write");
    CHECK(atomic_file_commit(f) == 0, "%s", clip_error());
    CHECK(holds(out, "new"), "committed content");
    CHECK(!exists(want_tmp), "no temporary file after commit");

    put(out, "old");
    f = created(out);
    CHECK(write(atomic_file_fd(f), "partial", 7) == 7, "write");
    atomic_file_abort(f);
    CHECK(holds(out, "old"), "abort keeps the old file");
    CHECK(temp_files() == 0, "abort leaves no temporary file");

    CHECK(atomic_file_write(out, fail_midway, (void *)out) == -1, "a failing writer fails");
    CHECK(strstr(clip_error(), "failed on purpose") != NULL, "its error stays: %s", clip_error());
    CHECK(holds(out, "old"), "a failed write keeps the old file");
    CHECK(temp_files() == 0, "and leaves no temporary file");
    CHECK(atomic_file_write(out, write_text, "whole") == 0, "%s", clip_error());
    CHECK(holds(out, "whole"), "atomic_file_write replaces the file");

    f = created(out);
    FILE *s = atomic_file_stream(f);
    CHECK(s && atomic_file_stream(f) == s, "one stream per file");
    if (s) fprintf(s, "via %s", "stdio");
    CHECK(atomic_file_commit(f) == 0, "%s", clip_error());
    CHECK(holds(out, "via stdio"), "commit flushes the stream");

    CHECK(atomic_file_create(dir) == NULL, "a directory is refused");
    CHECK(strstr(clip_error(), "is a directory") != NULL, "%s", clip_error());
    CHECK(atomic_file_create(in_dir("no/such/dir/x")) == NULL, "a missing directory is an error");
    CHECK(strstr(clip_error(), "No such file or directory") != NULL, "%s", clip_error());
    CHECK(atomic_file_applies(out) && atomic_file_applies(in_dir("absent")), "files and new names");
    CHECK(!atomic_file_applies("/dev/null"), "a device is written in place");
}

static pid_t dead_pid(void)
{
    pid_t p = fork();
    if (p == 0) _exit(0);
    waitpid(p, NULL, 0);
    return p;
}

static void test_stale(void)
{
    const char *out = in_dir("stale.tar");
    char dead[300], alive[300], other[300], mine[300];
    snprintf(dead, sizeof dead, "%s.tmp-%ld", out, (long)dead_pid());
    snprintf(alive, sizeof alive, "%s.tmp-%ld", out, (long)getppid());
    snprintf(other, sizeof other, "%s.state.tmp-%ld", out, (long)dead_pid());
    snprintf(mine, sizeof mine, "%s.tmp-%ld", out, (long)getpid());
    put(dead, "killed run");
    put(alive, "a run still going");
    put(other, "another output's");
    put(mine, "an earlier process with this PID");
    CHECK(atomic_file_write(out, write_text, "fresh") == 0, "%s", clip_error());
    CHECK(!exists(dead), "the temporary file of a dead process is removed");
    CHECK(exists(alive), "that of a live process stays");
    CHECK(exists(other), "that of another output stays");
    CHECK(!exists(mine), "one with this PID, not being written, is replaced");
    CHECK(holds(out, "fresh"), "the output is written");
    unlink(alive);
    unlink(other);
}

/* in a child: 1 if the temporary files of `n` open outputs are gone once it
 * has ended by `how` ("exit", "SIGTERM", "SIGINT") with the expected status */
static int child_cleans_up(const char *how, int n)
{
    pid_t p = fork();
    if (p == 0) {
        clip_handle_signals();
        char name[32];
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof name, "child%d.tar", i);
            atomic_file *f = atomic_file_create(in_dir(name));
            if (!f || write(atomic_file_fd(f), "x", 1) != 1) _exit(3);
        }
        if (!strcmp(how, "exit")) exit(1); /* as die() does */
        raise(!strcmp(how, "SIGINT") ? SIGINT : SIGTERM);
        _exit(4);
    }
    int st;
    waitpid(p, &st, 0);
    int status_ok =
        !strcmp(how, "exit")
            ? WIFEXITED(st) && WEXITSTATUS(st) == 1
            : WIFSIGNALED(st) && WTERMSIG(st) == (strcmp(how, "SIGINT") ? SIGTERM : SIGINT);
    CHECK(status_ok, "%s: child status %d", how, st);
    return temp_files() == 0;
}

static void test_cleanup(void)
{
    CHECK(child_cleans_up("exit", 3), "exit removes the unfinished outputs");
    CHECK(child_cleans_up("SIGTERM", 3), "SIGTERM removes them and ends by SIGTERM");
    CHECK(child_cleans_up("SIGINT", 1), "SIGINT too");
    CHECK(!exists(in_dir("child0.tar")), "no output appears");
}

static void test_file_size_limit(void)
{
    pid_t p = fork();
    if (p == 0) {
        clip_handle_signals(); /* SIGXFSZ ignored: the write fails with EFBIG */
        struct rlimit rl = {4096, 4096};
        setrlimit(RLIMIT_FSIZE, &rl);
        atomic_file *f = atomic_file_create(in_dir("big.bin"));
        FILE *s = f ? atomic_file_stream(f) : NULL;
        if (!s) _exit(3);
        for (int i = 0; i < 10000; i++) fputs("0123456789", s);
        int rc = atomic_file_commit(f);
        _exit(rc == -1 && strstr(clip_error(), "File too large (the file size limit: ulimit -f)")
                  ? 0
                  : 5);
    }
    int st;
    waitpid(p, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "past ulimit -f: an error saying so (status %d)",
          st);
    CHECK(!exists(in_dir("big.bin")), "no output");
    CHECK(temp_files() == 0, "no temporary file");
}

static void *writer_thread(void *arg)
{
    long t = (long)arg;
    char name[64], path[320]; /* not in_dir(): its buffers are shared by the threads */
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof name, "t%ld-%d", t, i % 5);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (atomic_file_write(path, write_text, name)) return (void *)1;
    }
    return NULL;
}

static void test_threads_and_limit(void)
{
    pthread_t th[8];
    for (long t = 0; t < 8; t++) pthread_create(&th[t], NULL, writer_thread, (void *)t);
    int failed = 0;
    for (int t = 0; t < 8; t++) {
        void *r;
        pthread_join(th[t], &r);
        failed += r != NULL;
    }
    CHECK(failed == 0, "8 threads writing at once: %s", clip_error());
    CHECK(temp_files() == 0, "no temporary file left by the threads");
    CHECK(holds(in_dir("t7-4"), "t7-4"), "each thread's files are whole");

    atomic_file *open_files[ATOMIC_FILE_MAX_OPEN];
    char name[32];
    for (int i = 0; i < ATOMIC_FILE_MAX_OPEN; i++) {
        snprintf(name, sizeof name, "many%d", i);
        open_files[i] = atomic_file_create(in_dir(name));
    }
    CHECK(open_files[ATOMIC_FILE_MAX_OPEN - 1], "%d open at once", ATOMIC_FILE_MAX_OPEN);
    CHECK(atomic_file_create(in_dir("one-more")) == NULL, "one more is refused");
    CHECK(strstr(clip_error(), "more than 32 output files open at once") != NULL, "%s",
          clip_error());
    for (int i = 0; i < ATOMIC_FILE_MAX_OPEN; i++)
        atomic_file_abort(open_files[i]); /* NULL: no-op */
    CHECK(temp_files() == 0, "the slots are free again");
    atomic_file *f = created(in_dir("twice"));
    CHECK(atomic_file_create(in_dir("twice")) == NULL, "the same output twice at once is refused");
    CHECK(strstr(clip_error(), "this process writes it already") != NULL, "%s", clip_error());
    CHECK(atomic_file_commit(f) == 0, "%s", clip_error());
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/clip-test-atomic-XXXXXX");
    if (!mkdtemp(dir)) die("mkdtemp: %s", strerror(errno));
    test_commit_and_abort();
    test_stale();
    test_cleanup();
    test_file_size_limit();
    test_threads_and_limit();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) warn("could not remove %s", dir);
    return unit_done();
}

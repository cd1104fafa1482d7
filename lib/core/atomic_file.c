#include "core/atomic_file.h"
#include "core/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the registry of unfinished outputs (atomic_file.h: why process-wide) ----
 * A slot goes FREE -> FILLING (its path being copied in) -> ACTIVE, and back
 * to FREE at commit/abort. atomic_file_remove_unfinished takes ACTIVE slots
 * to REMOVING and unlinks their paths; such a slot is never reused (it runs
 * as the process ends), so a handler never reads a path being rewritten. */

enum { SLOT_FREE, SLOT_FILLING, SLOT_ACTIVE, SLOT_REMOVING };

static struct {
    atomic_int state;
    char path[PATH_MAX];
} unfinished[ATOMIC_FILE_MAX_OPEN];

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "the registry needs lock-free atomics (signal handlers)");

static int registry_add(const char *tmp_path)
{
    for (int i = 0; i < ATOMIC_FILE_MAX_OPEN; i++) {
        int expect = SLOT_FREE;
        if (!atomic_compare_exchange_strong(&unfinished[i].state, &expect, SLOT_FILLING)) continue;
        snprintf(unfinished[i].path, sizeof unfinished[i].path, "%s", tmp_path);
        atomic_store(&unfinished[i].state, SLOT_ACTIVE);
        return i;
    }
    return -1;
}

static void registry_remove(int slot)
{
    int expect = SLOT_ACTIVE;
    atomic_compare_exchange_strong(&unfinished[slot].state, &expect, SLOT_FREE);
}

/* another slot than `self` holds tmp_path: this process writes that output already */
static int registry_has(const char *tmp_path, int self)
{
    for (int i = 0; i < ATOMIC_FILE_MAX_OPEN; i++)
        if (i != self && atomic_load(&unfinished[i].state) == SLOT_ACTIVE &&
            !strcmp(unfinished[i].path, tmp_path))
            return 1;
    return 0;
}

void atomic_file_remove_unfinished(void)
{
    int saved = errno;
    for (int i = 0; i < ATOMIC_FILE_MAX_OPEN; i++) {
        int expect = SLOT_ACTIVE;
        if (atomic_compare_exchange_strong(&unfinished[i].state, &expect, SLOT_REMOVING))
            unlink(unfinished[i].path);
    }
    errno = saved;
}

static pthread_once_t at_exit_once = PTHREAD_ONCE_INIT;
static void register_at_exit(void) { atexit(atomic_file_remove_unfinished); }

/* ---- signals ---- */

static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
static atomic_int dying;

/* Runs on whichever thread the signal reached. The first one removes the
 * outputs and re-raises its signal, now at its default action, which ends
 * the process when the handler returns; one reaching another thread
 * meanwhile waits for that end rather than ending it early. */
static void on_cleanup_signal(int sig)
{
    if (atomic_exchange(&dying, 1)) {
        for (;;) pause();
    }
    atomic_file_remove_unfinished();
    signal(sig, SIG_DFL);
    raise(sig);
}

void clip_handle_signals(void)
{
    struct sigaction sa = {.sa_handler = on_cleanup_signal};
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof *cleanup_signals; i++)
        sigaddset(&sa.sa_mask, cleanup_signals[i]); /* no nesting on one thread */
    for (size_t i = 0; i < sizeof cleanup_signals / sizeof *cleanup_signals; i++) {
        int sig = cleanup_signals[i];
        struct sigaction old;
        /* nohup and `cmd | head` setups ignore SIGHUP or SIGPIPE on purpose */
        if ((sig == SIGHUP || sig == SIGPIPE) && !sigaction(sig, NULL, &old) &&
            old.sa_handler == SIG_IGN)
            continue;
        sigaction(sig, &sa, NULL);
    }
    signal(SIGXFSZ, SIG_IGN);
}

/* ---- stale temporary files ---- */

/* Removes dir/BASE.tmp-PID for every PID that is no process (ESRCH); this
 * process's own PID is create's business. */
static void remove_stale(const char *path)
{
    char *d = xstrdup(path), *b = xstrdup(path);
    const char *dir = dirname(d), *base = basename(b);
    size_t bl = strlen(base);
    DIR *dp = opendir(dir);
    struct dirent *e;
    while (dp && (e = readdir(dp))) {
        const char *name = e->d_name;
        if (strncmp(name, base, bl) || strncmp(name + bl, ".tmp-", 5)) continue;
        const char *digits = name + bl + 5;
        size_t nd = strspn(digits, "0123456789");
        if (nd == 0 || nd > 9 || digits[nd]) continue;
        long pid = strtol(digits, NULL, 10);
        if (pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        size_t n = strlen(dir) + strlen(name) + 2;
        char *stale = xmalloc(n);
        snprintf(stale, n, "%s/%s", dir, name);
        if (!unlink(stale))
            clip_notice("removed %s: the unfinished output of process %ld, which no longer runs "
                        "(a killed run)",
                        stale, pid);
        free(stale);
    }
    if (dp) closedir(dp);
    free(d);
    free(b);
}

/* ---- the files ---- */

struct atomic_file {
    char *path, *tmp_path;
    int fd, slot;
    FILE *stream;
};

static void set_io_error(const char *path, const char *what, int err)
{
    clip_set_error("%s: %s: %s%s", path, what, strerror(err),
                   err == EFBIG ? " (the file size limit: ulimit -f)" : "");
}

int atomic_file_applies(const char *path)
{
    struct stat st;
    return stat(path, &st) || S_ISREG(st.st_mode) || S_ISDIR(st.st_mode);
}

atomic_file *atomic_file_create(const char *path)
{
    struct stat st;
    if (!path || !*path) {
        clip_set_error("no output file name");
        return NULL;
    }
    if (!stat(path, &st) && S_ISDIR(st.st_mode)) {
        clip_set_error("%s: is a directory (give a file name)", path);
        return NULL;
    }
    pthread_once(&at_exit_once, register_at_exit);
    remove_stale(path);
    size_t n = strlen(path) + 32;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp-%ld", path, (long)getpid());
    if (strlen(tmp) >= PATH_MAX) {
        clip_set_error("%s: the path is too long (%zu bytes with its temporary suffix, at most %d)",
                       path, strlen(tmp), PATH_MAX - 1);
        free(tmp);
        return NULL;
    }
    if (registry_has(tmp, -1)) {
        clip_set_error("%s: this process writes it already", path);
        free(tmp);
        return NULL;
    }
    /* registered before it exists: a signal between the two finds nothing to remove */
    int slot = registry_add(tmp);
    if (slot < 0) {
        clip_set_error("%s: more than %d output files open at once", path, ATOMIC_FILE_MAX_OPEN);
        free(tmp);
        return NULL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0 && errno == EEXIST && !unlink(tmp)) {
        /* an earlier process that had this PID */
        clip_notice("removed %s: the unfinished output of an earlier run", tmp);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
    }
    if (fd < 0) {
        clip_set_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
        registry_remove(slot);
        free(tmp);
        return NULL;
    }
    atomic_file *f = xcalloc(1, sizeof *f);
    f->path = xstrdup(path);
    f->tmp_path = tmp;
    f->fd = fd;
    f->slot = slot;
    return f;
}

int atomic_file_fd(const atomic_file *f) { return f->fd; }
const char *atomic_file_path(const atomic_file *f) { return f->path; }
const char *atomic_file_temp_path(const atomic_file *f) { return f->tmp_path; }

FILE *atomic_file_stream(atomic_file *f)
{
    if (!f->stream && !(f->stream = fdopen(f->fd, "w")))
        clip_set_error("%s: %s", f->path, strerror(errno));
    return f->stream;
}

static void release(atomic_file *f)
{
    registry_remove(f->slot);
    free(f->path);
    free(f->tmp_path);
    free(f);
}

void atomic_file_abort(atomic_file *f)
{
    if (!f) return;
    if (f->stream) {
        __fpurge(f->stream); /* nothing more written to a file about to go */
        fclose(f->stream);
    } else {
        close(f->fd);
    }
    unlink(f->tmp_path);
    release(f);
}

/* fsync of the directory: makes the rename itself durable; best effort (some
 * file systems refuse fsync on a directory) */
static void sync_dir(const char *path)
{
    char *d = xstrdup(path);
    int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    free(d);
}

int atomic_file_commit(atomic_file *f)
{
    int err = 0;
    const char *what = NULL;
    if (f->stream) {
        errno = 0;
        if (fflush(f->stream) || ferror(f->stream))
            err = errno ? errno : EIO, what = "write failed";
    }
    if (!err && fsync(f->fd)) err = errno, what = "fsync failed";
    if ((f->stream ? fclose(f->stream) : close(f->fd)) && !err) err = errno, what = "close failed";
    f->stream = NULL;
    if (!err && rename(f->tmp_path, f->path)) err = errno, what = "rename failed";
    if (err) {
        set_io_error(f->path, what, err);
        unlink(f->tmp_path);
        release(f);
        return -1;
    }
    sync_dir(f->path);
    release(f);
    return 0;
}

int atomic_file_write(const char *path, int (*fn)(int fd, void *ctx), void *ctx)
{
    atomic_file *f = atomic_file_create(path);
    if (!f) return -1;
    if (fn(f->fd, ctx) < 0) {
        atomic_file_abort(f);
        return -1;
    }
    return atomic_file_commit(f);
}

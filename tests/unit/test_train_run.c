/* clip-train's run (train/run.h) returns what goes wrong instead of exiting:
 * a --train that does not exist is -1 with an error naming it, options that
 * exclude each other -2 (the tool's usage error); a short run from scratch
 * says its notices on the FILE it is given, calls the signal hook, and stops
 * after its first step when the stop flag is already set. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "core/util.h"
#include "train/run.h"

#define FIX "tests/fixtures/train/"

static int hooked;
static void hook(void) { hooked++; }

/* what the run wrote to f (malloc'd) */
static char *contents(FILE *f)
{
    long n = ftell(f);
    char *s = calloc(1, n + 1);
    rewind(f);
    if (fread(s, 1, n, f) != (size_t)n) s[0] = 0;
    return s;
}

int main(void)
{
    clip_set_progname("test_train_run");
    train_run_options o;
    train_run_result res;

    train_run_defaults(&o);
    o.arch = "tiny,vocab=256";
    o.train_path = "/nonexistent/missing.tar";
    clip_clear_error();
    int rc = train_run(&o, NULL, &res);
    CHECK(rc == -1, "a missing --train: %d", rc);
    CHECK(strstr(clip_error(), "/nonexistent/missing.tar") != NULL, "the error: %s", clip_error());
    CHECK(!res.agreed && !res.signal, "agreed %d, signal %d", res.agreed, res.signal);

    o.feature_cache = "f.tar";
    o.no_feature_cache = 1;
    rc = train_run(&o, NULL, &res);
    CHECK(rc == -2, "--feature-cache with --no-feature-cache: %d", rc);
    CHECK(!strcmp(clip_error(), "--feature-cache and --no-feature-cache exclude each other"),
          "the error: %s", clip_error());

    volatile sig_atomic_t stop = SIGTERM;
    FILE *msg = tmpfile();
    train_run_defaults(&o);
    o.arch = "tiny,vocab=256";
    o.train_path = FIX "train.tar";
    o.loader.micro = 4;
    o.steps = 2;
    o.msg = msg;
    o.stop_signal = &stop;
    o.catch_signals = hook;
    rc = train_run(&o, NULL, &res);
    CHECK(rc == 0, "a run stopped by a signal: %d (%s)", rc, clip_error());
    CHECK(res.signal == SIGTERM && hooked == 1, "signal %d, hook called %d times", res.signal,
          hooked);
    char *said = contents(msg);
    CHECK(!strncmp(said, "test_train_run: ViT ", 20), "the banner: %s", said);
    CHECK(strstr(said, "\ntest_train_run: Terminated at step 1: nothing saved (no --save)\n") !=
              NULL,
          "the stop: %s", said);
    free(said);
    fclose(msg);
    return unit_done();
}

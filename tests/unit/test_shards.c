/* Shard specs (lib/io/shards.c) as data: each spec with the names it must
 * expand to, in order, or the words its error must contain. */
#include "io/shards.h"
#include "core/util.h"
#include "unit.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *spec;
    const char *want; /* names joined by ' ', or NULL for an error */
    const char *error;
} cases[] = {
    {"train.tar", "train.tar", NULL},
    {"-", "-", NULL},
    {"s/train-{000..003}.tar", "s/train-000.tar s/train-001.tar s/train-002.tar s/train-003.tar",
     NULL},
    {"x{8..11}", "x8 x9 x10 x11", NULL},
    {"x{08..10}", "x08 x09 x10", NULL},
    {"x{1..010}", "x001 x002 x003 x004 x005 x006 x007 x008 x009 x010", NULL},
    {"{a,b}/x-{0..1}.tar", "a/x-0.tar a/x-1.tar b/x-0.tar b/x-1.tar", NULL},
    {"{a,,b}", "a  b", NULL},
    {"a.tar::b-{1..2}.tar", "a.tar b-1.tar b-2.tar", NULL},
    {"{5..5}", "5", NULL},
    {"x{1..2", NULL, "'{' without '}'"},
    {"x}1", NULL, "'}' without '{'"},
    {"x{}", NULL, "empty braces"},
    {"x{{1..2}}", NULL, "nested"},
    {"x{3..1}", NULL, "backwards"},
    {"x{abc}", NULL, "neither a range"},
    {"x{1..}", NULL, "neither a range"},
    {"a.tar::", NULL, "empty name"},
    {"::a.tar", NULL, "empty name"},
    {"x{0..9999999}", NULL, "more than"},
    {"{0..999}{0..999}{0..999}", NULL, "more than"},
    {"x{0..99999999999999999999}", NULL, "too large"},
};

int main(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = 0;
        clip_clear_error();
        char **v = shards_expand(cases[i].spec, &n);
        if (!cases[i].want) {
            CHECK(!v, "%s: expanded, expected an error with '%s'", cases[i].spec, cases[i].error);
            CHECK(!v && strstr(clip_error(), cases[i].spec) && strstr(clip_error(), cases[i].error),
                  "%s: error '%s' should name the spec and say '%s'", cases[i].spec, clip_error(),
                  cases[i].error);
            shards_free(v, n);
            continue;
        }
        CHECK(v != NULL, "%s: %s", cases[i].spec, clip_error());
        if (!v) continue;
        size_t len = 1;
        for (size_t k = 0; k < n; k++) len += strlen(v[k]) + 1;
        char *got = xcalloc(len, 1);
        for (size_t k = 0; k < n; k++) {
            if (k) strcat(got, " ");
            strcat(got, v[k]);
        }
        CHECK(!strcmp(got, cases[i].want), "%s: got '%s', expected '%s'", cases[i].spec, got,
              cases[i].want);
        free(got);
        shards_free(v, n);
    }
    return unit_done();
}

/* Fuzzes the annotations parser (lib/io/annotations.c: annotations_load_buffer) and the
 * --root confinement behind it (annotations_check_root, on a folder holding a.jpg, a link
 * "in" to itself and a link "out" to /): each input is taken or refused with an error naming
 * it, never crashes, leaks or reads out of bounds. A taken list loses nothing: its items and
 * merged entries are the JSON list's entries, its captions all the entries' captions, no
 * two items name one image, and every image has '/' separators. Seeds:
 * tests/fuzz/corpus/annotations/ (tests/fuzz/make_seeds.py); the driver: tests/fuzz/fuzz.h. */
#include "io/annotations.h"
#include "core/util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_NAME "fuzz_annotations"
#define NAME "fuzz-input.json"
#define FUZZ_TOKENS                                                                                \
    {                                                                                              \
        "\"image\"", "\"caption\"", "\"captions\"", "{\"image\": \"a.jpg\"}, ", "../", "./", "/",  \
            "\\\\", "..\\\\", "out/", "in/", "a.jpg", "\"\\u00e9\"", "\"\\ud800\"", "[]", "{}",    \
            "null", "7", "\"\"", ", "                                                              \
    }

static int fuzz_one(const unsigned char *data, size_t size);
#include "fuzz.h"

static char root[64]; /* the confinement's folder, made once */

static void remove_root(void)
{
    char p[128];
    const char *names[] = {"a.jpg", "in", "out"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", root, names[i]);
        unlink(p);
    }
    rmdir(root);
}

static void make_root(void)
{
    snprintf(root, sizeof root, "/tmp/fuzz_annotations.XXXXXX");
    if (!mkdtemp(root)) fuzz_fail("mkdtemp failed");
    atexit(remove_root);
    char p[128];
    snprintf(p, sizeof p, "%s/a.jpg", root);
    FILE *f = fopen(p, "w");
    if (!f) fuzz_fail("cannot make the root's a.jpg");
    fclose(f);
    snprintf(p, sizeof p, "%s/in", root);
    if (symlink(".", p)) fuzz_fail("cannot make the root's link 'in'");
    snprintf(p, sizeof p, "%s/out", root);
    if (symlink("/", p)) fuzz_fail("cannot make the root's link 'out'");
}

static const char *lookup_part(const char *p)
{
    while (p[0] == '.' && p[1] == '/') p += 2;
    while (*p == '/') p++;
    return p;
}

static int cmp_lookup(const void *a, const void *b)
{
    return strcmp(lookup_part((*(const annotation *const *)a)->image),
                  lookup_part((*(const annotation *const *)b)->image));
}

static int fuzz_one(const unsigned char *data, size_t size)
{
    if (!root[0]) make_root();
    annotations *a = annotations_load_buffer((const char *)data, size, NAME);
    if (!a) {
        fuzz_refused(NAME);
        return 0;
    }
    if (!fuzz_no_error()) fuzz_fail("a list taken left an error behind");

    /* what the list holds, by jansson on its own */
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    if (!json_is_array(j)) fuzz_fail("a list taken that is not a JSON list");
    size_t entries = json_array_size(j), captions = 0, i;
    json_t *e;
    json_array_foreach(j, i, e)
    {
        json_t *c = json_object_get(e, "caption");
        if (!c) c = json_object_get(e, "captions");
        captions += json_is_array(c) ? json_array_size(c) : c != NULL;
    }
    json_decref(j);
    if (a->n + a->n_merged != entries) fuzz_fail("entries lost or made up");
    size_t got = 0;
    const annotation **sorted = xmalloc((a->n + 1) * sizeof *sorted);
    for (i = 0; i < a->n; i++) {
        const annotation *an = &a->items[i];
        if (!an->image || strchr(an->image, '\\')) fuzz_fail("an image without '/' separators");
        if (i && an->entry <= a->items[i - 1].entry) fuzz_fail("items out of list order");
        if (an->n_captions < 0 || (an->n_captions && !an->captions))
            fuzz_fail("a bad caption list");
        for (int k = 0; k < an->n_captions; k++)
            if (!an->captions[k]) fuzz_fail("a NULL caption");
        got += an->n_captions;
        sorted[i] = an;
    }
    if (got != captions) fuzz_fail("captions lost or made up");
    qsort(sorted, a->n, sizeof *sorted, cmp_lookup);
    for (i = 1; i < a->n; i++)
        if (!cmp_lookup(&sorted[i - 1], &sorted[i])) fuzz_fail("two items name one image");
    free(sorted);

    clip_clear_error();
    if (annotations_check_root(a, root, NAME)) fuzz_refused(NAME);
    annotations_free(a);
    return 1;
}

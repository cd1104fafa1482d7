/* Checkpoint loading and saving against tests/fixtures/ckpt (made by
 * tests/ref/make_checkpoints.py with PyTorch), plus hostile inputs. */
#include "tool.h"
#include "ckpt/checkpoint.h"
#include "unit.h"
#include "core/util.h"

#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define FIX "tests/fixtures/ckpt/"

static char tmpdir[64];

static char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f)) die("cannot write %s", path);
}

static unsigned char *unhex(const char *s, size_t *n)
{
    *n = strlen(s) / 2;
    unsigned char *b = xmalloc(*n + 1);
    for (size_t i = 0; i < *n; i++) sscanf(s + 2 * i, "%2hhx", &b[i]);
    return b;
}

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

/* Every tensor of the expected set, bit for bit, and its float32 conversion. */
static void check_against(const char *file, json_t *set)
{
    ckpt *c = ckpt_load(file);
    CHECK(c != NULL, "%s: %s", file, clip_error());
    if (!c) return;
    CHECK(ckpt_count(c) == json_array_size(set), "%s: %zu tensors, expected %zu", file,
          ckpt_count(c), json_array_size(set));
    size_t i;
    json_t *e;
    json_array_foreach(set, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        const ckpt_tensor *t = ckpt_find(c, name);
        CHECK(t != NULL, "%s: missing %s", file, name);
        if (!t) continue;
        CHECK(ckpt_tensor_at(c, i) == t, "%s: %s not at position %zu", file, name, i);
        CHECK(!strcmp(dtype_name(t->dtype), json_string_value(json_object_get(e, "dtype"))),
              "%s: %s dtype %s", file, name, dtype_name(t->dtype));
        json_t *shape = json_object_get(e, "shape");
        int64_t want[CKPT_MAX_DIMS];
        int ndim = json_array_size(shape);
        for (int d = 0; d < ndim; d++) want[d] = json_integer_value(json_array_get(shape, d));
        int same = t->ndim == ndim;
        for (int d = 0; same && d < ndim; d++) same = t->shape[d] == want[d];
        CHECK(same, "%s: %s shape", file, name);
        size_t nraw, nf32;
        unsigned char *raw = unhex(json_string_value(json_object_get(e, "raw")), &nraw);
        unsigned char *f32 = unhex(json_string_value(json_object_get(e, "f32")), &nf32);
        CHECK(nraw == t->numel * dtype_size(t->dtype) && !memcmp(raw, t->data, nraw),
              "%s: %s raw bytes differ", file, name);
        CHECK((uintptr_t)t->data % dtype_size(t->dtype) == 0, "%s: %s misaligned", file, name);
        float *got = xmalloc(nf32 + 4);
        int rc = ckpt_read_f32(c, name, ndim, want, got);
        CHECK(rc == 0 && nf32 == 4 * t->numel && !memcmp(got, f32, nf32),
              "%s: %s as f32 differs (%s)", file, name, rc ? clip_error() : "");
        free(got);
        free(raw);
        free(f32);
    }
    ckpt_free(c);
}

static void expect_error(const char *file, const char *part)
{
    clip_clear_error(); /* a stale message from the case before must not pass */
    ckpt *c = ckpt_load(file);
    CHECK(c == NULL, "%s loaded", file);
    if (c)
        ckpt_free(c);
    else
        CHECK(has(clip_error(), part) && has(clip_error(), file), "%s: error '%s' lacks '%s'", file,
              clip_error(), part);
}

static void test_fixtures(void)
{
    json_error_t err;
    json_t *exp = json_load_file(FIX "expected.json", 0, &err);
    CHECK(exp != NULL, "expected.json: %s", err.text);
    if (!exp) return;
    json_t *small = json_object_get(exp, "small");
    check_against(FIX "small.pth", small);
    check_against(FIX "small_legacy.pth", small);
    check_against(FIX "small.safetensors", small);
    check_against(FIX "small_be.pth", small);
    check_against(FIX "nested.pth", json_object_get(exp, "nested"));
    check_against(FIX "meta.pth", small);
    size_t n_small = json_array_size(small);
    json_decref(exp);

    ckpt *c = ckpt_load(FIX "small.safetensors");
    if (c) {
        CHECK(ckpt_metadata(c, "format") && !strcmp(ckpt_metadata(c, "format"), "pt"), "metadata");
        CHECK(ckpt_metadata(c, "note") && !strcmp(ckpt_metadata(c, "note"), "fixture"), "metadata");
        CHECK(ckpt_metadata(c, "nope") == NULL, "metadata");
        float buf[64];
        int64_t bad[2] = {3, 4};
        CHECK(ckpt_read_f32(c, "visual.proj", 2, bad, buf) < 0, "shape mismatch accepted");
        CHECK(has(clip_error(), "'visual.proj'") && has(clip_error(), "[4, 3]") &&
                  has(clip_error(), "[3, 4]"),
              "message: %s", clip_error());
        CHECK(ckpt_read_f32(c, "visual.proj", 1, bad, buf) < 0, "ndim mismatch accepted");
        CHECK(ckpt_read_f32(c, "no.such", 2, bad, buf) < 0 &&
                  has(clip_error(), "no tensor 'no.such'"),
              "missing: %s", clip_error());
        ckpt_free(c);
    }
    c = ckpt_load(FIX "legacy_view.pth");
    float w[2] = {0};
    int64_t two = 2;
    CHECK(c && ckpt_read_f32(c, "w", 1, &two, w) == 0 && w[0] == 3 && w[1] == 4,
          "legacy_view.pth: %s", clip_error());
    ckpt_free(c);
    c = ckpt_load(FIX "meta.pth"); /* small.pth + a clip-tools metadata member */
    CHECK(c && ckpt_count(c) == n_small && ckpt_metadata(c, "note") &&
              !strcmp(ckpt_metadata(c, "note"), "fixture") && !ckpt_metadata(c, "nope"),
          "meta.pth: %s", c ? "metadata" : clip_error());
    ckpt_free(c);
    c = ckpt_load(FIX "small.pth");
    CHECK(c && !ckpt_metadata(c, "note"), "small.pth has no metadata");
    ckpt_free(c);
    c = ckpt_load(FIX "ok_crafted.pth");
    CHECK(c && ckpt_count(c) == 1 && ckpt_tensor_at(c, 0)->numel == 6, "ok_crafted.pth: %s",
          clip_error());
    ckpt_free(c);
}

static void test_hostile_files(void)
{
    expect_error(FIX "evil_global.pth", "refusing to load global posix.system");
    expect_error(FIX "evil_legacy.pth", "refusing to load global posix.system");
    expect_error(FIX "bad_offset.pth", "lies outside its storage");
    expect_error(FIX "bad_stride.pth", "lies outside its storage");
    expect_error(FIX "bad_storage_size.pth", "member archive/data/0 has 20");
    expect_error(FIX "bad_key.pth", "no member archive/data/7");
    expect_error(FIX "bad_dims.pth", "at most 8 dims");
    expect_error(FIX "bad_root.pth", "not a dict of tensors");
    expect_error(FIX "bad_meta_json.pth", "archive/clip-tools/metadata.json is not valid JSON");
    expect_error(FIX "bad_meta_value.pth", "metadata 'heads' is not a string");
    expect_error(FIX "no_such_file.pth", "No such file");
    expect_error("tests/fixtures", "directory");
    char *p = tmp_path("empty");
    write_bytes(p, "", 0);
    expect_error(p, "empty file");
    p = tmp_path("text");
    write_bytes(p, "hello world, not a checkpoint\n", 30);
    expect_error(p, "not a checkpoint");
}

/* A safetensors file with the given header and `data` zero bytes after it. */
static void st_case(const char *header, size_t data, uint64_t hlen_override, const char *part)
{
    size_t hl = strlen(header), n = 8 + hl + data;
    unsigned char *b = xcalloc(1, n);
    uint64_t hlen = hlen_override ? hlen_override : hl;
    for (int i = 0; i < 8; i++) b[i] = hlen >> (8 * i);
    memcpy(b + 8, header, hl);
    char *p = tmp_path("case.safetensors");
    write_bytes(p, b, n);
    free(b);
    if (part) {
        expect_error(p, part);
    } else {
        ckpt *c = ckpt_load(p);
        CHECK(c != NULL, "%s: %s", header, clip_error());
        ckpt_free(c);
    }
}

static void test_hostile_safetensors(void)
{
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    st_case(ok, 8, 0, NULL);
    st_case(ok, 8, 1ull << 40, "header length");
    st_case(ok, 8, 1000, "header length");
    st_case("{not json}", 8, 0, "not valid JSON");
    st_case("[1, 2]", 0, 0, "not a checkpoint");
    st_case("{\"a\":[1, 2]}", 0, 0, "data_offsets");
    st_case(ok, 4, 0, "outside");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, 0, "outside");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, 0, "outside");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            12, 0, "overlap");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, 0, "data bytes");
    st_case("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, 0, "data bytes");
    st_case("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 8, 0,
            "unsupported dtype");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, 0,
            "invalid shape");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, 0,
            "invalid shape");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
            8, 0, "data bytes");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 8,
            0, "dims");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, 0, "data_offsets");
    st_case("{\"a\":5}", 8, 0, "data_offsets");
    st_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
            8, 0, "duplicate");
    st_case("{\"__metadata__\":{\"k\":1}}", 0, 0, "not a string");
    st_case("{\"__metadata__\":[]}", 0, 0, "not an object");
    st_case("{}", 0, 0, NULL);
}

static void truncations(const char *file)
{
    size_t n;
    char *b = read_file(file, &n);
    CHECK(b != NULL, "%s", clip_error());
    if (!b) return;
    /* a name no message contains by itself ("truncated" does), set afresh for every cut */
    const char *p = "cut-input";
    size_t loaded = 0;
    for (size_t k = 0; k < n; k++) {
        clip_clear_error();
        ckpt *c = ckpt_load_buffer(b, k, p);
        if (c) {
            if (!loaded) fprintf(stderr, "%s truncated to %zu bytes loads\n", file, k);
            loaded++;
            ckpt_free(c);
        } else if (strncmp(clip_error(), "cut-input: ", 11)) {
            CHECK(0, "%s at %zu: error does not start with the file's name: %s", file, k,
                  clip_error());
        }
    }
    CHECK(loaded == 0, "%s: %zu truncations loaded", file, loaded);
    free(b);
}

static void test_truncations(void)
{
    truncations(FIX "small.safetensors");
    truncations(FIX "small.pth");
    truncations(FIX "small_legacy.pth");
    truncations(FIX "nested.pth");
}

static int count_dir(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    if (d) closedir(d);
    return n;
}

static int same_tensors(const ckpt *a, const ckpt *b)
{
    if (ckpt_count(a) != ckpt_count(b)) return 0;
    for (size_t i = 0; i < ckpt_count(a); i++) {
        const ckpt_tensor *x = ckpt_tensor_at(a, i), *y = ckpt_find(b, x->name);
        if (!y || x->dtype != y->dtype || x->ndim != y->ndim ||
            memcmp(x->shape, y->shape, x->ndim * sizeof *x->shape) ||
            memcmp(x->data, y->data, x->numel * dtype_size(x->dtype))) {
            fprintf(stderr, "differs: %s\n", x->name);
            return 0;
        }
    }
    return 1;
}

static void test_round_trip(void)
{
    ckpt *c = ckpt_load(FIX "small.pth");
    CHECK(c != NULL, "round trip: %s", clip_error());
    if (!c) return;
    size_t n = ckpt_count(c);
    ckpt_out_tensor *out = ckpt_out_views(c);
    int files = count_dir(tmpdir);
    const char *meta[] = {"format", "pt", "epoch", "7", NULL};
    char *p = tmp_path("rt.safetensors");
    CHECK(ckpt_save_safetensors(p, out, n, meta) == 0, "%s", clip_error());
    ckpt *r = ckpt_load(p);
    CHECK(r && same_tensors(c, r), "safetensors round trip: %s", clip_error());
    CHECK(r && ckpt_metadata(r, "epoch") && !strcmp(ckpt_metadata(r, "epoch"), "7"),
          "metadata round trip");
    for (size_t i = 0; r && i < n; i++)
        CHECK((uintptr_t)ckpt_tensor_at(r, i)->data % dtype_size(ckpt_tensor_at(r, i)->dtype) == 0,
              "alignment");
    ckpt_free(r);
    p = tmp_path("rt.pth");
    CHECK(ckpt_save_pth(p, out, n, meta) == 0, "%s", clip_error());
    r = ckpt_load(p);
    CHECK(r && same_tensors(c, r), "pth round trip: %s", clip_error());
    CHECK(r && ckpt_metadata(r, "epoch") && !strcmp(ckpt_metadata(r, "epoch"), "7") &&
              ckpt_metadata(r, "format") && !ckpt_metadata(r, "nope"),
          "pth metadata round trip");
    for (size_t i = 0; r && i < n; i++)
        CHECK((uintptr_t)ckpt_tensor_at(r, i)->data % 64 == 0 || !ckpt_tensor_at(r, i)->numel,
              "pth: %s not 64-byte aligned in the map", ckpt_tensor_at(r, i)->name);
    ckpt_free(r);
    const char *bad_meta[] = {"note", "bad\xff utf-8", NULL};
    CHECK(ckpt_save_pth(tmp_path("badmeta.pth"), out, n, bad_meta) < 0 &&
              has(clip_error(), "UTF-8") && has(clip_error(), "badmeta.pth"),
          "invalid UTF-8 metadata: %s", clip_error());
    CHECK(count_dir(tmpdir) == files + 2, "temporary files left behind");
    truncations(p);

    /* errors: duplicate names, a missing directory, a write that fails (file size limit) */
    out[1].name = out[0].name;
    CHECK(ckpt_save_safetensors(tmp_path("dup.safetensors"), out, 2, NULL) < 0 &&
              has(clip_error(), "duplicate"),
          "duplicate names");
    CHECK(ckpt_save_pth(tmp_path("dup.pth"), out, 2, NULL) < 0, "duplicate names");
    out[1].name = "bad\xff utf-8";
    CHECK(ckpt_save_safetensors(tmp_path("utf8.safetensors"), out, 2, NULL) < 0 &&
              has(clip_error(), "UTF-8"),
          "invalid UTF-8: %s", clip_error());
    out[1].name = ckpt_tensor_at(c, 1)->name;
    CHECK(ckpt_save_safetensors("/nonexistent/dir/x.safetensors", out, n, NULL) < 0 &&
              has(clip_error(), "/nonexistent/dir/x.safetensors"),
          "missing dir: %s", clip_error());
    size_t big_n = 1 << 16;
    float *big = xcalloc(big_n, sizeof *big);
    ckpt_out_tensor bt = {"big", DT_F32, 1, {big_n}, big};
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);
    files = count_dir(tmpdir);
    int rc1 = ckpt_save_safetensors(tmp_path("full.safetensors"), &bt, 1, NULL);
    char msg1[1024];
    snprintf(msg1, sizeof msg1, "%s", clip_error());
    int rc2 = ckpt_save_pth(tmp_path("full.pth"), &bt, 1, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(rc1 < 0 && has(msg1, "full.safetensors"), "short write not reported: %s", msg1);
    CHECK(rc2 < 0 && has(clip_error(), "full.pth"), "short write not reported: %s", clip_error());
    CHECK(count_dir(tmpdir) == files, "failed writes left files behind");
    free(big);
    free(out);
    ckpt_free(c);
}

static void cleanup(void)
{
    DIR *d = opendir(tmpdir);
    for (struct dirent *e; d && (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(tmp_path(e->d_name));
    if (d) closedir(d);
    rmdir(tmpdir);
}

/* --write PATH: re-save small.pth as PATH (.pth or .safetensors) for
 * tests/ref/check_saved.py, which reads it back with torch.load; the .pth
 * carries a metadata member, which torch.load must ignore. */
static int write_copy(const char *path)
{
    ckpt *c = ckpt_load(FIX "small.pth");
    if (!c) die("%s", clip_error());
    size_t n = ckpt_count(c);
    ckpt_out_tensor *out = ckpt_out_views(c);
    size_t len = strlen(path);
    const char *meta[] = {"note", "test_checkpoint --write", NULL};
    int rc = len > 12 && !strcmp(path + len - 12, ".safetensors")
                 ? ckpt_save_safetensors(path, out, n, NULL)
                 : ckpt_save_pth(path, out, n, meta);
    if (rc < 0) die("%s", clip_error());
    free(out);
    ckpt_free(c);
    return 0;
}

/* ckpt_save picks the writer by the path's suffix: the file's first bytes
 * say which format was written. */
static void test_save_by_suffix(void)
{
    ckpt *c = ckpt_load(FIX "small.pth");
    CHECK(c != NULL, "save by suffix: %s", clip_error());
    if (!c) return;
    ckpt_out_tensor *out = ckpt_out_views(c);
    static const struct {
        const char *name;
        int zip;
    } cases[] = {{"s.safetensors", 0}, {"s.pth", 1}, {"s.pt", 1}, {"pytorch_model.bin", 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *p = tmp_path(cases[i].name);
        CHECK(ckpt_save(p, out, ckpt_count(c), NULL) == 0, "%s: %s", cases[i].name, clip_error());
        unsigned char head[9] = {0};
        FILE *f = fopen(p, "rb");
        size_t got = f ? fread(head, 1, sizeof head, f) : 0;
        if (f) fclose(f);
        int is_zip = got >= 4 && !memcmp(head, "PK\3\4", 4);
        int is_st = got == 9 && head[8] == '{';
        CHECK(cases[i].zip ? is_zip : is_st, "%s written as the wrong format", cases[i].name);
        ckpt *r = ckpt_load(p);
        CHECK(r && same_tensors(c, r), "%s: %s", cases[i].name, clip_error());
        ckpt_free(r);
    }
    clip_clear_error();
    CHECK(ckpt_save(tmp_path("s.ckpt"), out, ckpt_count(c), NULL) < 0 &&
              strstr(clip_error(), "s.ckpt") && strstr(clip_error(), ".safetensors"),
          "an unknown suffix is refused naming the file and the suffixes: %s", clip_error());
    free(out);
    ckpt_free(c);
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write")) return write_copy(argv[2]);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_checkpoint.XXXXXX");
    if (!mkdtemp(tmpdir)) die("mkdtemp failed");
    test_fixtures();
    test_hostile_files();
    test_hostile_safetensors();
    test_truncations();
    test_round_trip();
    test_save_by_suffix();
    cleanup();
    return unit_done();
}

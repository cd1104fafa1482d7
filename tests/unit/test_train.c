/* clip-train's step against PyTorch (tests/ref/train_ref.py, fixtures in
 * tests/fixtures/train): the same init, the same batches (file order, first
 * caption, no augmentation), AdamW steps with the cosine schedule and with
 * gradient clipping + constant lr. Checked: every parameter gradient of step
 * 1, the loss of every step (|diff| <= 2e-3, the bound), the lr,
 * logit_scale and gradient norm of every step, and every weight after the
 * last step. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "stream.h"
#include "train.h"
#include "unit.h"
#include "util.h"

#define FIX "tests/fixtures/train/"

enum { B = 4, N_SAMPLES = 12, R = 32, L = 12 };
static uint8_t pixels[N_SAMPLES][R * R * 3];
static int32_t ids[N_SAMPLES][L];
static double worst_grad, worst_weight;

static void load_data(void)
{
    sample_file *f = sample_file_open(FIX "train.tar");
    if (!f) die("%s", clip_error());
    if (sample_file_count(f) != N_SAMPLES) die("train.tar: expected %d samples", N_SAMPLES);
    sample s;
    sample_init(&s);
    for (int i = 0; i < N_SAMPLES; i++) {
        npy_array img, tok;
        sample_clear(&s);
        if (sample_file_read(f, i, &s) < 0 || sample_get_npy(&s, "img.npy", &img) ||
            sample_get_npy(&s, "tok.npy", &tok))
            die("%s", clip_error());
        if (img.count != R * R * 3 || tok.ndim != 2 || tok.shape[1] != L) die("train.tar: shapes");
        memcpy(pixels[i], img.data, sizeof pixels[i]);
        memcpy(ids[i], tok.data, sizeof ids[i]); /* the first caption */
    }
    sample_free(&s);
    sample_file_close(f);
}

static trainer *new_trainer(const train_config *cfg)
{
    clip_model *m = train_model_load(FIX "init.pth", FIX "bert");
    if (!m) die("%s", clip_error());
    return trainer_create(m, cfg, B, L);
}

/* max |got - want| <= rel * max |want| + abs_tol over the tensor, except
 * elements [skip_from, skip_to) */
static void check_range(const char *what, const char *name, const float *got, const ckpt *c,
                        double rel, double abs_tol, double *worst, size_t skip_from, size_t skip_to)
{
    const ckpt_tensor *t = ckpt_find(c, name);
    float *want = xmalloc(t->numel * sizeof(float));
    if (ckpt_read_f32(c, name, t->ndim, t->shape, want)) die("%s", clip_error());
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < t->numel; i++) {
        if (i >= skip_from && i < skip_to) continue;
        maxdiff = fmax(maxdiff, fabs((double)got[i] - want[i]));
        maxref = fmax(maxref, fabs((double)want[i]));
    }
    double ratio = maxdiff / (rel * maxref + abs_tol);
    if (ratio > *worst) *worst = ratio;
    CHECK(ratio <= 1.0, "%s %s: max abs diff %.3g, max |ref| %.3g", what, name, maxdiff, maxref);
    if (getenv("VERBOSE"))
        fprintf(stderr, "%s %s: max abs diff %.3g, max |ref| %.3g\n", what, name, maxdiff, maxref);
    free(want);
}

static void check_tensor(const char *what, const char *name, const float *got, const ckpt *c,
                         double rel, double abs_tol, double *worst)
{
    check_range(what, name, got, c, rel, abs_tol, worst, 0, 0);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

static void test_step1_grads(void)
{
    train_config cfg;
    train_config_defaults(&cfg);
    trainer *t = new_trainer(&cfg);
    ckpt *g = ckpt_load(FIX "grads_step1.pth");
    if (!g) die("%s", clip_error());
    CHECK(trainer_compute_grads(t, pixels[0], ids[0], B, L, NULL) == 0, "%s", clip_error());
    size_t checked = 0;
    for (size_t i = 0; i < ckpt_count(g); i++) {
        const ckpt_tensor *ref = ckpt_tensor_at(g, i);
        size_t n;
        const float *got = trainer_grad(t, ref->name, &n);
        CHECK(got && n == ref->numel, "gradient %s: missing in the trainer", ref->name);
        if (!got || n != ref->numel) continue;
        check_tensor("step-1 gradient", ref->name, got, g, 1e-3, 1e-7, &worst_grad);
        checked++;
    }
    /* every trainable tensor of the model has a reference gradient */
    const clip_model *m = trainer_model(t);
    size_t params = m->visual->ptable.n + m->bert->ptable.n + 1;
    CHECK(checked == params, "checked %zu gradients of %zu parameters", checked, params);
    ckpt_free(g);
    trainer_free(t);
}

static void run(const char *name, json_t *spec, int check_final)
{
    train_config cfg;
    train_config_defaults(&cfg);
    cfg.lr = json_real_value(json_object_get(spec, "lr"));
    cfg.weight_decay = json_real_value(json_object_get(spec, "wd"));
    cfg.warmup = json_integer_value(json_object_get(spec, "warmup"));
    cfg.total_steps = json_integer_value(json_object_get(spec, "steps"));
    cfg.schedule = strcmp(json_string_value(json_object_get(spec, "schedule")), "constant")
                       ? SCHEDULE_COSINE
                       : SCHEDULE_CONSTANT;
    json_t *clip = json_object_get(spec, "grad_clip");
    cfg.grad_clip = json_is_number(clip) ? json_number_value(clip) : 0;
    trainer *t = new_trainer(&cfg);
    for (long s = 0; s < cfg.total_steps; s++) {
        int b = (int)(s % (N_SAMPLES / B));
        train_stats st;
        int rc = trainer_step(t, pixels[b * B], ids[b * B], B, L, &st);
        CHECK(rc == 0, "%s step %ld: %d %s", name, s + 1, rc, clip_error());
        double loss = json_real_value(json_array_get(json_object_get(spec, "loss"), s));
        double lr = json_real_value(json_array_get(json_object_get(spec, "lr_used"), s));
        double ls = json_real_value(json_array_get(json_object_get(spec, "logit_scale"), s));
        double gn = json_real_value(json_array_get(json_object_get(spec, "grad_norm"), s));
        CHECK(fabs(st.loss - loss) <= 2e-3, "%s step %ld: loss %.6f, reference %.6f", name, s + 1,
              st.loss, loss);
        CHECK(fabs(st.lr - lr) <= 1e-9 * lr, "%s step %ld: lr %.9g, reference %.9g", name, s + 1,
              st.lr, lr);
        CHECK(fabs(st.logit_scale - ls) <= 1e-4, "%s step %ld: logit_scale %.6f, reference %.6f",
              name, s + 1, st.logit_scale, ls);
        CHECK(fabs(st.grad_norm - gn) <= 1e-3 * gn, "%s step %ld: grad norm %.5f, reference %.5f",
              name, s + 1, st.grad_norm, gn);
        if (getenv("VERBOSE"))
            fprintf(stderr, "%s step %ld: loss %.7f ref %.7f (diff %.2g), grad norm %.5f ref %.5f\n",
                    name, s + 1, st.loss, loss, st.loss - loss, st.grad_norm, gn);
    }
    if (check_final) {
        ckpt *f = ckpt_load(FIX "final.pth");
        if (!f) die("%s", clip_error());
        const clip_model *m = trainer_model(t);
        const param_table *tabs[2] = {&m->visual->ptable, &m->bert->ptable};
        /* The key bias cannot change the loss (softmax ignores a constant
         * added to a row of scores): its gradient is rounding noise (~1e-9)
         * which AdamW normalises into +-lr steps in either implementation,
         * so those elements are not compared. */
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < tabs[k]->n; i++) {
                const param_spec *ps = &tabs[k]->v[i];
                size_t from = 0, to = 0;
                if (ends_with(ps->name, "attn.in_proj_bias")) from = ps->numel / 3, to = 2 * from;
                if (ends_with(ps->name, "attention.self.key.bias")) to = ps->numel;
                check_range("weights after the run", ps->name, tabs[k]->data + ps->offset, f, 1e-4,
                            1e-5, &worst_weight, from, to);
            }
        check_tensor("weights after the run", "logit_scale", &m->logit_scale, f, 1e-5, 0, &worst_weight);
        ckpt_free(f);
    }
    trainer_free(t);
}

int main(void)
{
    load_data();
    test_step1_grads();
    json_error_t err;
    json_t *exp = json_load_file(FIX "expected.json", 0, &err);
    if (!exp) die("expected.json: %s", err.text);
    json_t *runs = json_object_get(exp, "runs");
    CHECK(json_integer_value(json_object_get(exp, "batch")) == B, "batch");
    run("cosine", json_object_get(runs, "cosine"), 1);
    run("clip", json_object_get(runs, "clip"), 0);
    json_decref(exp);
    printf("worst error / tolerance: step-1 gradients %.3f, final weights %.3f\n", worst_grad,
           worst_weight);
    return unit_done();
}

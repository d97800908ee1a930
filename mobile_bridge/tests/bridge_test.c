/* End-to-end test of the C ABI on a tiny GGUF pair. Built plain and with
 * -fsanitize=address,undefined (tests/test_mobile_bridge.py runs both).
 * usage: bridge_test TEXT.gguf MMPROJ.gguf OTHER_FAMILY_MMPROJ.gguf IMAGE.png [--quick]
 * --quick (the arm64 build under qemu-aarch64, where each image chunk costs seconds): bad input,
 * the prefill-ahead checks and both greedy replies that are compared across builds; the rest
 * (threads, cancel, encoder-hook failures, budgets' encodes, video frames) only without it. */
#include "minicpmv_edge.h"
#include "check.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n;
    size_t bytes;
    mcv_session *s;
    int busy_rc;
    atomic_int *reached, *cancelled;
} gen_state;

static int on_token(const char *piece, size_t len, void *user) {
    gen_state *g = (gen_state *)user;
    (void)piece;
    g->n++;
    g->bytes += len;
    if (g->s && g->n == 1) g->busy_rc = mcv_session_add_text(g->s, MCV_ROLE_USER, "re-entrant");
    if (g->reached && g->n == 3) {
        atomic_store(g->reached, 1);
        while (!atomic_load(g->cancelled)) sched_yield(); /* the other thread cancels now */
    }
    return 0;
}

static void *canceller(void *arg) {
    gen_state *g = (gen_state *)arg;
    while (!atomic_load(g->reached)) sched_yield();
    mcv_session_cancel(g->s);
    atomic_store(g->cancelled, 1);
    return NULL;
}

static void test_bad_input(const char *text, const char *mmproj, const char *other_mmproj, const char *image) {
    mcv_model *m = (mcv_model *)0x1;
    mcv_session *s = (mcv_session *)0x1;
    CHECK_RC(mcv_model_load(NULL, mmproj, NULL, &m), MCV_ERR_INVALID_ARG);
    CHECK(m == NULL);
    CHECK(strlen(mcv_last_error()) > 0);
    CHECK_RC(mcv_model_load(text, mmproj, NULL, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_model_load("/nonexistent/model.gguf", NULL, NULL, &m), MCV_ERR_IO);
    CHECK_RC(mcv_model_load(text, "/nonexistent/mmproj.gguf", NULL, &m), MCV_ERR_IO);
    CHECK_RC(mcv_model_load(mmproj, NULL, NULL, &m), MCV_ERR_MODEL_LOAD); /* a projector is no text model */
    CHECK_RC(mcv_model_load(text, image, NULL, &m), MCV_ERR_MMPROJ_LOAD); /* a PNG is no projector */
    CHECK_RC(mcv_model_load(text, other_mmproj, NULL, &m), MCV_ERR_MISMATCH);
    CHECK(strstr(mcv_last_error(), "projector") != NULL);
    mcv_model_params p;
    mcv_model_params_init(&p);
    p.struct_size = 8;
    CHECK_RC(mcv_model_load(text, mmproj, &p, &m), MCV_ERR_INVALID_ARG);
    CHECK(strstr(mcv_last_error(), "struct_size") != NULL);
    CHECK_RC(mcv_model_free(NULL), MCV_OK);
    CHECK_RC(mcv_session_free(NULL), MCV_OK);
    CHECK_RC(mcv_session_create(NULL, &s), MCV_ERR_INVALID_ARG);
    CHECK(s == NULL);
    CHECK_RC(mcv_session_add_text(NULL, MCV_ROLE_USER, "x"), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_image_file(NULL, image), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_image_bytes(NULL, (const uint8_t *)"x", 1), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_image_rgb(NULL, (const uint8_t *)"xxx", 1, 1, 3), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_generate(NULL, NULL, on_token, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_begin(NULL, NULL), MCV_ERR_INVALID_ARG);
    size_t n = 0;
    char buf[8];
    CHECK_RC(mcv_session_next(NULL, buf, sizeof buf, &n), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_stats(NULL, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_reset(NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prompt_text(NULL, 0, NULL), MCV_ERR_INVALID_ARG);
    mcv_session_cancel(NULL);
    mcv_string_free(NULL);
    CHECK(mcv_model_meta(NULL, "x", buf, sizeof buf) == -1);
    CHECK(strcmp(mcv_status_string(12345), "unknown status") == 0);
}

static void test_session(mcv_model *m, const char *image) {
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s) return;
    /* bad images: error code, session still usable */
    CHECK_RC(mcv_session_add_image_bytes(s, (const uint8_t *)"not an image at all", 19), MCV_ERR_IMAGE);
    static const uint8_t fake_png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
    CHECK_RC(mcv_session_add_image_bytes(s, fake_png, sizeof fake_png), MCV_ERR_IMAGE);
    CHECK_RC(mcv_session_add_image_bytes(s, NULL, 10), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_image_file(s, "/nonexistent.png"), MCV_ERR_IO);
    uint8_t rgb[32 * 24 * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 7);
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, 32, 24, 10), MCV_ERR_INVALID_ARG); /* stride < 3*w */
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, 0, 24, 96), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_text(s, (mcv_role)7, "x"), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, NULL), MCV_ERR_INVALID_ARG);
    char *txt = NULL;
    CHECK_RC(mcv_session_prompt_text(s, 0, &txt), MCV_OK);
    CHECK(txt && txt[0] == '\0'); /* failed adds leave no trace */
    mcv_string_free(txt);

    /* image + question, callback generation */
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_SYSTEM, "You are terse."), MCV_OK);
    CHECK_RC(mcv_session_add_image_file(s, image), MCV_OK);
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "What is in the image?"), MCV_OK);
    mcv_gen_params gp;
    mcv_gen_params_init(&gp);
    gp.max_tokens = 8;
    gen_state g = {0, 0, s, 0, NULL, NULL};
    CHECK_RC(mcv_session_generate(s, &gp, on_token, &g), MCV_OK);
    CHECK(g.busy_rc == MCV_ERR_BUSY); /* re-entrant call from the callback is refused */
    mcv_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK_RC(mcv_session_stats(s, &st), MCV_OK);
    CHECK(st.n_images == 1);
    CHECK(st.n_ctx_used > 64);
    CHECK(st.n_decode_tokens >= 1 && st.n_decode_tokens <= 8);
    CHECK(st.image_encode_ms > 0);
    printf("generate: %d pieces, %zu bytes, finish %d, encode %.1f ms, prefill %.0f tok/s, decode %.0f tok/s\n", g.n,
           g.bytes, st.finish_reason, st.image_encode_ms, st.prefill_tok_per_s, st.decode_tok_per_s);

    /* second turn, raw RGB image, pull style with a tiny buffer */
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, 32, 24, 96), MCV_OK);
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "And this one?"), MCV_OK);
    size_t nn = 0;
    CHECK_RC(mcv_session_next(s, NULL, 0, &nn), MCV_ERR_STATE); /* no begin yet */
    gp.max_tokens = 6;
    CHECK_RC(mcv_session_begin(s, &gp), MCV_OK);
    int pieces = 0, rc;
    for (;;) {
        char small[2];
        size_t n = 0;
        rc = mcv_session_next(s, small, sizeof small, &n);
        if (rc == MCV_ERR_BUFFER_TOO_SMALL) {
            char *big = malloc(n);
            rc = mcv_session_next(s, big, n, &n);
            free(big);
        }
        if (rc != MCV_OK) break;
        pieces++;
        char *alloc = NULL;
        rc = mcv_session_next_alloc(s, &alloc);
        if (rc != MCV_OK) break;
        mcv_string_free(alloc);
        pieces++;
    }
    CHECK_RC(rc, MCV_DONE);
    CHECK(pieces >= 1);

    /* cancel from another thread in the middle of a reply */
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "Tell a long story."), MCV_OK);
    atomic_int reached = 0, cancelled = 0;
    gen_state g2 = {0, 0, NULL, 0, &reached, &cancelled};
    g2.s = NULL;
    pthread_t th;
    gen_state targ = g2;
    targ.s = s;
    pthread_create(&th, NULL, canceller, &targ);
    gp.max_tokens = 0; /* until the context is full: only the cancel can stop it early */
    rc = mcv_session_generate(s, &gp, on_token, &g2);
    pthread_join(th, NULL);
    CHECK_RC(rc, MCV_ERR_CANCELLED);
    CHECK(g2.n == 3);
    CHECK_RC(mcv_session_stats(s, &st), MCV_OK);
    CHECK(st.finish_reason == MCV_FINISH_CANCELLED);

    /* the session goes on after a cancel, and reset forgets everything */
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "Short answer please."), MCV_OK);
    gp.max_tokens = 3;
    gen_state g3 = {0, 0, NULL, 0, NULL, NULL};
    CHECK_RC(mcv_session_generate(s, &gp, on_token, &g3), MCV_OK);
    CHECK_RC(mcv_session_reset(s), MCV_OK);
    CHECK_RC(mcv_session_stats(s, &st), MCV_OK);
    CHECK(st.n_ctx_used == 0 && st.n_images == 0);
    CHECK_RC(mcv_session_prompt_text(s, 0, &txt), MCV_OK);
    CHECK(txt && txt[0] == '\0');
    mcv_string_free(txt);

    /* a second session of the same model, alive at the same time */
    mcv_session *s2 = NULL;
    CHECK_RC(mcv_session_create(m, &s2), MCV_OK);
    CHECK_RC(mcv_session_add_image_file(s2, image), MCV_OK);
    CHECK_RC(mcv_session_add_text(s2, MCV_ROLE_USER, "Describe."), MCV_OK);
    gen_state g4 = {0, 0, NULL, 0, NULL, NULL};
    gp.max_tokens = 4;
    CHECK_RC(mcv_session_generate(s2, &gp, on_token, &g4), MCV_OK);
    CHECK_RC(mcv_model_free(m), MCV_ERR_STATE); /* sessions still alive: refused, nothing freed */
    CHECK_RC(mcv_session_free(s2), MCV_OK);
    CHECK_RC(mcv_session_free(s), MCV_OK);
}

/* External encoder hook (0.2): hands every chunk back to mtmd (so the reply must equal the
 * default path's), checks the geometry it is given, and fails on request. */
typedef struct {
    int calls, fail_at, bad, busy_rc;
    mcv_session *s;
} enc_state;

static int on_encode(void *user, const mcv_slice_info *info, const float *pixels, float *out, size_t n) {
    enc_state *e = (enc_state *)user;
    if (info->struct_size != sizeof(mcv_slice_info) || info->chunk_index != e->calls || pixels != NULL ||
        !out || n != (size_t)info->n_tokens * (size_t)info->n_embd || !info->image_rgb ||
        info->width % info->patch_size || info->height % info->patch_size || info->n_chunks < 1 ||
        (info->n_chunks > 1) != (info->grid_cols * info->grid_rows == info->n_chunks - 1))
        e->bad++;
    e->busy_rc = mcv_session_add_text(e->s, MCV_ROLE_USER, "re-entrant");
    e->calls++;
    return info->chunk_index == e->fail_at ? -42 : MCV_ENCODE_USE_DEFAULT;
}

static void reply_with(mcv_model *m, const uint8_t *rgb, int w, int h, enc_state *e, char *out, size_t cap) {
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s) return;
    if (e) {
        e->s = s;
        CHECK_RC(mcv_session_set_encoder(s, on_encode, e), MCV_OK);
    }
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, w, h, 3 * w), MCV_OK);
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "What is it?"), MCV_OK);
    mcv_gen_params gp;
    mcv_gen_params_init(&gp);
    gp.max_tokens = 6;
    CHECK_RC(mcv_session_begin(s, &gp), MCV_OK);
    size_t used = 0, n = 0;
    while (mcv_session_next(s, out + used, cap - used, &n) == MCV_OK) used += n;
    out[used] = '\0';
    CHECK_RC(mcv_session_free(s), MCV_OK);
}

static void test_encoder_hook(mcv_model *m, int quick) {
    enum { W = 600, H = 500 };
    static uint8_t rgb[W * H * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)((i * 2654435761u) >> 24);
    char base[512], hooked[512];
    enc_state e = {0, -1, 0, 0, NULL};
    reply_with(m, rgb, W, H, NULL, base, sizeof base);
    printf("greedy-sliced "); /* compared across builds (x86-64 vs arm64 under qemu) */
    for (const char *c = base; *c; c++) printf("%02x", (unsigned char)*c);
    printf("\n");
    if (quick) return;
    reply_with(m, rgb, W, H, &e, hooked, sizeof hooked);
    CHECK(e.calls > 1 && e.bad == 0 && e.busy_rc == MCV_ERR_BUSY);
    CHECK(strcmp(base, hooked) == 0);
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s) return;
    enc_state f = {0, 1, 0, 0, s};
    CHECK_RC(mcv_session_set_encoder(s, on_encode, &f), MCV_OK);
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, W, H, 3 * W), MCV_ERR_DECODE);
    CHECK(strstr(mcv_session_errmsg(s), "chunk 1") != NULL && f.calls == 2);
    char *txt = NULL;
    CHECK_RC(mcv_session_prompt_text(s, 0, &txt), MCV_OK);
    CHECK(txt && txt[0] == '\0');
    mcv_string_free(txt);
    CHECK_RC(mcv_session_set_encoder(s, NULL, NULL), MCV_OK);
    CHECK_RC(mcv_session_add_image_rgb(s, rgb, W, H, 3 * W), MCV_OK);
    CHECK_RC(mcv_session_set_encoder(NULL, on_encode, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_free(s), MCV_OK);
}

int failures = 0;

int main(int argc, char **argv) {
    const int quick = argc == 6 && strcmp(argv[5], "--quick") == 0;
    if (argc < 5 || (argc == 6 && !quick) || argc > 6) {
        fprintf(stderr, "usage: %s TEXT.gguf MMPROJ.gguf OTHER_MMPROJ.gguf IMAGE.png [--quick]\n", argv[0]);
        return 2;
    }
    mcv_set_log_callback(NULL, NULL); /* silence llama.cpp */
    CHECK(mcv_abi_version() == MCV_ABI_VERSION);
    CHECK(mcv_version_number() == MCV_VERSION_NUMBER);
    CHECK(strcmp(mcv_version(), MCV_VERSION_STRING) == 0);
    test_bad_input(argv[1], argv[2], argv[3], argv[4]);

    mcv_model_params p;
    mcv_model_params_init(&p);
    p.n_ctx = 1024;
    p.n_threads = 2;
    mcv_model *m = NULL;
    CHECK_RC(mcv_model_load(argv[1], argv[2], &p, &m), MCV_OK);
    if (!m) return 1;
    char fam[64];
    CHECK(mcv_model_meta(m, "minicpmv_edge.family", fam, sizeof fam) > 0);
    CHECK(mcv_model_has_vision(m) == 1);
    if (!quick) test_session(m, argv[4]);
    test_encoder_hook(m, quick);
    test_prefill(m, argv[4], fam, quick);
    CHECK_RC(mcv_model_free(m), MCV_OK);
    printf("%s: %d failure(s)%s\n", fam, failures, quick ? " (--quick)" : "");
    return failures ? 1 : 0;
}

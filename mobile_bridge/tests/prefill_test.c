/* The app-shaped calls (0.3): prefill ahead of the question, per-image budgets, the token cost
 * before encoding, video frames, cancelling a prefill. Part of bridge_test (check.h). */
#include <stdlib.h>
#include <string.h>

#include "check.h"

static mcv_stats stats_of(mcv_session *s) {
    mcv_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CHECK_RC(mcv_session_stats(s, &st), MCV_OK);
    return st;
}

typedef struct {
    char text[1024];
    size_t n;
} reply_buf;

static int collect(const char *piece, size_t len, void *user) {
    reply_buf *r = (reply_buf *)user;
    if (r->n + len < sizeof r->text) {
        memcpy(r->text + r->n, piece, len);
        r->n += len;
        r->text[r->n] = '\0';
    }
    return 0;
}

static void greedy(mcv_session *s, int max_tokens, reply_buf *r) {
    mcv_gen_params gp;
    mcv_gen_params_init(&gp);
    gp.max_tokens = max_tokens;
    memset(r, 0, sizeof *r);
    CHECK_RC(mcv_session_generate(s, &gp, collect, r), MCV_OK);
}

static void print_hex(const char *label, const reply_buf *r) { /* compared across builds (x86-64 vs arm64) */
    printf("%s ", label);
    for (size_t i = 0; i < r->n; i++) printf("%02x", (unsigned char)r->text[i]);
    printf("\n");
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* The question after a prefilled image costs only its own tokens, and the reply is the one the
 * all-at-once path gives. */
static void test_prefill_ahead(mcv_model *m, const char *image) {
    mcv_session *a = NULL, *b = NULL;
    CHECK_RC(mcv_session_create(m, &a), MCV_OK);
    CHECK_RC(mcv_session_create(m, &b), MCV_OK);
    if (!a || !b) return;
    const char *q = "What is in the image?";

    /* cold: conversation built, then evaluated at generate (the image is encoded by add_image) */
    CHECK_RC(mcv_session_add_text(b, MCV_ROLE_SYSTEM, "You are terse."), MCV_OK);
    CHECK_RC(mcv_session_add_image_file(b, image), MCV_OK);
    CHECK_RC(mcv_session_add_text(b, MCV_ROLE_USER, q), MCV_OK);
    reply_buf cold;
    greedy(b, 12, &cold);

    /* ahead: system text and image prefilled, then the question */
    CHECK_RC(mcv_session_prefill_text(a, MCV_ROLE_SYSTEM, "You are terse."), MCV_OK);
    mcv_stats st = stats_of(a);
    CHECK(st.n_ctx_used > 0 && st.n_encoded_chunks == 0);
    int32_t after_text = st.n_ctx_used;
    mcv_image_cost cost;
    memset(&cost, 0, sizeof cost);
    cost.struct_size = sizeof cost;
    CHECK_RC(mcv_session_image_cost(a, 400, 300, NULL, &cost), MCV_OK);
    CHECK(cost.n_chunks == 1 && cost.width == 400 && cost.height == 300 && cost.grid_cols == 0);
    CHECK(cost.n_embd_rows > 0 && cost.n_tokens >= cost.n_embd_rows);
    CHECK_RC(mcv_session_prefill_image_file(a, image, NULL), MCV_OK);
    st = stats_of(a);
    CHECK(st.n_images == 1 && st.n_encoded_chunks == cost.n_chunks && st.last_image_n_chunks == cost.n_chunks);
    CHECK(st.last_image_encode_ms > 0 && st.last_image_ms >= st.last_image_encode_ms);
    CHECK(st.last_image_n_tokens == cost.n_tokens); /* the cost was exact */
    CHECK(st.n_ctx_used > after_text + cost.n_tokens);  /* + the user turn's prefix */
    const double encode_ms = st.image_encode_ms;
    const int32_t before_q = st.n_ctx_used;

    CHECK_RC(mcv_session_add_text(a, MCV_ROLE_USER, q), MCV_OK);
    reply_buf ahead;
    greedy(a, 12, &ahead);
    st = stats_of(a);
    /* the reply evaluated the question (+ turn end + assistant prefix) only: no image, no encoder */
    CHECK(st.n_prefill_tokens > 0 && st.n_prefill_tokens < cost.n_tokens / 2);
    CHECK(st.n_encoded_chunks == cost.n_chunks && st.image_encode_ms == encode_ms);
    CHECK(st.n_ctx_used >= before_q + st.n_prefill_tokens);
    CHECK(st.decode_ms >= 0 && st.ttft_ms > 0);
    mcv_stats cst = stats_of(b);
    CHECK(cst.n_prefill_tokens == st.n_prefill_tokens); /* add_image always prefilled the image too */
    CHECK(strcmp(cold.text, ahead.text) == 0);
    print_hex("greedy-prefill", &ahead);
    printf("prefill ahead: image %d positions in %.1f ms (encode %.1f ms); question %d tokens, ttft %.1f ms\n",
           cost.n_tokens, st.last_image_ms, st.last_image_encode_ms, st.n_prefill_tokens, st.ttft_ms);

    /* the same prompt bytes either way */
    char *pa = NULL, *pb = NULL;
    CHECK_RC(mcv_session_prompt_text(a, 1, &pa), MCV_OK);
    CHECK_RC(mcv_session_prompt_text(b, 1, &pb), MCV_OK);
    CHECK(pa && pb && strcmp(pa, pb) == 0);
    mcv_string_free(pa);
    mcv_string_free(pb);

    /* a second prefilled image in the next turn: its cost (with the next image id) is exact too */
    CHECK_RC(mcv_session_image_cost(a, 400, 300, NULL, &cost), MCV_OK);
    CHECK_RC(mcv_session_prefill_image_file(a, image, NULL), MCV_OK);
    st = stats_of(a);
    CHECK(st.n_images == 2 && st.last_image_n_tokens == cost.n_tokens);
    /* reset is "clear the conversation": nothing left, counters zero */
    CHECK_RC(mcv_session_reset(a), MCV_OK);
    st = stats_of(a);
    CHECK(st.n_ctx_used == 0 && st.n_images == 0 && st.n_encoded_chunks == 0 && st.last_image_n_tokens == 0);
    CHECK_RC(mcv_session_free(a), MCV_OK);
    CHECK_RC(mcv_session_free(b), MCV_OK);
}

/* max_slices / max_pixels per image, reported before and obeyed by the encode */
static void test_budgets(mcv_model *m, int quick) {
    enum { W = 1344, H = 896 };
    uint8_t *rgb = calloc((size_t)W * H * 3, 1);
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s || !rgb) return;
    for (size_t i = 0; i < (size_t)W * H * 3; i++) rgb[i] = (uint8_t)((i * 2654435761u) >> 24);
    mcv_image_params ip;
    mcv_image_params_init(&ip);
    CHECK(ip.struct_size == sizeof ip && ip.max_slices == 0 && ip.max_pixels == 0 && ip.video_frame == 0);
    mcv_image_cost full, four, one, small;
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    four = one = small = full;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &full), MCV_OK);
    ip.max_slices = 4;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &four), MCV_OK);
    ip.max_slices = 1;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &one), MCV_OK);
    ip.max_slices = 0;
    ip.max_pixels = 300 * 200;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &small), MCV_OK);
    CHECK(full.n_chunks > four.n_chunks && four.n_chunks > one.n_chunks && one.n_chunks == 1);
    CHECK(four.n_chunks <= 5 && full.grid_cols * full.grid_rows == full.n_chunks - 1);
    CHECK(full.n_tokens > four.n_tokens && four.n_tokens > one.n_tokens);
    CHECK(one.width <= 448 && one.height <= 448 && one.grid_cols == 0);
    CHECK((int64_t)small.width * small.height <= 300 * 200 && small.n_chunks == 1);
    printf("cost of %dx%d: %d chunks/%d positions; max_slices 4: %d/%d; 1: %d/%d\n", W, H, full.n_chunks,
           full.n_tokens, four.n_chunks, four.n_tokens, one.n_chunks, one.n_tokens);

    /* the encode obeys the per-image budget and its cost (2 slices: 3 encoder runs, not 7) */
    mcv_image_cost two = full;
    ip.max_slices = 2;
    ip.max_pixels = 0;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &two), MCV_OK);
    CHECK(two.n_chunks == 3 && two.n_chunks < full.n_chunks);
    if (!quick) {
        CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, &ip), MCV_OK);
        mcv_stats st = stats_of(s);
        CHECK(st.last_image_n_chunks == two.n_chunks && st.last_image_n_tokens == two.n_tokens);
        CHECK(st.n_encoded_chunks == two.n_chunks);
    }

    /* refused, conversation unchanged */
    char *before = NULL, *after = NULL;
    CHECK_RC(mcv_session_prompt_text(s, 0, &before), MCV_OK);
    ip.max_slices = 99;
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, &ip), MCV_ERR_UNSUPPORTED);
    CHECK(strstr(mcv_session_errmsg(s), "max_slices") != NULL);
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &full), MCV_ERR_UNSUPPORTED);
    ip.max_slices = 0;
    ip.video_frame = 7;
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, &ip), MCV_ERR_INVALID_ARG);
    ip.video_frame = 0;
    ip.struct_size = 4;
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, &ip), MCV_ERR_INVALID_ARG);
    CHECK(strstr(mcv_session_errmsg(s), "struct_size") != NULL);
    full.struct_size = 4;
    CHECK_RC(mcv_session_image_cost(s, W, H, NULL, &full), MCV_ERR_INVALID_ARG);
    full.struct_size = sizeof full;
    CHECK_RC(mcv_session_image_cost(s, 0, H, NULL, &full), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_image_cost(s, W, H, NULL, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_image(s, NULL, 10, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_image(s, (const uint8_t *)"garbage!", 8, NULL), MCV_ERR_IMAGE);
    CHECK_RC(mcv_session_prefill_image_file(s, "/nonexistent.png", NULL), MCV_ERR_IO);
    CHECK_RC(mcv_session_prefill_image_file(s, NULL, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_text(s, MCV_ROLE_USER, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_text(s, (mcv_role)9, "x"), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_video_frame(s, rgb, W, H, 2), MCV_ERR_INVALID_ARG); /* stride < 3 * width */
    CHECK_RC(mcv_session_prompt_text(s, 0, &after), MCV_OK);
    CHECK(before && after && strcmp(before, after) == 0);
    mcv_string_free(before);
    mcv_string_free(after);
    CHECK_RC(mcv_session_prefill_text(NULL, MCV_ROLE_USER, "x"), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_image(NULL, rgb, 1, NULL), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_prefill_video_frame(NULL, rgb, 1, 1, 3), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_image_cost(NULL, 1, 1, NULL, &full), MCV_ERR_INVALID_ARG);
    CHECK_RC(mcv_session_free(s), MCV_OK);
    free(rgb);
}

/* Video frames: unsliced, not counted as images; cost matches. One video = consecutive frames:
 * back to back (4.6's one <|video_pad|> per video, `joined`), else separated like image parts; no
 * ids either way (video_use_image_id is off for every family: the model cards' video call). */
static void test_video_frames(mcv_model *m, int uses_ids, int joined) {
    enum { W = 640, H = 480 }; /* sliced as an image; one chunk as a frame */
    uint8_t *rgb = malloc((size_t)W * H * 3);
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s || !rgb) return;
    for (size_t i = 0; i < (size_t)W * H * 3; i++) rgb[i] = (uint8_t)(i * 13);
    mcv_image_params ip;
    mcv_image_params_init(&ip);
    ip.video_frame = 1;
    mcv_image_cost cost;
    memset(&cost, 0, sizeof cost);
    cost.struct_size = sizeof cost;
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &cost), MCV_OK);
    CHECK(cost.n_chunks == 1);
    CHECK_RC(mcv_session_prefill_video_frame(s, rgb, W, H, W * 3), MCV_OK);
    mcv_stats st = stats_of(s);
    CHECK(st.last_image_n_tokens == cost.n_tokens && st.last_image_n_chunks == 1);
    CHECK_RC(mcv_session_image_cost(s, W, H, &ip, &cost), MCV_OK); /* continuing frame: no id */
    CHECK_RC(mcv_session_prefill_video_frame(s, rgb, W, H, W * 3), MCV_OK);
    st = stats_of(s);
    CHECK(st.last_image_n_tokens == cost.n_tokens);
    /* a second video right after the first (video_frame = 2), then text and an image */
    ip.video_frame = 2;
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, &ip), MCV_OK);
    CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "Describe the videos."), MCV_OK);
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, 64, 48, 64 * 3, NULL), MCV_OK);
    st = stats_of(s);
    CHECK(st.n_video_frames == 3 && st.n_images == 1 && st.n_encoded_chunks == 4);
    char *txt = NULL;
    CHECK_RC(mcv_session_prompt_text(s, 0, &txt), MCV_OK);
    CHECK(txt && count(txt, "<__media__>") == 4);
    if (!uses_ids)
        CHECK(txt && count(txt, "image_id") == 0);
    else if (joined) /* two videos, then image 0 */
        CHECK(txt && strstr(txt, "<__media__><__media__>\n<__media__>\nDescribe") && count(txt, "<image_id>") == 1 &&
              strstr(txt, "<image_id>0</image_id><__media__>"));
    else /* frames like parts, no ids; the image has id 0 */
        CHECK(txt && count(txt, "<__media__>\n<__media__>\n<__media__>\nDescribe") == 1 &&
              count(txt, "<image_id>") == 1 && strstr(txt, "<image_id>0</image_id><__media__>"));
    mcv_string_free(txt);
    reply_buf r;
    greedy(s, 4, &r);
    CHECK_RC(mcv_session_free(s), MCV_OK);
    free(rgb);
}

/* mcv_session_cancel stops a prefill between image chunks; the conversation is as before. */
typedef struct {
    mcv_session *s;
    int calls;
} cancel_state;

static int cancel_at_chunk_1(void *user, const mcv_slice_info *info, const float *pixels, float *out, size_t n) {
    cancel_state *c = (cancel_state *)user;
    (void)pixels, (void)out, (void)n;
    c->calls++;
    if (info->chunk_index == 1) mcv_session_cancel(c->s); /* as a UI thread would, mid-image */
    return MCV_ENCODE_USE_DEFAULT;
}

static void test_cancel_prefill(mcv_model *m, int recurrent) {
    enum { W = 600, H = 500 }; /* overview + 2 slices */
    uint8_t *rgb = calloc((size_t)W * H * 3, 1);
    mcv_session *s = NULL;
    CHECK_RC(mcv_session_create(m, &s), MCV_OK);
    if (!s || !rgb) return;
    CHECK_RC(mcv_session_prefill_text(s, MCV_ROLE_USER, "First this text."), MCV_OK);
    mcv_stats st0 = stats_of(s);
    char *before = NULL, *after = NULL;
    CHECK_RC(mcv_session_prompt_text(s, 0, &before), MCV_OK);
    cancel_state c = {s, 0};
    CHECK_RC(mcv_session_set_encoder(s, cancel_at_chunk_1, &c), MCV_OK);
    CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, NULL), MCV_ERR_CANCELLED);
    CHECK(c.calls == 2); /* overview + slice 1, then stopped: not every slice */
    if (recurrent) { /* recurrent state (4.6) cannot be cut back to a position > 0: reset asked for */
        CHECK_RC(mcv_session_add_text(s, MCV_ROLE_USER, "x"), MCV_ERR_STATE);
        CHECK_RC(mcv_session_reset(s), MCV_OK);
    }
    CHECK_RC(mcv_session_set_encoder(s, NULL, NULL), MCV_OK);
    mcv_stats st = stats_of(s);
    CHECK(st.n_images == 0 && st.n_encoded_chunks == 0);
    if (!recurrent) { /* attention-only KV: cut back exactly, the session goes on */
        CHECK(st.n_ctx_used == st0.n_ctx_used);
        CHECK_RC(mcv_session_prompt_text(s, 0, &after), MCV_OK);
        CHECK(before && after && strcmp(before, after) == 0);
        mcv_string_free(after);
        CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, NULL), MCV_OK);
    } else {
        CHECK(st.n_ctx_used == 0);
        CHECK_RC(mcv_session_prefill_image_rgb(s, rgb, W, H, W * 3, NULL), MCV_OK);
    }
    mcv_string_free(before);
    CHECK_RC(mcv_session_free(s), MCV_OK);
    free(rgb);
}

void test_prefill(mcv_model *m, const char *image, const char *family, int quick) {
    char ids[8] = "", video[64] = "";
    mcv_model_meta(m, "minicpmv_edge.prompt.use_image_id", ids, sizeof ids);
    mcv_model_meta(m, "minicpmv_edge.prompt.video_placeholder", video, sizeof video);
    test_prefill_ahead(m, image);
    test_budgets(m, quick);
    if (quick) return;
    test_video_frames(m, strcmp(ids, "true") == 0 || strcmp(ids, "1") == 0, video[0] != 0);
    test_cancel_prefill(m, strcmp(family, "minicpmv-4.6") == 0);
}

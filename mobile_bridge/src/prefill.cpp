// App-shaped calls: images, video frames and text evaluated into the KV cache ahead of the
// question, per-image slice budgets, and an image's token cost before it is encoded.
#include "internal.h"

#include "mtmd-helper.h"

#include <cstddef>
#include <cstring>
#include <fstream>
#include <iterator>

using namespace mcv;

namespace {
// The conversation-text fields a prefill touches; restored when it fails (the KV cache is rolled
// back by eval_pending / rollback).
struct Snapshot {
    std::string pending;
    size_t evaluated_size, content_at, frame_end;
    int open_role, open_parts, last_role;
    bool reply_open, content_started;
    explicit Snapshot(const mcv_session *s)
        : pending(s->pending), evaluated_size(s->evaluated.size()), content_at(s->content_at),
          frame_end(s->frame_end), open_role(s->open_role), open_parts(s->open_parts), last_role(s->last_role),
          reply_open(s->reply_open), content_started(s->content_started) {}
    void restore(mcv_session *s) const {
        s->pending = pending;
        s->evaluated.resize(evaluated_size);
        s->content_at = content_at;
        s->frame_end = frame_end;
        s->open_role = open_role;
        s->open_parts = open_parts;
        s->last_role = last_role;
        s->reply_open = reply_open;
        s->content_started = content_started;
    }
};

// Whether a frame continues the video that the latest frame began: nothing was added since, and the
// family writes a video as one placeholder (frames back to back, no separator, no id).
bool continues_video(const mcv_session *s, const ImageRequest &req) {
    return req.video_frame && !req.new_video && s->model->video_frames_joined && s->open_role == MCV_ROLE_USER &&
           !s->reply_open && s->frame_end == s->evaluated.size() + s->pending.size();
}

// The text an image or frame adds at its own position (edge_runtime/prompt.py _place_media): an
// image its <image_id> + marker; a frame the marker, behind the video's <image_id> only when it
// opens a video of a family that numbers videos (video_use_image_id).
std::string placeholder(const mcv_session *s, const ImageRequest &req, bool continues) {
    const PromptFormat &f = s->model->fmt;
    const std::string &marker = s->model->marker;
    if (!req.video_frame) return f.image_placeholder(marker, s->n_images);
    if (continues || !s->model->video_frames_joined || !s->model->video_use_image_id || !f.use_image_id) return marker;
    return format_field(f.image_id_template, "id", std::to_string(s->n_videos)) + marker;
}

// Evaluates the part of `pending` that no later call can change (evaluable_prefix); the rest stays.
int eval_settled(mcv_session *s, size_t keep_from) {
    std::string rest = s->pending.substr(keep_from);
    s->pending.resize(keep_from);
    int rc = s->pending.empty() ? MCV_OK : eval_pending(s, nullptr, nullptr);
    s->pending += rest;  // after a failure pending is still the whole text
    return rc;
}

int prefill_bytes(mcv_session *s, const uint8_t *data, size_t size, const mcv_image_params *p) {
    if (!s->model->mctx) return fail(&s->err, MCV_ERR_UNSUPPORTED, "model was loaded without a projector");
    ImageRequest req;
    int rc = image_request(s, p, req);
    if (rc != MCV_OK) return rc;
    finish_reply(s);
    s->cancel.store(false);
    std::string err;
    mtmd_bitmap *bm = bitmap_from_bytes(s->model->mctx, data, size, req.fit, err);
    if (!bm) return fail(&s->err, data && size ? MCV_ERR_IMAGE : MCV_ERR_INVALID_ARG, err);
    return add_bitmap(s, bm, req);
}

int prefill_rgb(mcv_session *s, const uint8_t *rgb, int32_t w, int32_t h, int32_t stride, const mcv_image_params *p) {
    if (!s->model->mctx) return fail(&s->err, MCV_ERR_UNSUPPORTED, "model was loaded without a projector");
    ImageRequest req;
    int rc = image_request(s, p, req);
    if (rc != MCV_OK) return rc;
    finish_reply(s);
    s->cancel.store(false);
    std::string err;
    mtmd_bitmap *bm = bitmap_from_rgb(rgb, w, h, stride, req.fit, err);
    if (!bm) return fail(&s->err, MCV_ERR_INVALID_ARG, err);
    return add_bitmap(s, bm, req);
}

int read_file(mcv_session *s, const char *path, std::vector<uint8_t> &bytes) {
    if (!path) return fail(&s->err, MCV_ERR_INVALID_ARG, "path is NULL");
    // image.cpp's checked reader: regular files only, size-capped (never /dev/zero or a FIFO)
    std::string err;
    const int rc = read_image_file(path, bytes, err);
    return rc == MCV_OK ? MCV_OK : fail(&s->err, rc, err);
}
}  // namespace

namespace mcv {
int image_request(mcv_session *s, const mcv_image_params *p, ImageRequest &req) {
    const mcv_model *m = s->model;
    mcv_image_params ip;
    mcv_image_params_init(&ip);
    if (p) {
        const size_t v1 = offsetof(mcv_image_params, video_frame) + sizeof(int32_t);
        if (p->struct_size < v1)
            return fail(&s->err, MCV_ERR_INVALID_ARG, "mcv_image_params.struct_size too small (call mcv_image_params_init)");
        memcpy(&ip, p, p->struct_size < sizeof(ip) ? p->struct_size : sizeof(ip));
    }
    if (ip.video_frame < 0 || ip.video_frame > 2)
        return fail(&s->err, MCV_ERR_INVALID_ARG, "mcv_image_params.video_frame must be 0, 1 or 2");
    const int gguf_max = m->fmt.max_slice_nums;
    if (ip.max_slices > gguf_max)
        return fail(&s->err, MCV_ERR_UNSUPPORTED,
                    "mcv_image_params.max_slices " + std::to_string(ip.max_slices) + " is above this model's " +
                        std::to_string(gguf_max) + " (minicpmv_edge.image.max_slice_nums; mtmd slices at most 9)");
    req.video_frame = ip.video_frame != 0;
    req.new_video = ip.video_frame == 2;
    req.fit = m->fit;
    if (req.video_frame) req.fit.max_slices = m->video_max_slices;
    if (ip.max_slices > 0) req.fit.max_slices = ip.max_slices;
    if (ip.max_pixels > 0) req.fit.max_pixels = ip.max_pixels;
    return MCV_OK;
}

int add_bitmap(mcv_session *s, mtmd_bitmap *bm, const ImageRequest &req) {
    const double t0 = now_ms();
    if (s->reply_open) close_turn(s);  // the reply becomes history whether or not the image loads
    const int32_t chunks_before = s->n_encoded_chunks, n_before = s->n_past;
    Snapshot snap(s);
    const bool continues = continues_video(s, req);
    const std::string text = placeholder(s, req, continues);
    int rc = MCV_OK;
    if (continues)
        s->pending += text;
    else
        rc = append_part(s, MCV_ROLE_USER, text);
    // Text pending before the image (turn prefix, earlier parts) goes first, so that the image's
    // own positions are what mcv_session_image_cost predicted.
    if (rc == MCV_OK) rc = eval_settled(s, s->pending.size() - text.size());
    int32_t n = 0;
    if (rc == MCV_OK) {
        s->last_image_encode_ms = 0;
        rc = eval_pending(s, bm, &n, n_before);
    }
    mtmd_bitmap_free(bm);
    if (rc != MCV_OK) {
        if (s->n_past > n_before) rollback(s, n_before);  // the text before it was evaluated
        snap.restore(s);
        s->n_encoded_chunks = chunks_before;
        return rc;
    }
    (req.video_frame ? s->n_frames : s->n_images)++;
    if (req.video_frame && !continues) s->n_videos++;
    s->frame_end = req.video_frame ? s->evaluated.size() + s->pending.size() : std::string::npos;
    s->last_image_ms = now_ms() - t0;
    s->last_image_n_tokens = n;
    s->last_image_n_chunks = s->n_encoded_chunks - chunks_before;
    return MCV_OK;
}
}  // namespace mcv

extern "C" {

void mcv_image_params_init(mcv_image_params *p) {
    if (!p) return;
    memset(p, 0, sizeof(*p));
    p->struct_size = sizeof(*p);
}

int mcv_session_prefill_text(mcv_session *s, mcv_role role, const char *utf8) {
    MCV_GUARD(s);
    if (!utf8) return fail(&s->err, MCV_ERR_INVALID_ARG, "text is NULL");
    if (role < MCV_ROLE_SYSTEM || role > MCV_ROLE_ASSISTANT) return fail(&s->err, MCV_ERR_INVALID_ARG, "unknown role");
    finish_reply(s);
    s->cancel.store(false);
    if (s->reply_open) close_turn(s);  // the reply becomes history whether or not the text fits
    const int32_t n_before = s->n_past;
    Snapshot snap(s);
    int rc = append_part(s, role, utf8);
    if (rc == MCV_OK) rc = eval_settled(s, evaluable_prefix(s));
    if (rc != MCV_OK) {
        if (s->n_past > n_before) rollback(s, n_before);
        snap.restore(s);
    }
    return rc;
}

int mcv_session_prefill_image(mcv_session *s, const uint8_t *data, size_t size, const mcv_image_params *p) {
    MCV_GUARD(s);
    return prefill_bytes(s, data, size, p);
}

int mcv_session_prefill_image_file(mcv_session *s, const char *path, const mcv_image_params *p) {
    MCV_GUARD(s);
    std::vector<uint8_t> bytes;
    int rc = read_file(s, path, bytes);
    return rc != MCV_OK ? rc : prefill_bytes(s, bytes.data(), bytes.size(), p);
}

int mcv_session_prefill_image_rgb(mcv_session *s, const uint8_t *rgb, int32_t w, int32_t h, int32_t stride,
                                  const mcv_image_params *p) {
    MCV_GUARD(s);
    return prefill_rgb(s, rgb, w, h, stride, p);
}

int mcv_session_prefill_video_frame(mcv_session *s, const uint8_t *rgb, int32_t w, int32_t h, int32_t stride) {
    MCV_GUARD(s);
    mcv_image_params p;
    mcv_image_params_init(&p);
    p.video_frame = 1;
    return prefill_rgb(s, rgb, w, h, stride, &p);
}

// The 0.1 calls: a prefill with the model's defaults.
int mcv_session_add_image_bytes(mcv_session *s, const uint8_t *data, size_t size) {
    MCV_GUARD(s);
    return prefill_bytes(s, data, size, nullptr);
}

int mcv_session_add_image_file(mcv_session *s, const char *path) {
    MCV_GUARD(s);
    std::vector<uint8_t> bytes;
    int rc = read_file(s, path, bytes);
    return rc != MCV_OK ? rc : prefill_bytes(s, bytes.data(), bytes.size(), nullptr);
}

int mcv_session_add_image_rgb(mcv_session *s, const uint8_t *rgb, int32_t w, int32_t h, int32_t stride) {
    MCV_GUARD(s);
    return prefill_rgb(s, rgb, w, h, stride, nullptr);
}

int mcv_session_image_cost(mcv_session *s, int32_t w, int32_t h, const mcv_image_params *p, mcv_image_cost *out) {
    MCV_GUARD(s);
    if (!out) return fail(&s->err, MCV_ERR_INVALID_ARG, "out is NULL");
    const size_t v1 = offsetof(mcv_image_cost, n_embd_rows) + sizeof(int32_t);
    if (out->struct_size < v1) return fail(&s->err, MCV_ERR_INVALID_ARG, "mcv_image_cost.struct_size too small");
    if (!s->model->mctx) return fail(&s->err, MCV_ERR_UNSUPPORTED, "model was loaded without a projector");
    if (w <= 0 || h <= 0 || w > 32768 || h > 32768)
        return fail(&s->err, MCV_ERR_INVALID_ARG, "width and height must be 1..32768");
    ImageRequest req;
    int rc = image_request(s, p, req);
    if (rc != MCV_OK) return rc;
    int32_t nw, nh;
    fitted_size(w, h, req.fit, nw, nh);
    // mtmd counts a placeholder bitmap (data == NULL) without touching pixels (mtmd.h)
    mtmd_bitmap *bm = mtmd_bitmap_init((uint32_t)nw, (uint32_t)nh, nullptr);
    mtmd_input_chunks *chunks = mtmd_input_chunks_init();
    const std::string text = placeholder(s, req, continues_video(s, req));
    mtmd_input_text txt = {text.c_str(), text.size(), false, true};
    const mtmd_bitmap *bms[1] = {bm};
    int32_t trc = bm && chunks ? mtmd_tokenize(s->model->mctx, chunks, &txt, bms, 1) : -1;
    mcv_image_cost c;
    memset(&c, 0, sizeof(c));
    c.struct_size = out->struct_size < sizeof(c) ? out->struct_size : sizeof(c);
    if (trc == 0) {
        SlicePlan plan = slice_plan(nw, nh, s->model->slicing);
        c.width = nw;
        c.height = nh;
        c.grid_cols = plan.grid_x;
        c.grid_rows = plan.grid_y;
        c.n_tokens = (int32_t)mtmd_helper_get_n_pos(chunks);
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++) {
            const mtmd_input_chunk *ch = mtmd_input_chunks_get(chunks, i);
            if (mtmd_input_chunk_get_type(ch) != MTMD_INPUT_CHUNK_TYPE_IMAGE) continue;
            c.n_chunks++;
            c.n_embd_rows += (int32_t)mtmd_input_chunk_get_n_tokens(ch);
        }
    }
    if (chunks) mtmd_input_chunks_free(chunks);
    if (bm) mtmd_bitmap_free(bm);
    if (trc != 0) return fail(&s->err, MCV_ERR_INTERNAL, "mtmd could not count the image's tokens");
    memcpy(out, &c, c.struct_size);
    return MCV_OK;
}

}  // extern "C"

// Sessions: conversation text, prefill of text and images, reset, stats, introspection.
#include "internal.h"
#include "normalize.h"

#include "mtmd-helper.h"

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>

using namespace mcv;

namespace {
bool abort_cb(void *data) { return static_cast<mcv_session *>(data)->cancel.load(std::memory_order_relaxed); }

}  // namespace

namespace mcv {
void rollback(mcv_session *s, int32_t n_before) {
    llama_memory_t mem = llama_get_memory(s->lctx);
    if (!llama_memory_seq_rm(mem, 0, n_before, -1)) {  // recurrent memory cannot cut in the middle
        llama_memory_clear(mem, true);
        s->needs_reset = true;
    }
    s->n_past = n_before;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

int decode_tokens(mcv_session *s, const llama_token *toks, int32_t n) {
    const int32_t nb = s->model->params.n_batch;
    for (int32_t i = 0; i < n; i += nb) {
        if (s->cancel.load()) return fail(&s->err, MCV_ERR_CANCELLED, "cancelled");
        int32_t k = n - i < nb ? n - i : nb;
        int rc = llama_decode(s->lctx, llama_batch_get_one(const_cast<llama_token *>(toks + i), k));
        if (rc == 2 || s->cancel.load()) return fail(&s->err, MCV_ERR_CANCELLED, "cancelled");
        if (rc == 1) return fail(&s->err, MCV_ERR_CONTEXT_FULL, "no room in the KV cache");
        if (rc != 0) return fail(&s->err, MCV_ERR_DECODE, "llama_decode failed with code " + std::to_string(rc));
        s->n_past += k;
    }
    return MCV_OK;
}

// Runs the session's external encoder on image chunk `k` of `bm` into `embd`; returns MCV_OK,
// MCV_ENCODE_USE_DEFAULT, or an error already recorded on the session.
int external_encode(mcv_session *s, const mtmd_bitmap *bm, const SlicePlan &plan, int k, size_t ntok, int n_embd,
                    std::vector<float> &embd) {
    mcv_slice_info info;
    memset(&info, 0, sizeof(info));
    info.struct_size = sizeof(info);
    info.image_index = s->n_images;
    info.chunk_index = k;
    info.n_chunks = (int32_t)(1 + plan.slices.size());
    info.width = k == 0 ? plan.ov_w : plan.slices[k - 1].w;
    info.height = k == 0 ? plan.ov_h : plan.slices[k - 1].h;
    info.slice_x = k == 0 ? 0 : plan.slices[k - 1].x;
    info.slice_y = k == 0 ? 0 : plan.slices[k - 1].y;
    info.patch_size = s->model->slicing.patch_size;
    info.n_tokens = (int32_t)ntok;
    info.n_embd = n_embd;
    info.grid_cols = plan.grid_x;
    info.grid_rows = plan.grid_y;
    info.refined_width = plan.ref_w;
    info.refined_height = plan.ref_h;
    info.image_width = (int32_t)mtmd_bitmap_get_nx(bm);
    info.image_height = (int32_t)mtmd_bitmap_get_ny(bm);
    info.image_rgb = mtmd_bitmap_get_data(bm);
    const size_t n = ntok * (size_t)n_embd;
    embd.assign(n, NAN);
    const std::string where = "external encoder, image " + std::to_string(info.image_index) + " chunk " +
                              std::to_string(k) + " of " + std::to_string(info.n_chunks);
    int r = s->encoder(s->encoder_user, &info, nullptr, embd.data(), n);
    if (r == MCV_ENCODE_USE_DEFAULT) return r;
    if (r != MCV_OK) return fail(&s->err, MCV_ERR_DECODE, where + ": failed with code " + std::to_string(r));
    for (size_t i = 0; i < n; i++)
        if (!std::isfinite(embd[i]))
            return fail(&s->err, MCV_ERR_DECODE, where + ": output " + std::to_string(i) + " of " +
                                                     std::to_string(n) + " is not finite (not written?)");
    return MCV_OK;
}

int eval_pending(mcv_session *s, mtmd_bitmap *bm, int32_t *n_out, int32_t rollback_to) {
    mcv_model *m = s->model;
    const int32_t n_before = s->n_past;
    const int32_t n_ctx = (int32_t)llama_n_ctx(s->lctx);
    const bool add_special = s->n_past == 0;
    int rc = MCV_OK;
    // the source tokenizer's Unicode normalization (NFC for Qwen), which llama.cpp does not apply
    std::string norm_name, text;
    if (!normalize_for(normalizer_for_model(m->lm, norm_name), s->pending, text))
        return fail(&s->err, MCV_ERR_UNSUPPORTED, "the model's tokenizer normalizes text to " + norm_name +
                                                      ", which the bridge does not implement (NFC, NFD)");
    if (!m->mctx) {  // text-only model
        std::vector<llama_token> toks(text.size() + 8);
        int32_t n = llama_tokenize(m->vocab, text.data(), (int32_t)text.size(), toks.data(),
                                   (int32_t)toks.size(), add_special, true);
        if (n < 0) return fail(&s->err, MCV_ERR_INTERNAL, "tokenizer failed");
        if (s->n_past + n > n_ctx)
            return fail(&s->err, MCV_ERR_CONTEXT_FULL, "prompt needs " + std::to_string(s->n_past + n) + " positions; n_ctx is " + std::to_string(n_ctx));
        rc = decode_tokens(s, toks.data(), n);
    } else {
        // mtmd throws (code 2, "could not preprocess") when markers and bitmaps disagree: say what it is
        const int n_markers = count_markers(s->pending, m->marker);
        if (n_markers != (bm ? 1 : 0))
            return fail(&s->err, MCV_ERR_INVALID_ARG, "text contains the media marker " + m->marker +
                        " without an image (" + std::to_string(n_markers) + " markers for " +
                        std::to_string(bm ? 1 : 0) + " images); the marker is reserved for images");
        mtmd_input_chunks *chunks = mtmd_input_chunks_init();
        mtmd_input_text txt = {text.c_str(), text.size(), add_special, true};
        const mtmd_bitmap *bms[1] = {bm};
        int32_t trc = mtmd_tokenize(m->mctx, chunks, &txt, bms, bm ? 1 : 0);
        if (trc != 0) {
            mtmd_input_chunks_free(chunks);
            return fail(&s->err, trc == 1 ? MCV_ERR_INVALID_ARG : MCV_ERR_IMAGE,
                        trc == 1 ? "text contains a media marker (" + m->marker + ") that has no image"
                                 : "mtmd could not preprocess the image");
        }
        llama_pos need = mtmd_helper_get_n_pos(chunks);
        if (s->n_past + need > n_ctx) {
            mtmd_input_chunks_free(chunks);
            return fail(&s->err, MCV_ERR_CONTEXT_FULL, "prompt needs " + std::to_string(s->n_past + need) + " positions; n_ctx is " + std::to_string(n_ctx));
        }
        const int n_embd = llama_model_n_embd_inp(m->lm);
        std::vector<float> embd;
        SlicePlan plan;
        int n_image_chunks = 0;
        if (s->encoder && bm) {  // every image chunk of this call is a chunk of `bm`
            plan = slice_plan((int)mtmd_bitmap_get_nx(bm), (int)mtmd_bitmap_get_ny(bm), m->slicing);
            size_t n_img = 0;
            for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++)
                n_img += mtmd_input_chunk_get_type(mtmd_input_chunks_get(chunks, i)) == MTMD_INPUT_CHUNK_TYPE_IMAGE;
            if (n_img != 1 + plan.slices.size()) {
                mtmd_input_chunks_free(chunks);
                return fail(&s->err, MCV_ERR_MISMATCH, "mtmd made " + std::to_string(n_img) + " image chunks, the bridge's slice plan " +
                            std::to_string(1 + plan.slices.size()) + " (llama.cpp version differs from 0c1e570?)");
            }
        }
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks) && rc == MCV_OK; i++) {
            const mtmd_input_chunk *c = mtmd_input_chunks_get(chunks, i);
            if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                size_t nt = 0;
                const llama_token *t = mtmd_input_chunk_get_tokens_text(c, &nt);
                rc = decode_tokens(s, t, (int32_t)nt);
                continue;
            }
            if (s->cancel.load()) {
                rc = fail(&s->err, MCV_ERR_CANCELLED, "cancelled");
                break;
            }
            const size_t ntok = mtmd_input_chunk_get_n_tokens(c);
            double t0 = now_ms();
            int erc = s->encoder && bm ? external_encode(s, bm, plan, n_image_chunks++, ntok, n_embd, embd)
                                       : MCV_ENCODE_USE_DEFAULT;
            if (erc != MCV_OK && erc != MCV_ENCODE_USE_DEFAULT) {
                rc = erc;
                break;
            }
            if (erc == MCV_ENCODE_USE_DEFAULT) {
                std::lock_guard<std::mutex> lk(m->vision_mu);  // the encoder's output buffer is shared
                if (mtmd_encode_chunk(m->mctx, c) != 0) {
                    rc = fail(&s->err, MCV_ERR_DECODE, "the vision encoder failed");
                    break;
                }
                const float *out = mtmd_get_output_embd(m->mctx);
                embd.assign(out, out + ntok * (size_t)n_embd);
            }
            const double dt = now_ms() - t0;
            s->image_encode_ms += dt;
            s->last_image_encode_ms += dt;  // add_bitmap zeroes it per image
            s->n_encoded_chunks++;
            llama_pos new_past = s->n_past;
            int32_t drc = mtmd_helper_decode_image_chunk(m->mctx, s->lctx, c, embd.data(), s->n_past, 0,
                                                         m->params.n_batch, &new_past, nullptr, nullptr);
            if (drc != 0)
                rc = s->cancel.load() ? fail(&s->err, MCV_ERR_CANCELLED, "cancelled")
                                      : fail(&s->err, MCV_ERR_DECODE, "decoding image embeddings failed");
            else
                s->n_past = new_past;
        }
        mtmd_input_chunks_free(chunks);
    }
    if (rc != MCV_OK) {
        rollback(s, rollback_to >= 0 ? rollback_to : n_before);
        return rc;
    }
    if (n_out) *n_out = s->n_past - n_before;
    s->evaluated += s->pending;
    s->pending.clear();
    return MCV_OK;
}
}  // namespace mcv

extern "C" {

int mcv_session_create(mcv_model *m, mcv_session **out) {
    clear_thread_error();
    if (!out) return fail(nullptr, MCV_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!m) return fail(nullptr, MCV_ERR_INVALID_ARG, "model is NULL");
    auto *s = new (std::nothrow) mcv_session();
    if (!s) return fail(&m->err, MCV_ERR_NO_MEMORY, "out of memory");
    s->model = m;
    s->thinking = m->fmt.thinking_supported && m->fmt.thinking_default;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)m->params.n_ctx;
    cp.n_batch = cp.n_ubatch = (uint32_t)m->params.n_batch;
    cp.n_threads = cp.n_threads_batch = m->n_threads;
    cp.abort_callback = abort_cb;
    cp.abort_callback_data = s;
    s->lctx = llama_init_from_model(m->lm, cp);
    if (!s->lctx) {
        delete s;
        return fail(&m->err, MCV_ERR_NO_MEMORY, "llama.cpp could not create a context (n_ctx too large?)");
    }
    m->n_sessions++;
    *out = s;
    return MCV_OK;
}

int mcv_session_free(mcv_session *s) {
    if (!s) return MCV_OK;
    BusyGuard g(s);
    if (!g.ok) return fail(nullptr, MCV_ERR_BUSY, "session is in use by another thread");
    if (s->smpl) llama_sampler_free(s->smpl);
    if (s->lctx) llama_free(s->lctx);
    s->model->n_sessions--;
    g.ok = false;  // the guard must not touch freed memory
    delete s;
    return MCV_OK;
}

const char *mcv_session_errmsg(const mcv_session *s) { return s ? s->err.c_str() : mcv_last_error(); }

int mcv_session_reset(mcv_session *s) {
    clear_thread_error();
    if (!s) return fail(nullptr, MCV_ERR_INVALID_ARG, "session is NULL");
    BusyGuard g(s);
    if (!g.ok) return fail(nullptr, MCV_ERR_BUSY, "session is in use by another thread");
    llama_memory_clear(llama_get_memory(s->lctx), true);
    clear_transcript(s);
    s->generating = s->finished = s->needs_reset = false;
    s->thinking = s->model->fmt.thinking_supported && s->model->fmt.thinking_default;
    s->n_images = s->n_past = s->n_prefill = s->n_sampled = 0;
    s->finish = MCV_FINISH_NONE;
    s->to_decode = -1;
    s->held.clear();
    s->ready_valid = false;
    s->image_encode_ms = s->prefill_ms = s->ttft_ms = s->t_first = s->t_last = 0;
    s->n_encoded_chunks = s->n_frames = s->n_videos = s->last_image_n_tokens = s->last_image_n_chunks = 0;
    s->last_image_encode_ms = s->last_image_ms = 0;
    s->frame_end = std::string::npos;
    return MCV_OK;
}

int mcv_session_add_text(mcv_session *s, mcv_role role, const char *utf8) {
    MCV_GUARD(s);
    if (!utf8) return fail(&s->err, MCV_ERR_INVALID_ARG, "text is NULL");
    if (role < MCV_ROLE_SYSTEM || role > MCV_ROLE_ASSISTANT) return fail(&s->err, MCV_ERR_INVALID_ARG, "unknown role");
    finish_reply(s);
    return append_part(s, role, utf8);
}

int mcv_session_end_turn(mcv_session *s) {
    MCV_GUARD(s);
    finish_reply(s);
    close_turn(s);
    return MCV_OK;
}

int mcv_session_set_thinking(mcv_session *s, int32_t enabled) {
    MCV_GUARD(s);
    if (enabled && !s->model->fmt.thinking_supported)
        return fail(&s->err, MCV_ERR_UNSUPPORTED, s->model->fmt.family + " has no thinking mode");
    s->thinking = enabled != 0;
    return MCV_OK;
}

int mcv_session_set_encoder(mcv_session *s, mcv_encode_fn fn, void *user) {
    MCV_GUARD(s);
    if (!s->model->mctx) return fail(&s->err, MCV_ERR_UNSUPPORTED, "model was loaded without a projector");
    s->encoder = fn;
    s->encoder_user = fn ? user : nullptr;
    return MCV_OK;
}

int mcv_session_prompt_text(mcv_session *s, int32_t with_generation_prefix, char **out) {
    clear_thread_error();
    if (!out) return fail(s ? &s->err : nullptr, MCV_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    MCV_GUARD(s);
    const std::string t = transcript(s, with_generation_prefix != 0);
    char *c = static_cast<char *>(malloc(t.size() + 1));
    if (!c) return fail(&s->err, MCV_ERR_NO_MEMORY, "out of memory");
    memcpy(c, t.c_str(), t.size() + 1);
    *out = c;
    return MCV_OK;
}

int mcv_session_stats(const mcv_session *s, mcv_stats *out) {
    clear_thread_error();
    if (!s || !out) return fail(nullptr, MCV_ERR_INVALID_ARG, "session or out is NULL");
    const size_t v1 = offsetof(mcv_stats, finish_reason) + sizeof(int32_t);
    if (out->struct_size < v1) return fail(nullptr, MCV_ERR_INVALID_ARG, "mcv_stats.struct_size too small");
    mcv_stats st;
    memset(&st, 0, sizeof(st));
    st.struct_size = out->struct_size < sizeof(st) ? out->struct_size : sizeof(st);
    st.image_encode_ms = s->image_encode_ms;
    st.prefill_ms = s->prefill_ms;
    st.prefill_tok_per_s = s->prefill_ms > 0 ? s->n_prefill * 1000.0 / s->prefill_ms : 0;
    double dt = s->t_last - s->t_first;
    st.decode_tok_per_s = s->n_sampled > 1 && dt > 0 ? (s->n_sampled - 1) * 1000.0 / dt : 0;
    st.ttft_ms = s->ttft_ms;
    st.n_prefill_tokens = s->n_prefill;
    st.n_decode_tokens = s->n_sampled;
    st.n_ctx_used = s->n_past;
    st.n_ctx = (int32_t)llama_n_ctx(s->lctx);
    st.n_images = s->n_images;
    st.finish_reason = s->finish;
    st.decode_ms = s->n_sampled > 1 ? dt : 0;
    st.last_image_encode_ms = s->last_image_encode_ms;
    st.last_image_ms = s->last_image_ms;
    st.last_image_n_tokens = s->last_image_n_tokens;
    st.last_image_n_chunks = s->last_image_n_chunks;
    st.n_encoded_chunks = s->n_encoded_chunks;
    st.n_video_frames = s->n_frames;
    memcpy(out, &st, st.struct_size);
    return MCV_OK;
}

}  // extern "C"

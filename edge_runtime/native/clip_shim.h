// What both shims over clip.h share: the export macro and how a vision context is loaded.
// Why one place: clip_context_params is a plain C struct with no defaults in clip.h, so each
// field is set here once, as mtmd sets it for a text-and-image context (no warmup: the first
// encode warms up, no token limits: the projector's own), and a llama.cpp update that adds a
// field is handled once for both shims.
#pragma once

#include "clip.h"

#include <exception>

#if defined(_WIN32)
#define EDGE_API extern "C" __declspec(dllexport)
#else
#define EDGE_API extern "C" __attribute__((visibility("default")))
#endif

// the vision context of the projector at `path` (the audio ones freed), or nullptr when the
// file has no vision encoder or fails to load; `cb_eval` watches clip.cpp's graph (may be null)
static inline clip_ctx * edge_load_vision(const char * path, int use_gpu, ggml_backend_sched_eval_callback cb_eval,
                                          void * cb_eval_user_data) {
    clip_context_params p{};
    p.use_gpu = use_gpu != 0;
    p.device = nullptr;
    p.flash_attn_type = CLIP_FLASH_ATTN_TYPE_AUTO;
    p.image_min_tokens = -1;
    p.image_max_tokens = -1;
    p.warmup = false;
    p.cb_eval = cb_eval;
    p.cb_eval_user_data = cb_eval_user_data;
    p.no_alloc = false;
    p.progress_callback = nullptr;
    p.progress_callback_user_data = nullptr;
    try {
        clip_init_result r = clip_init(path, p);
        if (r.ctx_a) clip_free(r.ctx_a);
        if (r.ctx_gen_a) clip_free(r.ctx_gen_a);
        return r.ctx_v;
    } catch (const std::exception &) {
        return nullptr;
    }
}

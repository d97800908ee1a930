// NAPI glue, images and prefill ahead (0.3): each image/text prefill is one async job (a libuv
// worker, so the ArkTS UI thread never blocks: OpenBMB's app hit THREAD_BLOCK_3S there);
// imageCost is synchronous (no pixels, no encoder).
#include "napi_glue.h"

#include <utility>

namespace mcvnapi {
namespace {
// {maxSlices?, maxPixels?} -> mcv_image_params (absent: the model's defaults)
mcv_image_params image_opts(napi_env env, napi_value opts, bool video_frame) {
    mcv_image_params p;
    mcv_image_params_init(&p);
    p.max_slices = int_prop(env, opts, "maxSlices", 0);
    double px = (double)int_prop(env, opts, "maxPixels", 0);
    napi_valuetype t;
    bool has = false;
    if (napi_typeof(env, opts, &t) == napi_ok && t == napi_object &&
        napi_has_named_property(env, opts, "maxPixels", &has) == napi_ok && has) {  // beyond int32
        napi_value v;
        napi_get_named_property(env, opts, "maxPixels", &v);
        napi_get_value_double(env, v, &px);
    }
    p.max_pixels = (int64_t)px;
    p.video_frame = video_frame ? 1 : 0;
    return p;
}

}  // namespace

napi_value AddImage(napi_env env, napi_callback_info info) {  // (s, Uint8Array|ArrayBuffer) -> Promise<0>
    napi_value a[2];
    mcv_session *s = session_arg(env, info, 2, a);
    auto *j = new Job{Kind::Call};
    j->s = s;
    j->call = [](Job *j) { return mcv_session_add_image_bytes(j->s, j->data.data(), j->data.size()); };
    if (!s || !bytes_arg(env, a[1], j->data)) {
        delete j;
        ok(env, MCV_ERR_INVALID_ARG, "addImage(session, Uint8Array|ArrayBuffer)");
        return nullptr;
    }
    return queue(env, j, "mcv.addImage");
}

napi_value PrefillText(napi_env env, napi_callback_info info) {  // (s, role, text) -> Promise<0>
    napi_value a[3];
    mcv_session *s = session_arg(env, info, 3, a);
    bool present = false;
    auto *j = new Job{Kind::Call};
    j->s = s;
    j->role = -1;
    napi_get_value_int32(env, a[1], &j->role);
    j->a = str_arg(env, a[2], &present);
    j->call = [](Job *j) { return mcv_session_prefill_text(j->s, (mcv_role)j->role, j->a.c_str()); };
    if (!s || !present) {
        delete j;
        ok(env, MCV_ERR_INVALID_ARG, "prefillText(session, role, text)");
        return nullptr;
    }
    return queue(env, j, "mcv.prefillText");
}

napi_value PrefillImage(napi_env env, napi_callback_info info) {  // (s, bytes, opts?) -> Promise<0>
    napi_value a[3];
    mcv_session *s = session_arg(env, info, 3, a);
    auto *j = new Job{Kind::Call};
    j->s = s;
    j->ip = image_opts(env, a[2], false);
    j->call = [](Job *j) { return mcv_session_prefill_image(j->s, j->data.data(), j->data.size(), &j->ip); };
    if (!s || !bytes_arg(env, a[1], j->data)) {
        delete j;
        ok(env, MCV_ERR_INVALID_ARG, "prefillImage(session, Uint8Array|ArrayBuffer, {maxSlices, maxPixels}?)");
        return nullptr;
    }
    return queue(env, j, "mcv.prefillImage");
}

// (s, rgb, width, height, stride, opts?) -> Promise<0>; frame: (s, rgb, width, height, stride, newVideo?)
napi_value prefill_rgb(napi_env env, napi_callback_info info, bool frame) {
    napi_value a[6];
    mcv_session *s = session_arg(env, info, 6, a);
    auto *j = new Job{Kind::Call};
    j->s = s;
    j->w = int_arg(env, a[2]);
    j->h = int_arg(env, a[3]);
    j->stride = int_arg(env, a[4]);
    j->ip = image_opts(env, a[5], frame);
    if (frame) {  // (s, rgb, width, height, stride, newVideo?): 2 starts a video right after another
        bool new_video = false;
        napi_valuetype t;
        if (napi_typeof(env, a[5], &t) == napi_ok && t == napi_boolean) napi_get_value_bool(env, a[5], &new_video);
        mcv_image_params_init(&j->ip);
        j->ip.video_frame = new_video ? 2 : 1;
    }
    j->call = [](Job *j) { return mcv_session_prefill_image_rgb(j->s, j->data.data(), j->w, j->h, j->stride, &j->ip); };
    if (!s || !bytes_arg(env, a[1], j->data) || j->h < 0 || j->stride < 0 ||
        (int64_t)j->stride * j->h > (int64_t)j->data.size()) {
        delete j;
        ok(env, MCV_ERR_INVALID_ARG, "rgb must hold stride * height bytes (RGB888)");
        return nullptr;
    }
    return queue(env, j, frame ? "mcv.prefillVideoFrame" : "mcv.prefillImageRgb");
}

napi_value PrefillImageRgb(napi_env env, napi_callback_info info) { return prefill_rgb(env, info, false); }
napi_value PrefillVideoFrame(napi_env env, napi_callback_info info) { return prefill_rgb(env, info, true); }

napi_value ImageCost(napi_env env, napi_callback_info info) {  // (s, width, height, opts?) -> cost (sync: cheap)
    napi_value a[4], o, v;
    mcv_session *s = session_arg(env, info, 4, a);
    bool frame = false;
    napi_valuetype t;
    if (napi_typeof(env, a[3], &t) == napi_ok && t == napi_object) {
        bool has = false;
        napi_has_named_property(env, a[3], "videoFrame", &has);
        if (has && napi_get_named_property(env, a[3], "videoFrame", &v) == napi_ok) napi_get_value_bool(env, v, &frame);
    }
    mcv_image_params p = image_opts(env, a[3], frame);
    mcv_image_cost c{};
    c.struct_size = sizeof(c);
    if (!ok(env, mcv_session_image_cost(s, int_arg(env, a[1]), int_arg(env, a[2]), &p, &c),
            s ? mcv_session_errmsg(s) : mcv_last_error()))
        return nullptr;
    napi_create_object(env, &o);
    const std::pair<const char *, int32_t> f[] = {{"width", c.width}, {"height", c.height}, {"nChunks", c.n_chunks},
        {"gridCols", c.grid_cols}, {"gridRows", c.grid_rows}, {"nTokens", c.n_tokens}, {"nEmbdRows", c.n_embd_rows}};
    for (const auto &kv : f) {
        napi_create_int32(env, kv.second, &v);
        napi_set_named_property(env, o, kv.first, v);
    }
    return o;
}

}  // namespace mcvnapi

// NAPI glue for HarmonyOS (ArkTS) and Node.js: minicpmv_edge.h -> a JS module.
// Slow calls (loadModel, addImage, generate) run as napi_create_async_work on a libuv
// worker and return Promises; generated pieces reach JS through a threadsafe function,
// in order, and the generate Promise resolves from that same queue after the last piece.
// Only Node-API calls that OpenHarmony's libace_napi also provides are used.
#include "napi_glue.h"

#include <cstring>
#include <utility>

namespace mcvnapi {

#define CALL(env, expr)                                           \
    do {                                                          \
        if ((expr) != napi_ok) {                                  \
            napi_throw_error(env, nullptr, "napi call failed: " #expr); \
            return nullptr;                                       \
        }                                                         \
    } while (0)

napi_value make_error(napi_env env, int rc, const std::string &msg) {
    napi_value m, code, err;
    napi_create_string_utf8(env, msg.empty() ? mcv_status_string(rc) : msg.c_str(), NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, nullptr, m, &err);
    napi_create_int32(env, rc, &code);
    napi_set_named_property(env, err, "code", code);
    return err;
}

// Throws for rc < 0 and returns false; the message comes from the handle or the thread.
bool ok(napi_env env, int rc, const char *msg) {
    if (rc >= 0) return true;
    napi_throw(env, make_error(env, rc, msg ? msg : ""));
    return false;
}

void *ptr_arg(napi_env env, napi_value v) {
    void *p = nullptr;
    napi_valuetype t;
    if (napi_typeof(env, v, &t) == napi_ok && t == napi_external) napi_get_value_external(env, v, &p);
    return p;
}

std::string str_arg(napi_env env, napi_value v, bool *present) {
    napi_valuetype t;
    napi_typeof(env, v, &t);
    if (present) *present = t == napi_string;
    if (t != napi_string) return std::string();
    size_t n = 0;
    napi_get_value_string_utf8(env, v, nullptr, 0, &n);
    std::string s(n, '\0');
    napi_get_value_string_utf8(env, v, &s[0], n + 1, &n);
    return s;
}

int32_t int_prop(napi_env env, napi_value obj, const char *name, int32_t dflt) {
    napi_valuetype t;
    bool has = false;
    if (napi_typeof(env, obj, &t) != napi_ok || t != napi_object) return dflt;
    napi_has_named_property(env, obj, name, &has);
    if (!has) return dflt;
    napi_value v;
    napi_get_named_property(env, obj, name, &v);
    double d = dflt;
    if (napi_get_value_double(env, v, &d) != napi_ok) return dflt;
    return (int32_t)d;
}

bool bytes_arg(napi_env env, napi_value v, std::vector<uint8_t> &out) {
    bool is_ta = false, is_ab = false;
    void *data = nullptr;
    size_t len = 0;
    napi_is_typedarray(env, v, &is_ta);
    napi_is_arraybuffer(env, v, &is_ab);
    if (is_ta) {
        napi_typedarray_type tt;
        napi_value ab;
        size_t off;
        napi_get_typedarray_info(env, v, &tt, &len, &data, &ab, &off);
    } else if (is_ab) {
        napi_get_arraybuffer_info(env, v, &data, &len);
    } else {
        return false;
    }
    out.assign((uint8_t *)data, (uint8_t *)data + len);
    return true;
}

int32_t int_arg(napi_env env, napi_value v) {
    int32_t x = 0;
    napi_get_value_int32(env, v, &x);
    return x;
}

napi_value args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
    size_t argc = n;
    for (size_t i = 0; i < n; i++) napi_get_undefined(env, &argv[i]);
    napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
    return nullptr;
}

// ---- async work: one job type for load / prefill / generate ------------------------
struct Piece {  // one message through the threadsafe function
    Job *job;
    std::string text;
    bool done;
};

void settle(napi_env env, Job *j) {
    if (j->rc < 0 && !(j->kind == Kind::Generate && j->rc == MCV_ERR_CANCELLED)) {  // cancel resolves
        napi_reject_deferred(env, j->deferred, make_error(env, j->rc, j->err));
        return;
    }
    napi_value v;
    if (j->kind == Kind::Load)
        napi_create_external(env, j->model, nullptr, nullptr, &v);
    else
        napi_create_int32(env, j->rc, &v);
    napi_resolve_deferred(env, j->deferred, v);
}

int on_piece(const char *p, size_t n, void *user) {
    auto *j = static_cast<Job *>(user);
    auto *msg = new Piece{j, std::string(p, n), false};
    if (napi_call_threadsafe_function(j->tsfn, msg, napi_tsfn_blocking) != napi_ok) {
        delete msg;
        return 1;  // JS side is gone: stop
    }
    return 0;
}

void execute(napi_env, void *data) {  // libuv worker thread: no napi_* calls except the tsfn
    auto *j = static_cast<Job *>(data);
    switch (j->kind) {
        case Kind::Load:
            j->rc = mcv_model_load(j->a.c_str(), j->b.empty() ? nullptr : j->b.c_str(), &j->mp, &j->model);
            if (j->rc < 0) j->err = mcv_last_error();
            break;
        case Kind::Call:
            j->rc = j->call(j);
            if (j->rc < 0) j->err = mcv_session_errmsg(j->s);
            break;
        case Kind::Generate:
            j->rc = mcv_session_generate(j->s, &j->gp, on_piece, j);
            if (j->rc < 0) j->err = mcv_session_errmsg(j->s);
            napi_call_threadsafe_function(j->tsfn, new Piece{j, std::string(), true}, napi_tsfn_blocking);
            napi_release_threadsafe_function(j->tsfn, napi_tsfn_release);
            break;
    }
}

void complete(napi_env env, napi_status, void *data) {
    auto *j = static_cast<Job *>(data);
    napi_delete_async_work(env, j->work);
    if (j->kind != Kind::Generate) settle(env, j);  // a Generate job settles from its last tsfn message
    if (--j->refs == 0) delete j;
}

void call_js(napi_env env, napi_value cb, void *, void *data) {
    auto *msg = static_cast<Piece *>(data);
    Job *j = msg->job;
    if (msg->done) {
        if (env) settle(env, j);
        if (--j->refs == 0) delete j;
    } else if (env) {
        napi_value s, undef;
        napi_create_string_utf8(env, msg->text.data(), msg->text.size(), &s);
        napi_get_undefined(env, &undef);
        napi_call_function(env, undef, cb, 1, &s, nullptr);
    }
    delete msg;
}

napi_value queue(napi_env env, Job *j, const char *name) {
    napi_value promise, res_name;
    napi_create_promise(env, &j->deferred, &promise);
    napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &res_name);
    napi_create_async_work(env, nullptr, res_name, execute, complete, j, &j->work);
    napi_queue_async_work(env, j->work);
    return promise;
}

// ---- exported functions ----------------------------------------------------------
napi_value Version(napi_env env, napi_callback_info) {
    napi_value v;
    napi_create_string_utf8(env, mcv_version(), NAPI_AUTO_LENGTH, &v);
    return v;
}

napi_value LoadModel(napi_env env, napi_callback_info info) {  // (text, mmproj|null, opts?) -> Promise<model>
    napi_value a[3];
    args(env, info, 3, a);
    auto *j = new Job{Kind::Load};
    bool has_text = false;
    j->a = str_arg(env, a[0], &has_text);
    j->b = str_arg(env, a[1]);
    mcv_model_params_init(&j->mp);
    j->mp.n_ctx = int_prop(env, a[2], "nCtx", j->mp.n_ctx);
    j->mp.n_threads = int_prop(env, a[2], "nThreads", 0);
    j->mp.n_gpu_layers = int_prop(env, a[2], "nGpuLayers", 0);
    j->mp.max_slices = int_prop(env, a[2], "maxSlices", 0);
    if (!has_text) {
        delete j;
        ok(env, MCV_ERR_INVALID_ARG, "textPath must be a string");
        return nullptr;
    }
    return queue(env, j, "mcv.loadModel");
}

napi_value FreeModel(napi_env env, napi_callback_info info) {
    napi_value a[1];
    args(env, info, 1, a);
    auto *m = static_cast<mcv_model *>(ptr_arg(env, a[0]));
    ok(env, mcv_model_free(m), m ? mcv_model_errmsg(m) : "");
    return nullptr;
}

napi_value CreateSession(napi_env env, napi_callback_info info) {
    napi_value a[1], v;
    args(env, info, 1, a);
    mcv_session *s = nullptr;
    if (!ok(env, mcv_session_create(static_cast<mcv_model *>(ptr_arg(env, a[0])), &s), mcv_last_error())) return nullptr;
    CALL(env, napi_create_external(env, s, nullptr, nullptr, &v));
    return v;
}

mcv_session *session_arg(napi_env env, napi_callback_info info, size_t n, napi_value *a) {
    args(env, info, n, a);
    return static_cast<mcv_session *>(ptr_arg(env, a[0]));
}

napi_value FreeSession(napi_env env, napi_callback_info info) {
    napi_value a[1];
    ok(env, mcv_session_free(session_arg(env, info, 1, a)), mcv_last_error());
    return nullptr;
}

napi_value Reset(napi_env env, napi_callback_info info) {
    napi_value a[1];
    mcv_session *s = session_arg(env, info, 1, a);
    ok(env, mcv_session_reset(s), mcv_session_errmsg(s));
    return nullptr;
}

napi_value Cancel(napi_env env, napi_callback_info info) {
    napi_value a[1];
    mcv_session_cancel(session_arg(env, info, 1, a));
    return nullptr;
}

napi_value AddText(napi_env env, napi_callback_info info) {  // (s, role 0|1|2, text)
    napi_value a[3];
    mcv_session *s = session_arg(env, info, 3, a);
    int32_t role = -1;
    napi_get_value_int32(env, a[1], &role);
    bool present = false;
    std::string t = str_arg(env, a[2], &present);
    ok(env, mcv_session_add_text(s, (mcv_role)role, present ? t.c_str() : nullptr), mcv_session_errmsg(s));
    return nullptr;
}

napi_value EndTurn(napi_env env, napi_callback_info info) {
    napi_value a[1];
    mcv_session *s = session_arg(env, info, 1, a);
    ok(env, mcv_session_end_turn(s), s ? mcv_session_errmsg(s) : mcv_last_error());
    return nullptr;
}

napi_value SetThinking(napi_env env, napi_callback_info info) {
    napi_value a[2];
    mcv_session *s = session_arg(env, info, 2, a);
    bool on = false;
    napi_get_value_bool(env, a[1], &on);
    ok(env, mcv_session_set_thinking(s, on ? 1 : 0), mcv_session_errmsg(s));
    return nullptr;
}

napi_value Generate(napi_env env, napi_callback_info info) {  // (s, opts, onToken) -> Promise<status>
    napi_value a[3], name;
    mcv_session *s = session_arg(env, info, 3, a);
    napi_valuetype t;
    napi_typeof(env, a[2], &t);
    if (!s || t != napi_function) {
        ok(env, MCV_ERR_INVALID_ARG, "generate(session, {maxTokens, temperature}, onToken)");
        return nullptr;
    }
    auto *j = new Job{Kind::Generate};
    j->refs = 2;
    j->s = s;
    mcv_gen_params_init(&j->gp);
    j->gp.max_tokens = int_prop(env, a[1], "maxTokens", j->gp.max_tokens);
    napi_value tv;
    bool has = false;
    if (napi_typeof(env, a[1], &t) == napi_ok && t == napi_object && napi_has_named_property(env, a[1], "temperature", &has) == napi_ok && has) {
        double d = 0;
        napi_get_named_property(env, a[1], "temperature", &tv);
        napi_get_value_double(env, tv, &d);
        j->gp.temperature = (float)d;
    }
    napi_create_string_utf8(env, "mcv.generate", NAPI_AUTO_LENGTH, &name);
    CALL(env, napi_create_threadsafe_function(env, a[2], nullptr, name, 0, 1, nullptr, nullptr, nullptr, call_js, &j->tsfn));
    return queue(env, j, "mcv.generate");
}

napi_value PromptText(napi_env env, napi_callback_info info) {
    napi_value a[2], v;
    mcv_session *s = session_arg(env, info, 2, a);
    bool with = false;
    napi_get_value_bool(env, a[1], &with);
    char *out = nullptr;
    if (!ok(env, mcv_session_prompt_text(s, with ? 1 : 0, &out), s ? mcv_session_errmsg(s) : mcv_last_error())) return nullptr;
    napi_create_string_utf8(env, out, NAPI_AUTO_LENGTH, &v);
    mcv_string_free(out);
    return v;
}

napi_value Stats(napi_env env, napi_callback_info info) {
    napi_value a[1], o, v;
    mcv_session *s = session_arg(env, info, 1, a);
    mcv_stats st{};
    st.struct_size = sizeof(st);
    if (!ok(env, mcv_session_stats(s, &st), mcv_last_error())) return nullptr;
    napi_create_object(env, &o);
    const std::pair<const char *, double> f[] = {
        {"imageEncodeMs", st.image_encode_ms}, {"prefillTokPerS", st.prefill_tok_per_s},
        {"decodeTokPerS", st.decode_tok_per_s}, {"ttftMs", st.ttft_ms}, {"nCtxUsed", (double)st.n_ctx_used},
        {"nImages", (double)st.n_images}, {"finishReason", (double)st.finish_reason},
        {"prefillMs", st.prefill_ms}, {"decodeMs", st.decode_ms}, {"nPrefillTokens", (double)st.n_prefill_tokens},
        {"nDecodeTokens", (double)st.n_decode_tokens}, {"lastImageEncodeMs", st.last_image_encode_ms},
        {"lastImageMs", st.last_image_ms}, {"lastImageNTokens", (double)st.last_image_n_tokens},
        {"lastImageNChunks", (double)st.last_image_n_chunks}, {"nEncodedChunks", (double)st.n_encoded_chunks},
        {"nVideoFrames", (double)st.n_video_frames}, {"nCtx", (double)st.n_ctx}};
    for (const auto &kv : f) {
        napi_create_double(env, kv.second, &v);
        napi_set_named_property(env, o, kv.first, v);
    }
    return o;
}

napi_value Init(napi_env env, napi_value exports) {
    const napi_property_descriptor d[] = {
        {"version", nullptr, Version, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"loadModel", nullptr, LoadModel, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"freeModel", nullptr, FreeModel, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"createSession", nullptr, CreateSession, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"freeSession", nullptr, FreeSession, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"reset", nullptr, Reset, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"cancel", nullptr, Cancel, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"addText", nullptr, AddText, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"addImage", nullptr, AddImage, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"setThinking", nullptr, SetThinking, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"generate", nullptr, Generate, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"promptText", nullptr, PromptText, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"stats", nullptr, Stats, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"endTurn", nullptr, EndTurn, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"prefillText", nullptr, PrefillText, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"prefillImage", nullptr, PrefillImage, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"prefillImageRgb", nullptr, PrefillImageRgb, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"prefillVideoFrame", nullptr, PrefillVideoFrame, nullptr, nullptr, nullptr, napi_default, nullptr},
        {"imageCost", nullptr, ImageCost, nullptr, nullptr, nullptr, napi_default, nullptr},
    };
    napi_define_properties(env, exports, sizeof(d) / sizeof(d[0]), d);
    return exports;
}

}  // namespace mcvnapi

#ifdef __OHOS__
// HarmonyOS: `import bridge from 'libminicpmv_edge_napi.so'` (name must match oh-package.json5)
static napi_module g_module = {1, 0, nullptr, mcvnapi::Init, "minicpmv_edge_napi", nullptr, {0}};
extern "C" __attribute__((constructor)) void RegisterMinicpmvEdge(void) { napi_module_register(&g_module); }
#else
NAPI_MODULE(NODE_GYP_MODULE_NAME, mcvnapi::Init)
#endif

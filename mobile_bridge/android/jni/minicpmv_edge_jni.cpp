// JNI glue: org.minicpmv.edge.NativeBridge -> minicpmv_edge.h. No logic beyond marshalling:
// byte[] <-> UTF-8, long <-> handle, status < 0 -> MiniCpmvException(code, message).
#include <jni.h>

#include <string>
#include <vector>

#include "minicpmv_edge.h"

#define JNI_FN(name) JNIEXPORT JNICALL Java_org_minicpmv_edge_NativeBridge_##name

namespace {
mcv_model *M(jlong h) { return reinterpret_cast<mcv_model *>(h); }
mcv_session *S(jlong h) { return reinterpret_cast<mcv_session *>(h); }

// Throws for rc < 0; returns rc. The message comes from the handle, else the thread.
int check(JNIEnv *env, int rc, const char *msg) {
    if (rc >= 0 || env->ExceptionCheck()) return rc;
    jclass cls = env->FindClass("org/minicpmv/edge/MiniCpmvException");
    if (!cls) return rc;
    jmethodID ctor = env->GetMethodID(cls, "<init>", "(ILjava/lang/String;)V");
    jstring jmsg = env->NewStringUTF(msg && *msg ? msg : mcv_status_string(rc));  // our messages are ASCII
    jobject ex = env->NewObject(cls, ctor, (jint)rc, jmsg);
    if (ex) env->Throw(static_cast<jthrowable>(ex));
    return rc;
}

int check_s(JNIEnv *env, jlong s, int rc) { return check(env, rc, rc < 0 && s ? mcv_session_errmsg(S(s)) : mcv_last_error()); }

bool bytes(JNIEnv *env, jbyteArray a, std::string &out) {
    if (!a) return false;
    jsize n = env->GetArrayLength(a);
    out.resize((size_t)n);
    if (n) env->GetByteArrayRegion(a, 0, n, reinterpret_cast<jbyte *>(&out[0]));
    return true;
}

jbyteArray to_bytes(JNIEnv *env, const char *p, size_t n) {
    jbyteArray a = env->NewByteArray((jsize)n);
    if (a && n) env->SetByteArrayRegion(a, 0, (jsize)n, reinterpret_cast<const jbyte *>(p));
    return a;
}

struct CbCtx {
    JNIEnv *env;
    jobject cb;
    jmethodID on_piece;
};

int on_piece(const char *piece, size_t len, void *user) {
    auto *c = static_cast<CbCtx *>(user);
    jbyteArray a = to_bytes(c->env, piece, len);
    jboolean stop = c->env->CallBooleanMethod(c->cb, c->on_piece, a);
    c->env->DeleteLocalRef(a);
    return (stop || c->env->ExceptionCheck()) ? 1 : 0;  // a Java exception stops the reply
}
}  // namespace

extern "C" {

jstring JNI_FN(version)(JNIEnv *env, jclass) { return env->NewStringUTF(mcv_version()); }

jlong JNI_FN(loadModel)(JNIEnv *env, jclass, jbyteArray text, jbyteArray mmproj, jint n_ctx, jint n_threads,
                        jint n_gpu_layers, jint max_slices) {
    std::string t, m;
    if (!bytes(env, text, t)) return check(env, MCV_ERR_INVALID_ARG, "text path is null"), 0;
    bool has_mm = bytes(env, mmproj, m);
    mcv_model_params p;
    mcv_model_params_init(&p);
    if (n_ctx > 0) p.n_ctx = n_ctx;
    p.n_threads = n_threads;
    p.n_gpu_layers = n_gpu_layers;
    p.max_slices = max_slices;
    mcv_model *model = nullptr;
    check(env, mcv_model_load(t.c_str(), has_mm ? m.c_str() : nullptr, &p, &model), mcv_last_error());
    return reinterpret_cast<jlong>(model);
}

void JNI_FN(freeModel)(JNIEnv *env, jclass, jlong m) {
    int rc = mcv_model_free(M(m));
    check(env, rc, m ? mcv_model_errmsg(M(m)) : "");
}

jlong JNI_FN(createSession)(JNIEnv *env, jclass, jlong m) {
    mcv_session *s = nullptr;
    check(env, mcv_session_create(M(m), &s), mcv_last_error());
    return reinterpret_cast<jlong>(s);
}

void JNI_FN(freeSession)(JNIEnv *env, jclass, jlong s) { check(env, mcv_session_free(S(s)), mcv_last_error()); }
void JNI_FN(reset)(JNIEnv *env, jclass, jlong s) { check_s(env, s, mcv_session_reset(S(s))); }
void JNI_FN(cancel)(JNIEnv *, jclass, jlong s) { mcv_session_cancel(S(s)); }

void JNI_FN(addText)(JNIEnv *env, jclass, jlong s, jint role, jbyteArray utf8) {
    std::string t;
    bool ok = bytes(env, utf8, t);
    check_s(env, s, mcv_session_add_text(S(s), (mcv_role)role, ok ? t.c_str() : nullptr));
}

void JNI_FN(addImage)(JNIEnv *env, jclass, jlong s, jbyteArray data) {
    std::string b;
    bool ok = bytes(env, data, b);
    check_s(env, s, mcv_session_add_image_bytes(S(s), ok ? reinterpret_cast<const uint8_t *>(b.data()) : nullptr, b.size()));
}

void JNI_FN(addImageRgb)(JNIEnv *env, jclass, jlong s, jbyteArray rgb, jint w, jint h, jint stride) {
    std::string b;
    if (!bytes(env, rgb, b) || (int64_t)stride * h > (int64_t)b.size()) {
        check(env, MCV_ERR_INVALID_ARG, "rgb array shorter than stride * height");
        return;
    }
    check_s(env, s, mcv_session_add_image_rgb(S(s), reinterpret_cast<const uint8_t *>(b.data()), w, h, stride));
}

// ---- 0.3: prefill ahead, per-image budgets ----
namespace {
mcv_image_params image_params(jint max_slices, jlong max_pixels, bool video_frame) {
    mcv_image_params p;
    mcv_image_params_init(&p);
    p.max_slices = max_slices;
    p.max_pixels = max_pixels;
    p.video_frame = video_frame ? 1 : 0;
    return p;
}

bool rgb_arg(JNIEnv *env, jbyteArray rgb, jint h, jint stride, std::string &b) {
    if (bytes(env, rgb, b) && (int64_t)stride * h <= (int64_t)b.size()) return true;
    check(env, MCV_ERR_INVALID_ARG, "rgb array shorter than stride * height");
    return false;
}
}  // namespace

void JNI_FN(prefillText)(JNIEnv *env, jclass, jlong s, jint role, jbyteArray utf8) {
    std::string t;
    bool ok = bytes(env, utf8, t);
    check_s(env, s, mcv_session_prefill_text(S(s), (mcv_role)role, ok ? t.c_str() : nullptr));
}

void JNI_FN(prefillImage)(JNIEnv *env, jclass, jlong s, jbyteArray data, jint max_slices, jlong max_pixels) {
    std::string b;
    bool ok = bytes(env, data, b);
    mcv_image_params p = image_params(max_slices, max_pixels, false);
    check_s(env, s, mcv_session_prefill_image(S(s), ok ? reinterpret_cast<const uint8_t *>(b.data()) : nullptr,
                                              b.size(), &p));
}

void JNI_FN(prefillImageRgb)(JNIEnv *env, jclass, jlong s, jbyteArray rgb, jint w, jint h, jint stride,
                             jint max_slices, jlong max_pixels) {
    std::string b;
    if (!rgb_arg(env, rgb, h, stride, b)) return;
    mcv_image_params p = image_params(max_slices, max_pixels, false);
    check_s(env, s, mcv_session_prefill_image_rgb(S(s), reinterpret_cast<const uint8_t *>(b.data()), w, h, stride, &p));
}

void JNI_FN(prefillVideoFrame)(JNIEnv *env, jclass, jlong s, jbyteArray rgb, jint w, jint h, jint stride,
                               jboolean new_video) {
    std::string b;
    if (!rgb_arg(env, rgb, h, stride, b)) return;
    const uint8_t *px = reinterpret_cast<const uint8_t *>(b.data());
    mcv_image_params p = image_params(0, 0, true);
    p.video_frame = new_video ? 2 : 1;
    check_s(env, s, new_video ? mcv_session_prefill_image_rgb(S(s), px, w, h, stride, &p)
                              : mcv_session_prefill_video_frame(S(s), px, w, h, stride));
}

jintArray JNI_FN(imageCost)(JNIEnv *env, jclass, jlong s, jint w, jint h, jint max_slices, jlong max_pixels,
                            jboolean video_frame) {
    mcv_image_params p = image_params(max_slices, max_pixels, video_frame);
    mcv_image_cost c{};
    c.struct_size = sizeof(c);
    if (check_s(env, s, mcv_session_image_cost(S(s), w, h, &p, &c)) < 0) return nullptr;
    jint v[7] = {c.width, c.height, c.n_chunks, c.grid_cols, c.grid_rows, c.n_tokens, c.n_embd_rows};
    jintArray a = env->NewIntArray(7);
    if (a) env->SetIntArrayRegion(a, 0, 7, v);
    return a;
}

void JNI_FN(endTurn)(JNIEnv *env, jclass, jlong s) { check_s(env, s, mcv_session_end_turn(S(s))); }

void JNI_FN(setThinking)(JNIEnv *env, jclass, jlong s, jboolean on) {
    check_s(env, s, mcv_session_set_thinking(S(s), on ? 1 : 0));
}

jint JNI_FN(generate)(JNIEnv *env, jclass, jlong s, jint max_tokens, jfloat temperature, jobject cb) {
    if (!cb) return check(env, MCV_ERR_INVALID_ARG, "callback is null");
    jclass cls = env->GetObjectClass(cb);
    CbCtx ctx{env, cb, env->GetMethodID(cls, "onPiece", "([B)Z")};
    if (!ctx.on_piece) return MCV_ERR_INVALID_ARG;  // NoSuchMethodError pending
    mcv_gen_params gp;
    mcv_gen_params_init(&gp);
    gp.max_tokens = max_tokens;
    gp.temperature = temperature;
    int rc = mcv_session_generate(S(s), &gp, on_piece, &ctx);
    if (rc == MCV_ERR_CANCELLED) return rc;
    return check_s(env, s, rc);
}

jbyteArray JNI_FN(promptText)(JNIEnv *env, jclass, jlong s, jboolean with_prefix) {
    char *out = nullptr;
    if (check_s(env, s, mcv_session_prompt_text(S(s), with_prefix ? 1 : 0, &out)) < 0) return nullptr;
    std::string t(out);
    mcv_string_free(out);
    return to_bytes(env, t.data(), t.size());
}

jdoubleArray JNI_FN(stats)(JNIEnv *env, jclass, jlong s) {
    mcv_stats st{};
    st.struct_size = sizeof(st);
    if (check_s(env, s, mcv_session_stats(S(s), &st)) < 0) return nullptr;
    // order: NativeBridge.stats() documents it
    double v[] = {st.image_encode_ms, st.prefill_tok_per_s, st.decode_tok_per_s, st.ttft_ms,
                  (double)st.n_ctx_used, (double)st.n_images, (double)st.finish_reason,
                  st.prefill_ms, st.decode_ms, (double)st.n_prefill_tokens, (double)st.n_decode_tokens,
                  st.last_image_encode_ms, st.last_image_ms, (double)st.last_image_n_tokens,
                  (double)st.last_image_n_chunks, (double)st.n_encoded_chunks, (double)st.n_video_frames,
                  (double)st.n_ctx};
    const jsize n = (jsize)(sizeof(v) / sizeof(v[0]));
    jdoubleArray a = env->NewDoubleArray(n);
    if (a) env->SetDoubleArrayRegion(a, 0, n, v);
    return a;
}

}  // extern "C"

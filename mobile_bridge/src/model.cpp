// Versions, status strings, errors, logging, model load/free.
#include "internal.h"

#include "mtmd-helper.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

using namespace mcv;

namespace {
thread_local std::string t_err;
std::mutex g_log_mu;
mcv_log_callback g_log_cb = nullptr;
void *g_log_user = nullptr;
bool g_log_custom = false;
thread_local int t_last_level = GGML_LOG_LEVEL_INFO;

void log_trampoline(ggml_log_level level, const char *text, void *) {
    int lvl = level == GGML_LOG_LEVEL_CONT ? t_last_level : (int)level;
    t_last_level = lvl;
    std::lock_guard<std::mutex> lk(g_log_mu);
    if (g_log_custom) {
        if (g_log_cb) g_log_cb(lvl, text, g_log_user);
    } else if (lvl >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

// On x86 CPUs with AMX, llama.cpp 0c1e570's repacked (extra) buffer types
// segfault in llama_decode on Q8_0 weights (edge_runtime/engine.py Model).
bool cpu_has_amx() {
#if defined(__x86_64__) && defined(__linux__)
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("flags", 0) == 0 && line.find(" amx_int8") != std::string::npos) return true;
#endif
    return false;
}

int physical_cores() {
    unsigned n = std::thread::hardware_concurrency();
    if (n == 0) return 4;
    return (int)(n > 4 ? n / 2 : n);  // hyper-threads slow llama.cpp's decode
}

bool readable(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    fclose(f);
    return true;
}
}  // namespace

namespace mcv {
int fail(std::string *handle_err, int code, const std::string &msg) {
    t_err = msg;
    if (handle_err) *handle_err = msg;
    return code;
}

void clear_thread_error() { t_err.clear(); }

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_trampoline, nullptr);
        mtmd_helper_log_set(log_trampoline, nullptr);  // also sets mtmd_log_set
        llama_backend_init();
    });
}
}  // namespace mcv

extern "C" {

const char *mcv_version(void) { return MCV_VERSION_STRING; }
int32_t mcv_version_number(void) { return MCV_VERSION_NUMBER; }
int32_t mcv_abi_version(void) { return MCV_ABI_VERSION; }
const char *mcv_last_error(void) { return t_err.c_str(); }
void mcv_string_free(char *s) { free(s); }

const char *mcv_status_string(int status) {
    switch (status) {
        case MCV_OK: return "ok";
        case MCV_DONE: return "done";
        case MCV_ERR_INVALID_ARG: return "invalid argument";
        case MCV_ERR_IO: return "file missing or unreadable";
        case MCV_ERR_MODEL_LOAD: return "text model could not be loaded";
        case MCV_ERR_MMPROJ_LOAD: return "projector could not be loaded";
        case MCV_ERR_MISMATCH: return "text model and projector do not match";
        case MCV_ERR_FORMAT: return "minicpmv_edge metadata missing or malformed";
        case MCV_ERR_IMAGE: return "image could not be decoded";
        case MCV_ERR_CONTEXT_FULL: return "context is full";
        case MCV_ERR_CANCELLED: return "cancelled";
        case MCV_ERR_DECODE: return "decode failed";
        case MCV_ERR_NO_MEMORY: return "out of memory";
        case MCV_ERR_BUFFER_TOO_SMALL: return "buffer too small";
        case MCV_ERR_UNSUPPORTED: return "unsupported";
        case MCV_ERR_STATE: return "call not valid in this state";
        case MCV_ERR_BUSY: return "session busy";
        case MCV_ERR_INTERNAL: return "internal error";
        default: return "unknown status";
    }
}

void mcv_set_log_callback(mcv_log_callback cb, void *user_data) {
    {
        std::lock_guard<std::mutex> lk(g_log_mu);
        g_log_cb = cb;
        g_log_user = user_data;
        g_log_custom = true;
    }
    ensure_backend();
}

void mcv_model_params_init(mcv_model_params *p) {
    if (!p) return;
    memset(p, 0, sizeof(*p));
    p->struct_size = sizeof(*p);
    p->n_ctx = 4096;
    p->n_batch = 512;
    p->n_threads = 0;
    p->n_gpu_layers = 0;
    p->mmproj_use_gpu = 0;
    p->max_slices = 0;
    p->image_max_pixels = 0;
}

int mcv_model_load(const char *text_path, const char *mmproj_path, const mcv_model_params *params,
                   mcv_model **out) {
    clear_thread_error();
    if (!out) return fail(nullptr, MCV_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!text_path) return fail(nullptr, MCV_ERR_INVALID_ARG, "text_path is NULL");
    mcv_model_params p;
    mcv_model_params_init(&p);
    if (params) {
        // ABI v1 ends at image_max_pixels: smaller is a caller bug; larger comes from a newer
        // header, whose extra fields this build does not know (read the known prefix only).
        const size_t v1 = offsetof(mcv_model_params, image_max_pixels) + sizeof(int64_t);
        if (params->struct_size < v1)
            return fail(nullptr, MCV_ERR_INVALID_ARG, "mcv_model_params.struct_size too small (call mcv_model_params_init)");
        memcpy(&p, params, params->struct_size < sizeof(p) ? params->struct_size : sizeof(p));
        p.struct_size = sizeof(p);
    }
    if (p.n_ctx < 64 || p.n_batch < 1) return fail(nullptr, MCV_ERR_INVALID_ARG, "n_ctx must be >= 64 and n_batch >= 1");
    if (p.n_threads > 512)  // GGML_MAX_N_THREADS (ggml.h): ggml crashes past it
        return fail(nullptr, MCV_ERR_INVALID_ARG, "n_threads must be <= 512 (0 = physical cores)");
    if (!readable(text_path)) return fail(nullptr, MCV_ERR_IO, std::string("cannot open text model: ") + text_path);
    if (mmproj_path && !readable(mmproj_path))
        return fail(nullptr, MCV_ERR_IO, std::string("cannot open projector: ") + mmproj_path);
    ensure_backend();

    auto *m = new (std::nothrow) mcv_model();
    if (!m) return fail(nullptr, MCV_ERR_NO_MEMORY, "out of memory");
    m->params = p;
    m->n_threads = p.n_threads > 0 ? p.n_threads : physical_cores();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p.n_gpu_layers;
    mp.use_extra_bufts = !cpu_has_amx();
    m->lm = llama_model_load_from_file(text_path, mp);
    if (!m->lm) {
        delete m;
        return fail(nullptr, MCV_ERR_MODEL_LOAD, std::string("llama.cpp could not load the text model: ") + text_path);
    }
    m->vocab = llama_model_get_vocab(m->lm);
    std::string err;
    int rc = read_prompt_format(m->lm, mmproj_path, m->fmt, err);
    std::string positions;
    if (rc == MCV_OK && mmproj_path && meta_str(m->lm, "minicpmv_edge.image.positions", positions) &&
        positions == "canvas") {
        // MiniCPM-V 4.7: every image token and marker needs its (t, h, w) canvas position and an
        // index-causal mask (edge_runtime/canvas_positions.py); mtmd's helpers give neither
        rc = MCV_ERR_UNSUPPORTED;
        err = "images with canvas M-RoPE positions (MiniCPM-V 4.7) are not supported by the bridge yet; "
              "load the text model without a projector for text chat, or use the Python runtime";
    }
    if (rc == MCV_OK && mmproj_path) rc = check_pair(m->lm, m->fmt, mmproj_path, err, &m->slicing);
    if (rc != MCV_OK) {
        llama_model_free(m->lm);
        delete m;
        return fail(nullptr, rc, err);
    }
    const int gguf_max = m->fmt.max_slice_nums;
    m->fit.max_slices = p.max_slices > 0 && p.max_slices < gguf_max ? p.max_slices : gguf_max;
    m->fit.slice_side = m->fmt.scale_resolution;
    m->fit.max_pixels = p.image_max_pixels;
    std::string vmax;  // slices per video frame (schema.py EDGE_VIDEO_MAX_SLICE; 1 when absent)
    if (meta_str(m->lm, "minicpmv_edge.video.max_slice_nums", vmax)) m->video_max_slices = std::max(1, atoi(vmax.c_str()));
    if (m->video_max_slices > gguf_max) m->video_max_slices = gguf_max;
    if (mmproj_path) {
        mtmd_context_params cp = mtmd_context_params_default();
        cp.use_gpu = p.mmproj_use_gpu != 0;
        cp.n_threads = m->n_threads;
        cp.print_timings = false;
        cp.warmup = false;
        m->mctx = mtmd_init_from_file(mmproj_path, m->lm, cp);
        if (!m->mctx || !mtmd_support_vision(m->mctx)) {
            if (m->mctx) mtmd_free(m->mctx);
            llama_model_free(m->lm);
            delete m;
            return fail(nullptr, MCV_ERR_MMPROJ_LOAD, std::string("mtmd could not load the projector: ") + mmproj_path);
        }
        m->marker = mtmd_default_marker();
        // how a video reaches the prompt (model_facts.py video_placeholder / video_use_image_id); a
        // GGUF without our keys: the minicpmv4_6 projector's families have the one-placeholder form
        std::string vph, vid;
        m->video_frames_joined = m->fmt.own_keys ? meta_str(m->lm, "minicpmv_edge.prompt.video_placeholder", vph) && !vph.empty()
                                                 : m->fmt.projector_type == "minicpmv4_6";
        m->video_use_image_id = meta_str(m->lm, "minicpmv_edge.video.use_image_id", vid) && vid == "true";
    }
    *out = m;
    return MCV_OK;
}

int mcv_model_free(mcv_model *m) {
    if (!m) return MCV_OK;
    if (m->n_sessions.load() > 0)
        return fail(&m->err, MCV_ERR_STATE, "model still has sessions; free them first");
    if (m->mctx) mtmd_free(m->mctx);
    if (m->lm) llama_model_free(m->lm);
    delete m;
    return MCV_OK;
}

const char *mcv_model_errmsg(const mcv_model *m) { return m ? m->err.c_str() : t_err.c_str(); }

int32_t mcv_model_meta(const mcv_model *m, const char *key, char *buf, size_t buf_size) {
    if (!m || !key) return -1;
    std::string v;
    if (!meta_str(m->lm, key, v)) return -1;
    if (buf && buf_size > 0) {
        size_t n = v.size() < buf_size - 1 ? v.size() : buf_size - 1;
        memcpy(buf, v.data(), n);
        buf[n] = '\0';
    }
    return (int32_t)v.size();
}

int32_t mcv_model_has_vision(const mcv_model *m) { return m && m->mctx ? 1 : 0; }

}  // extern "C"

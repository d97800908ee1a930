// MiniCPM-V 4.5's vision tower output (the patch features before the resampler) from llama.cpp's
// own encoder graph. Why: the 3D resampler of 4.5's video recipe attends over the patches of up
// to six frames at once, while clip.cpp's MINICPMV graph resamples each image alone; clip.h has no
// call that returns the tower's output. The graph is built and run by clip.cpp unchanged; a
// ggml scheduler eval callback (clip_context_params.cb_eval, the hook llama.cpp's eval-callback
// tool uses) watches for the resampler's first matmul, `resampler.kv.weight` x features
// (models/minicpmv.cpp: build_mm(model.mm_model_kv_proj, embeddings)), copies its input out and
// stops the graph there. The resampler step itself is ours (edge_runtime/resampler3d.py).
// Built like clip_encode.cpp: against the same llama.cpp commit's headers, linked to libmtmd.
#include "clip.h"
#include "clip-impl.h"
#include "clip_shim.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <cstring>
#include <exception>
#include <vector>


namespace {

const char * const KV_WEIGHT = "resampler.kv.weight";

struct vit_ctx {
    clip_ctx * ctx = nullptr;
    float * out = nullptr;   // caller's buffer during one encode
    size_t out_len = 0;
    int n_embd = 0;          // of the captured features
    int n_pos = 0;
    int status = 0;          // 1 captured, 0 not seen, -1 wrong type or too small
};

bool is_kv_matmul(const ggml_tensor * t) {
    // the scheduler may hand a weight over as a copy named "<backend>#<name>#<n>"
    return t->op == GGML_OP_MUL_MAT && t->src[0] != nullptr && t->src[1] != nullptr &&
           std::strstr(t->src[0]->name, KV_WEIGHT) != nullptr;
}

bool on_eval(ggml_tensor * t, bool ask, void * user) {
    auto * s = static_cast<vit_ctx *>(user);
    if (ask) {
        return s->status == 0 && is_kv_matmul(t);
    }
    if (!is_kv_matmul(t)) {
        return true;
    }
    const ggml_tensor * x = t->src[1];  // [n_embd, n_pos, 1]: post_ln output of the tower
    const size_t n = (size_t) ggml_nelements(x);
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x) || n > s->out_len) {
        s->status = -1;
        return false;
    }
    ggml_backend_tensor_get(x, s->out, 0, n * sizeof(float));
    s->n_embd = (int) x->ne[0];
    s->n_pos = (int) (n / x->ne[0]);
    s->status = 1;
    return false;  // the rest of the graph (clip.cpp's 2D resampler) is not needed
}

}  // namespace

EDGE_API int edge_vit_abi_version(void) { return 1; }

EDGE_API void * edge_vit_init(const char * path, int use_gpu) {
    auto * s = new vit_ctx();
    s->ctx = edge_load_vision(path, use_gpu, on_eval, s);
    if (s->ctx == nullptr) {
        delete s;
        return nullptr;
    }
    return s;
}

EDGE_API void edge_vit_free(void * handle) {
    auto * s = static_cast<vit_ctx *>(handle);
    if (s == nullptr) return;
    if (s->ctx) clip_free(s->ctx);
    delete s;
}

// 1 when the projector is MiniCPM-V's resampler (the graph this hook knows), else 0
EDGE_API int edge_vit_is_resampler(void * handle) {
    auto * s = static_cast<vit_ctx *>(handle);
    return clip_get_projector_type(s->ctx) == PROJECTOR_TYPE_MINICPMV ? 1 : 0;
}

// hwc: nx*ny*3 normalised floats (RGBRGB...); out: room for out_len floats; on success the
// features are [n_pos, n_embd] row-major (patches in row-major order) and *n_pos, *n_embd are set.
// returns 0 ok, 1 encoder failure, 2 features not seen in the graph, 3 out too small or not f32
EDGE_API int edge_vit_features(void * handle, int n_threads, int nx, int ny, const float * hwc, float * out,
                               size_t out_len, int * n_pos, int * n_embd) {
    auto * s = static_cast<vit_ctx *>(handle);
    try {
        clip_image_f32 img;
        img.set_size(clip_image_size{nx, ny}, false, false);
        img.cpy_buf(std::vector<float>(hwc, hwc + (size_t) nx * ny * 3));
        std::vector<float> sink((size_t) clip_n_output_tokens(s->ctx, &img) * clip_n_mmproj_embd(s->ctx));
        s->out = out;
        s->out_len = out_len;
        s->status = 0;
        const bool ok = clip_image_encode(s->ctx, n_threads, &img, sink);
        s->out = nullptr;
        if (s->status == 1) {
            *n_pos = s->n_pos;
            *n_embd = s->n_embd;
            return 0;
        }
        if (s->status == -1) return 3;
        return ok ? 2 : 1;
    } catch (const std::exception &) {
        s->out = nullptr;
        return 1;
    }
}

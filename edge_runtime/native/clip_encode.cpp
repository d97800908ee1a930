// A C entry point over llama.cpp's vision encoder (tools/mtmd/clip.h) that takes pixels we
// preprocessed ourselves. Why: mtmd only accepts RGB bitmaps and always resizes/slices them with
// its own rules (letterboxed refine image, 448x448 stretch of small images), so crops laid out the
// way transformers' MiniCPM-V processors lay them out cannot reach the encoder through mtmd.h.
// clip.h is an internal C++ header of the same llama.cpp commit; this file is compiled against
// that commit's headers and linked to the libmtmd that llama-cpp-python ships
// (edge_runtime/clip_encoder.py builds it once per llama.cpp version into a cache folder).
#include "clip.h"
#include "clip-impl.h"
#include "clip_shim.h"

#include <cstring>
#include <exception>
#include <vector>

EDGE_API int edge_clip_abi_version(void) { return 1; }

// returns the vision context, or nullptr when the file has no vision encoder or fails to load
EDGE_API void * edge_clip_init(const char * path, int use_gpu) {
    return edge_load_vision(path, use_gpu, nullptr, nullptr);
}

EDGE_API void edge_clip_free(void * ctx) {
    if (ctx) clip_free(static_cast<clip_ctx *>(ctx));
}

EDGE_API int edge_clip_n_embd(void * ctx) {
    return clip_n_mmproj_embd(static_cast<clip_ctx *>(ctx));
}

static clip_image_f32 make_image(int nx, int ny, const float * hwc) {
    clip_image_f32 img;
    img.set_size(clip_image_size{nx, ny}, hwc == nullptr, false);
    if (hwc) {
        img.cpy_buf(std::vector<float>(hwc, hwc + (size_t) nx * ny * 3));
    }
    return img;
}

// output tokens of one nx x ny crop (0 when the size is not valid for this projector)
EDGE_API int edge_clip_n_tokens(void * ctx, int nx, int ny) {
    try {
        clip_image_f32 img = make_image(nx, ny, nullptr);
        return clip_n_output_tokens(static_cast<clip_ctx *>(ctx), &img);
    } catch (const std::exception &) {
        return 0;
    }
}

// hwc: nx*ny*3 floats, RGBRGB..., already rescaled and normalised; out: n_tokens * n_embd floats.
// returns 0 on success, 1 when the encoder fails, 2 when out is too small
EDGE_API int edge_clip_encode(void * ctx, int n_threads, int nx, int ny, const float * hwc,
                              float * out, size_t out_len) {
    try {
        auto * c = static_cast<clip_ctx *>(ctx);
        clip_image_f32 img = make_image(nx, ny, hwc);
        // clip_encode copies into the caller's buffer only when it is already sized (mtmd does the same)
        std::vector<float> vec((size_t) clip_n_output_tokens(c, &img) * clip_n_mmproj_embd(c));
        if (vec.empty() || !clip_image_encode(c, n_threads, &img, vec)) {
            return 1;
        }
        if (vec.size() > out_len) {
            return 2;
        }
        std::memcpy(out, vec.data(), vec.size() * sizeof(float));
        return 0;
    } catch (const std::exception &) {
        return 1;
    }
}

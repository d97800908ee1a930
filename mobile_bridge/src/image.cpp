// Image input: encoded bytes (via mtmd-helper's stb_image) or raw RGB -> mtmd_bitmap,
// downscaled to the model's pixel cap before mtmd slices it.
#include "internal.h"

#include "mtmd-helper.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace mcv {

namespace {
const int64_t kMaxPixels = int64_t(1) << 26;  // 67 Mpx: refuse before allocating ~200 MB of RGB
const int32_t kMaxDim = 1 << 15;

// Encoded formats stb_image decodes. Anything else is refused here: mtmd-helper would
// otherwise try audio or hand the bytes to ffmpeg (MTMD_VIDEO builds).
bool known_image(const uint8_t *d, size_t n) {
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return true;              // JPEG
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return true;                   // PNG
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return true;  // GIF
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') return true;                                // BMP
    return false;
}

// Same rule as edge_runtime/api.py MiniCPMV._fit_slices: mtmd always allows 9 slices; fewer
// come from shrinking so that LLaVA-UHD's ceil(area / side^2) stays within the cap (1: the
// longest side fits one slice). image_max_pixels caps the area on top.
void target_size(int32_t w, int32_t h, const ImageFit &fit, int32_t &nw, int32_t &nh) {
    nw = w;
    nh = h;
    const double area = (double)w * h, side = fit.slice_side;
    double scale = 1.0;
    if (fit.max_slices >= 1 && fit.max_slices < 9)
        scale = fit.max_slices == 1 ? std::min(1.0, side / std::max(w, h))
                                    : std::min(1.0, std::sqrt(fit.max_slices * side * side / area) * 0.999);
    if (fit.max_pixels > 0 && area > (double)fit.max_pixels) scale = std::min(scale, std::sqrt(fit.max_pixels / area));
    if (scale >= 1.0) return;
    nw = std::max(2, (int32_t)(w * scale));
    nh = std::max(2, (int32_t)(h * scale));
}

// Bilinear resample of packed RGB (src rows `stride` bytes apart) into a packed nw x nh buffer.
void resize_rgb(const uint8_t *src, int32_t w, int32_t h, size_t stride, uint8_t *dst, int32_t nw, int32_t nh) {
    const double sx = (double)w / nw, sy = (double)h / nh;
    for (int32_t y = 0; y < nh; y++) {
        double fy = std::max(0.0, (y + 0.5) * sy - 0.5);
        int32_t y0 = std::min((int32_t)fy, h - 1), y1 = std::min(y0 + 1, h - 1);
        double wy = fy - y0;
        for (int32_t x = 0; x < nw; x++) {
            double fx = std::max(0.0, (x + 0.5) * sx - 0.5);
            int32_t x0 = std::min((int32_t)fx, w - 1), x1 = std::min(x0 + 1, w - 1);
            double wx = fx - x0;
            for (int c = 0; c < 3; c++) {
                double a = src[y0 * stride + x0 * 3 + c], b = src[y0 * stride + x1 * 3 + c];
                double cc = src[y1 * stride + x0 * 3 + c], d = src[y1 * stride + x1 * 3 + c];
                double v = (a * (1 - wx) + b * wx) * (1 - wy) + (cc * (1 - wx) + d * wx) * wy;
                dst[((size_t)y * nw + x) * 3 + c] = (uint8_t)std::lround(std::min(255.0, std::max(0.0, v)));
            }
        }
    }
}
}  // namespace

namespace {
// mtmd-image.cpp ensure_divide / get_best_resize / get_best_grid, same float arithmetic.
int ensure_divide(int length, int align) {
    return std::max(static_cast<int>(std::round(static_cast<float>(length) / align) * align), align);
}
void best_resize(int w, int h, int scale, int align, bool allow_upscale, int &ow, int &oh) {
    if (w * h > scale * scale || allow_upscale) {
        float r = static_cast<float>(w) / h;
        h = static_cast<int>(scale / std::sqrt(r));
        w = static_cast<int>(h * r);
    }
    ow = ensure_divide(w, align);
    oh = ensure_divide(h, align);
}
void best_grid(int max_slices, int multiple, float log_ratio, int &gx, int &gy) {
    gx = gy = 1;
    float min_error = INFINITY;
    for (int n : {multiple - 1, multiple, multiple + 1}) {
        if (n == 1 || n > max_slices) continue;
        for (int m = 1; m <= n; m++) {
            if (n % m) continue;
            float error = std::abs(log_ratio - std::log(1.0 * m / (n / m)));
            if (error < min_error) gx = m, gy = n / m, min_error = error;
        }
    }
}
}  // namespace

SlicePlan slice_plan(int w, int h, const SliceParams &sp) {
    SlicePlan p;
    const int align = sp.patch_size * sp.n_merge, side = sp.image_size;
    if (sp.keep_small_whole && (float)w * h / (side * side) <= 1.0f) {
        best_resize(w, h, side, align, true, p.ov_w, p.ov_h);
        return p;
    }
    if (w <= side && h <= side) {
        p.ov_w = p.ov_h = side;
        return p;
    }
    best_resize(w, h, side, align, false, p.ov_w, p.ov_h);
    const float log_ratio = std::log((float)w / h);
    const float ratio = (float)w * h / (side * side);
    const int multiple = (int)std::fmin(std::ceil(ratio), 9);
    best_grid(9, multiple, log_ratio, p.grid_x, p.grid_y);
    int cw, ch;
    best_resize(ensure_divide(w, p.grid_x) / p.grid_x, ensure_divide(h, p.grid_y) / p.grid_y, side, align, true, cw, ch);
    p.ref_w = cw * p.grid_x;
    p.ref_h = ch * p.grid_y;
    for (int y = 0; y < p.grid_y; y++)
        for (int x = 0; x < p.grid_x; x++) p.slices.push_back({x * cw, y * ch, cw, ch});
    return p;
}

mtmd_bitmap *bitmap_from_rgb(const uint8_t *rgb, int32_t w, int32_t h, int32_t stride, const ImageFit &fit,
                             std::string &err) {
    if (!rgb || w <= 0 || h <= 0 || w > kMaxDim || h > kMaxDim || (int64_t)w * h > kMaxPixels) {
        err = "raw image needs a buffer and 1..32768 x 1..32768 pixels (at most 67 Mpx)";
        return nullptr;
    }
    if (stride < 3 * w) {
        err = "stride must be >= 3 * width (RGB888)";
        return nullptr;
    }
    int32_t nw, nh;
    target_size(w, h, fit, nw, nh);
    std::vector<uint8_t> buf;
    try {
        buf.resize((size_t)nw * nh * 3);
    } catch (...) {
        err = "out of memory for the image";
        return nullptr;
    }
    if (nw == w && nh == h) {
        for (int32_t y = 0; y < h; y++) memcpy(&buf[(size_t)y * w * 3], rgb + (size_t)y * stride, (size_t)w * 3);
    } else {
        resize_rgb(rgb, w, h, (size_t)stride, buf.data(), nw, nh);
    }
    mtmd_bitmap *bm = mtmd_bitmap_init((uint32_t)nw, (uint32_t)nh, buf.data());
    if (!bm) err = "mtmd could not take the bitmap";
    return bm;
}

mtmd_bitmap *bitmap_from_bytes(const mtmd_context *ctx, const uint8_t *data, size_t size, const ImageFit &fit,
                               std::string &err) {
    if (!data || size == 0) {
        err = "image bytes are empty";
        return nullptr;
    }
    if (!known_image(data, size)) {
        err = "image bytes are not JPEG, PNG, GIF or BMP";
        return nullptr;
    }
    mtmd_helper_bitmap_wrapper w = mtmd_helper_bitmap_init_from_buf(ctx, data, size, false, mtmd_helper_init_opt_default());
    if (w.video_ctx) mtmd_helper_video_free(w.video_ctx);  // not expected for still images
    if (!w.bitmap || mtmd_bitmap_is_audio(w.bitmap)) {
        if (w.bitmap) mtmd_bitmap_free(w.bitmap);
        err = "image bytes could not be decoded";
        return nullptr;
    }
    uint32_t bw = mtmd_bitmap_get_nx(w.bitmap), bh = mtmd_bitmap_get_ny(w.bitmap);
    if ((int64_t)bw * bh > kMaxPixels) {
        mtmd_bitmap_free(w.bitmap);
        err = "image is larger than 67 Mpx";
        return nullptr;
    }
    int32_t nw, nh;
    target_size((int32_t)bw, (int32_t)bh, fit, nw, nh);
    if (nw == (int32_t)bw && nh == (int32_t)bh) return w.bitmap;
    std::string id = mtmd_bitmap_get_id(w.bitmap) ? mtmd_bitmap_get_id(w.bitmap) : "";
    mtmd_bitmap *small = bitmap_from_rgb(mtmd_bitmap_get_data(w.bitmap), (int32_t)bw, (int32_t)bh, (int32_t)bw * 3,
                                         fit, err);
    mtmd_bitmap_free(w.bitmap);
    if (small && !id.empty()) mtmd_bitmap_set_id(small, (id + "-" + std::to_string(nw) + "x" + std::to_string(nh)).c_str());
    return small;
}

}  // namespace mcv

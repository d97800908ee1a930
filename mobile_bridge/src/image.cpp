// Image input: a file (regular files only, size-capped), encoded bytes (via mtmd-helper's
// stb_image) or raw RGB -> mtmd_bitmap, downscaled to the model's pixel cap before mtmd slices it.
// Every image is held to the limits Python uses too (media_limits.h, one file for both), and an
// encoded image's dimensions are read from its header before anything is decoded.
#include "internal.h"

#include "media_limits.h"  // minicpmv_edge/data/media_limits.h: shared with minicpmv_edge/limits.py
#include "mtmd-helper.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

namespace mcv {

namespace {
uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
uint32_t le16(const uint8_t *p) { return (uint32_t)p[1] << 8 | p[0]; }
int64_t le32s(const uint8_t *p) { return (int32_t)((uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0]); }

// Width and height from the header of a PNG, GIF, BMP or JPEG, without decoding a pixel.
// Written here because the decoder (stb_image inside libmtmd) does not export stbi_info.
bool header_size(const uint8_t *d, size_t n, int64_t &w, int64_t &h) {
    if (n >= 24 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0 && memcmp(d + 12, "IHDR", 4) == 0) {
        w = be32(d + 16), h = be32(d + 20);
        return true;
    }
    if (n >= 10 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) {
        w = le16(d + 6), h = le16(d + 8);
        return true;
    }
    if (n >= 26 && d[0] == 'B' && d[1] == 'M') {
        const int64_t dib = le32s(d + 14);
        if (dib == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit sizes
            w = le16(d + 18), h = le16(d + 20);
        } else {
            w = le32s(d + 18), h = std::llabs(le32s(d + 22));  // negative height: top-down rows
        }
        return true;
    }
    if (n >= 4 && d[0] == 0xFF && d[1] == 0xD8) {  // JPEG: walk the segments to the first frame header
        size_t i = 2;
        while (i + 9 < n) {
            if (d[i] != 0xFF) return false;
            const uint8_t marker = d[i + 1];
            if (marker == 0xFF) { i++; continue; }  // fill byte
            if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }
            const size_t len = be16(d + i + 2);
            const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
            if (sof) {
                h = be16(d + i + 5), w = be16(d + i + 7);
                return true;
            }
            if (len < 2) return false;
            i += 2 + len;
        }
    }
    return false;
}
}  // namespace

bool image_dims_ok(int64_t w, int64_t h, std::string &err) {
    const int64_t lo = std::min(w, h), hi = std::max(w, h);
    std::string size = std::to_string(w) + "x" + std::to_string(h);
    if (lo < MCV_IMAGE_MIN_SIDE) {
        err = "image is " + size + "; both sides must be at least " + std::to_string(MCV_IMAGE_MIN_SIDE) + " pixels";
        return false;
    }
    if (w * h > (int64_t)MCV_IMAGE_MAX_PIXELS) {  // w, h < 2^32: no overflow in int64
        err = "image is " + size + " = " + std::to_string(w * h) + " pixels, over the limit of " +
              std::to_string((int64_t)MCV_IMAGE_MAX_PIXELS);
        return false;
    }
    if (hi > (int64_t)MCV_IMAGE_MAX_ASPECT * lo) {
        err = "image is " + size + ": aspect ratio over " + std::to_string(MCV_IMAGE_MAX_ASPECT) + ":1 is not supported";
        return false;
    }
    return true;
}

int read_image_file(const char *path, std::vector<uint8_t> &bytes, std::string &err) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the descriptor then decides
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        err = errno == ENOENT ? std::string("image file does not exist: ") + path
                              : std::string("cannot open image (") + strerror(errno) + "): " + path;
        return MCV_ERR_IO;
    }
    struct stat st;
    int rc = MCV_OK;
    if (fstat(fd, &st) != 0) {
        err = std::string("cannot stat image (") + strerror(errno) + "): " + path;
        rc = MCV_ERR_IO;
    } else if (!S_ISREG(st.st_mode)) {
        err = std::string(S_ISDIR(st.st_mode) ? "is a directory, not an image file: "
                                              : "is not a regular file (a device, FIFO or socket), not an image file: ") + path;
        rc = MCV_ERR_IO;
    } else if (st.st_size == 0) {
        err = std::string("image file is empty: ") + path;
        rc = MCV_ERR_IMAGE;
    } else if ((uint64_t)st.st_size > (uint64_t)MCV_IMAGE_MAX_FILE_BYTES) {
        err = "image file is " + std::to_string((long long)st.st_size) + " bytes, over the limit of " +
              std::to_string((long long)MCV_IMAGE_MAX_FILE_BYTES) + ": " + path;
        rc = MCV_ERR_IMAGE;
    } else {
        try {
            bytes.resize((size_t)st.st_size);
        } catch (...) {
            err = "out of memory for the image file";
            rc = MCV_ERR_NO_MEMORY;
        }
        size_t got = 0;
        while (rc == MCV_OK && got < bytes.size()) {
            const ssize_t r = read(fd, bytes.data() + got, bytes.size() - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                err = std::string("cannot read image (") + (r < 0 ? strerror(errno) : "file shrank") + "): " + path;
                rc = MCV_ERR_IO;
                break;
            }
            got += (size_t)r;
        }
    }
    close(fd);
    return rc;
}

int count_markers(const std::string &text, const std::string &marker) {
    int n = 0;
    for (size_t at = text.find(marker); !marker.empty() && at != std::string::npos; at = text.find(marker, at + marker.size()))
        n++;
    return n;
}

namespace {

// Encoded formats stb_image decodes. Anything else is refused here: mtmd-helper would
// otherwise try audio or hand the bytes to ffmpeg (MTMD_VIDEO builds).
bool known_image(const uint8_t *d, size_t n) {
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return true;              // JPEG
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return true;                   // PNG
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return true;  // GIF
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') return true;                                // BMP
    return false;
}

// Same rule as edge_runtime/image_budget.py fitted_size: mtmd always allows 9 slices; fewer
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

void fitted_size(int32_t w, int32_t h, const ImageFit &fit, int32_t &nw, int32_t &nh) { target_size(w, h, fit, nw, nh); }

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
    if (!rgb || w <= 0 || h <= 0) {
        err = "raw image needs a buffer and positive width and height";
        return nullptr;
    }
    if (!image_dims_ok(w, h, err)) return nullptr;
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
    if (size > (size_t)MCV_IMAGE_MAX_FILE_BYTES) {
        err = "image data is " + std::to_string(size) + " bytes, over the limit of " +
              std::to_string((long long)MCV_IMAGE_MAX_FILE_BYTES);
        return nullptr;
    }
    int64_t hw = 0, hh = 0;  // checked before decoding: a PNG bomb costs nothing
    if (!header_size(data, size, hw, hh)) {
        err = "image header is truncated or corrupt";
        return nullptr;
    }
    if (!image_dims_ok(hw, hh, err)) return nullptr;
    mtmd_helper_bitmap_wrapper w = mtmd_helper_bitmap_init_from_buf(ctx, data, size, false, mtmd_helper_init_opt_default());
    if (w.video_ctx) mtmd_helper_video_free(w.video_ctx);  // not expected for still images
    if (!w.bitmap || mtmd_bitmap_is_audio(w.bitmap)) {
        if (w.bitmap) mtmd_bitmap_free(w.bitmap);
        err = "image bytes could not be decoded";
        return nullptr;
    }
    uint32_t bw = mtmd_bitmap_get_nx(w.bitmap), bh = mtmd_bitmap_get_ny(w.bitmap);
    if (!image_dims_ok(bw, bh, err)) {  // the decoder's own idea of the size, checked again
        mtmd_bitmap_free(w.bitmap);
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

// Internal types of the bridge. C++17 over llama.h / mtmd.h / mtmd-helper.h / gguf.h only.
#pragma once

#include "minicpmv_edge.h"

#include "llama.h"
#include "mtmd.h"

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

namespace mcv {

// The chat template's behaviour as plain facts (the bridge cannot run jinja): read from the
// text GGUF's minicpmv_edge.* keys, or for a GGUF written by another tool from the detected
// family's row in family_facts.h (generated from minicpmv_edge/model_facts.py). Tests pin the
// bridge's prompt bytes to the jinja rendering of the model's own template.
struct PromptFormat {
    std::string family;
    std::string turn_prefix;     // with {role}
    std::string turn_suffix;
    std::string default_system;  // "" = no system turn
    std::string separator;       // joins content parts
    std::vector<std::string> stop;
    std::string image_id_template;  // with {id}
    bool use_image_id = false;
    bool thinking_supported = false;
    bool thinking_default = false;
    std::string thinking_prefix_on;
    std::string thinking_prefix_off;
    std::string think_close = "</think>";
    bool trim_content = false;   // message text goes through jinja's |trim (4.6)
    bool strip_history = false;  // answers before the last user message lose their <think> block
    bool own_keys = true;        // false: facts from the detected family (no minicpmv_edge.* keys)
    int max_slice_nums = 9;
    int scale_resolution = 448;
    std::string projector_type;  // what the mmproj must declare
    int projector_version = 0;   // clip.minicpmv_version it must carry (0: none)

    std::string image_placeholder(const std::string &marker, int index) const;
};

// Python str.format for one named field ("{name}"; "{{"/"}}" escape braces).
std::string format_field(const std::string &tmpl, const char *name, const std::string &value);
// Parses llama.cpp's rendering of a string array: ["a", "b\"c"] (src/llama-impl.cpp gguf_kv_to_str).
bool parse_string_array(const std::string &s, std::vector<std::string> &out);
// Reads the format from the model's metadata, or detects the family from llama.cpp's standard
// keys (general.architecture, the mmproj's clip.projector_type/minicpmv_version, the vocabulary
// size); returns MCV_OK, or MCV_ERR_FORMAT / MCV_ERR_UNSUPPORTED with a message.
int read_prompt_format(const llama_model *model, const char *mmproj_path, PromptFormat &fmt, std::string &err);
// An answer as the template renders it in history: |trim (trim_content), then everything up to
// the last </think> and the newlines after it dropped (strip_history).
std::string history_reply(const PromptFormat &fmt, const std::string &reply);
// Returns the metadata value as a string, or false when absent.
bool meta_str(const llama_model *model, const char *key, std::string &out);

// The projector's slicing parameters (mtmd's clip hparams; read from the mmproj GGUF).
struct SliceParams {
    int image_size = 448;         // clip.vision.image_size
    int patch_size = 14;          // clip.vision.patch_size
    int n_merge = 1;              // 4.6: clip.vision.projector.scale_factor (default 4); else 1
    bool keep_small_whole = false;  // 4.6 in 4x mode (n_merge 2)
};

// mtmd's LLaVA-UHD slicing of a w x h image (mtmd-image.cpp get_slice_instructions, 0c1e570);
// the same as edge_runtime/external_encoder.py slice_plan.
struct SlicePlan {
    int ov_w = 0, ov_h = 0;    // overview size
    int ref_w = 0, ref_h = 0;  // refined size (0 without slices)
    int grid_x = 0, grid_y = 0;
    struct Slice { int x, y, w, h; };
    std::vector<Slice> slices;  // row-major
};
SlicePlan slice_plan(int w, int h, const SliceParams &sp);

// Checks that mmproj_path is a projector for `model` (reads it with gguf.h, before mtmd init).
int check_pair(const llama_model *model, const PromptFormat &fmt, const char *mmproj_path, std::string &err,
               SliceParams *slicing = nullptr);

// How far an image is shrunk before mtmd slices it (mtmd has no runtime slice setter).
struct ImageFit {
    int max_slices = 9;      // effective cap: min(params.max_slices or GGUF max, GGUF max)
    int slice_side = 448;    // minicpmv_edge.image.scale_resolution
    int64_t max_pixels = 0;  // params.image_max_pixels (<= 0: none)
};

// The shared image limits (minicpmv_edge/data/media_limits.h): false + message when w x h breaks one.
bool image_dims_ok(int64_t w, int64_t h, std::string &err);
// A whole image file: regular files only (no devices, FIFOs), at most MCV_IMAGE_MAX_FILE_BYTES;
// returns MCV_OK or an mcv_status with a message naming the path.
int read_image_file(const char *path, std::vector<uint8_t> &bytes, std::string &err);
// How many times `marker` occurs in `text` (mtmd pairs each occurrence with one bitmap).
int count_markers(const std::string &text, const std::string &marker);

// Image input -> RGB bitmap (downscaled to `fit`); nullptr + message on failure.
mtmd_bitmap *bitmap_from_bytes(const mtmd_context *ctx, const uint8_t *data, size_t size, const ImageFit &fit,
                               std::string &err);
mtmd_bitmap *bitmap_from_rgb(const uint8_t *rgb, int32_t w, int32_t h, int32_t stride, const ImageFit &fit,
                             std::string &err);
// The size bitmap_from_* shrink a w x h image to under `fit` (w, h themselves when it fits).
void fitted_size(int32_t w, int32_t h, const ImageFit &fit, int32_t &nw, int32_t &nh);

// Error bookkeeping: per handle and per thread (see the header's "Errors").
int fail(std::string *handle_err, int code, const std::string &msg);
void clear_thread_error();
void ensure_backend();

}  // namespace mcv

struct mcv_model {
    llama_model *lm = nullptr;
    mtmd_context *mctx = nullptr;
    const llama_vocab *vocab = nullptr;
    mcv::PromptFormat fmt;
    mcv_model_params params{};
    int n_threads = 1;
    mcv::ImageFit fit;
    std::string marker;
    mcv::SliceParams slicing;
    int video_max_slices = 1;  // minicpmv_edge.video.max_slice_nums: slices per video frame
    // A video as one placeholder (4.6's <|video_pad|>, MiniCPMV4_6Processor.replace_video_token):
    // its frames back to back, behind an <image_id> only when video_use_image_id; the others join
    // frames like image parts without ids. The rule of edge_runtime/prompt.py _place_media.
    bool video_frames_joined = false;
    bool video_use_image_id = false;
    std::mutex vision_mu;  // mtmd_encode_chunk and its output buffer are not thread-safe
    std::atomic<int> n_sessions{0};
    std::string err;
};

struct mcv_session {
    mcv_model *model = nullptr;
    llama_context *lctx = nullptr;
    llama_sampler *smpl = nullptr;
    std::string err;
    std::atomic<bool> cancel{false};
    std::atomic<bool> busy{false};
    mcv_encode_fn encoder = nullptr;  // external vision encoder (mcv_session_set_encoder)
    void *encoder_user = nullptr;

    // conversation text: evaluated (in the KV cache) + pending (not yet evaluated)
    std::string evaluated, pending;
    int open_role = -1;      // role of the open turn, -1 none
    int open_parts = 0;      // parts in the open turn
    bool reply_open = false; // the open turn is a generated reply (closed by the next add)
    int last_role = -1;      // role of the latest turn, open or closed; -1 none (transcript.cpp)
    size_t content_at = 0;   // transcript offset where the open turn's content starts
    bool content_started = false;  // the open turn has non-whitespace content (trim_content)
    // the open reply, kept to rewrite it as the template renders past answers (transcript.cpp)
    int32_t reply_pos = -1;        // KV position right after the assistant turn prefix
    size_t reply_text = 0;         // evaluated.size() at that point
    std::string reply_prefix;      // the thinking prefix evaluated after it
    std::vector<uint8_t> reply_state;  // recurrent models: sequence state at reply_pos
    bool thinking = false;
    int n_images = 0;
    int n_videos = 0;              // videos (runs of frames) in this conversation: their <image_id> numbers
    // transcript length right after the latest video frame: unchanged when the next frame comes,
    // nothing was added in between, so that frame continues the video (npos: none)
    size_t frame_end = std::string::npos;
    int32_t n_past = 0;
    bool needs_reset = false;

    // generation state
    bool generating = false;
    bool finished = false;
    int finish = MCV_FINISH_NONE;
    int32_t max_tokens = 0, n_sampled = 0;
    llama_token to_decode = -1;  // sampled, emitted, not yet in the KV cache
    std::string to_decode_piece;
    std::string held;   // generated text not yet released (UTF-8 tail, stop-string prefix)
    std::string ready;  // a piece ready for the caller
    bool ready_valid = false;

    // stats
    double image_encode_ms = 0, prefill_ms = 0, ttft_ms = 0, t_begin = 0, t_first = 0, t_last = 0;
    int32_t n_prefill = 0;
    int32_t n_encoded_chunks = 0;  // vision-encoder runs (overviews + slices) in this conversation
    int32_t n_frames = 0;          // video frames in this conversation (they take no image id)
    double last_image_encode_ms = 0, last_image_ms = 0;  // the most recent image or frame
    int32_t last_image_n_tokens = 0, last_image_n_chunks = 0;
};

namespace mcv {
double now_ms();
// Evaluates s->pending (and `bm` at its media marker) into the KV cache; on failure the
// KV cache is rolled back to where it was (or to `rollback_to` >= 0, an earlier position: one
// cut, which recurrent memory can make when it is 0). n_tokens_out: positions added.
int eval_pending(mcv_session *s, mtmd_bitmap *bm, int32_t *n_tokens_out, int32_t rollback_to = -1);
int decode_tokens(mcv_session *s, const llama_token *toks, int32_t n);
void close_turn(mcv_session *s);    // transcript.cpp: trims; rewrites a closed reply as history
void finish_reply(mcv_session *s);  // ends a pull-style reply (keeps KV == transcript)
// transcript.cpp: the conversation as the chat template renders it
int append_part(mcv_session *s, int role, const std::string &text);  // one content part of `role`
int open_reply(mcv_session *s, bool thinking, int32_t *n_prefill);  // closes the user turn, evaluates
                                                                     // the assistant prefix (+ thinking)
std::string transcript(const mcv_session *s, bool with_generation_prefix);
void clear_transcript(mcv_session *s);
// How much of `pending` can be evaluated now (prefill ahead): all of it, except what closing the
// open turn may still rewrite: trailing whitespace of its content (|trim, trim_content) and the
// content of an assistant turn given as text (its history form, close_turn).
size_t evaluable_prefix(const mcv_session *s);
// Drops KV positions >= n_before (recurrent memory cannot cut: clears it and marks needs_reset).
void rollback(mcv_session *s, int32_t n_before);

// One image or video frame as the next user part (prefill.cpp). `fit` is this image's budget.
struct ImageRequest {
    ImageFit fit;
    bool video_frame = false;  // the GGUF's video slice budget; no per-image <image_id>
    bool new_video = false;    // mcv_image_params.video_frame == 2: starts a video even right after a frame
};
// Resolves mcv_image_params (NULL: the model's defaults) into a request; MCV_OK or an error on s.
int image_request(mcv_session *s, const mcv_image_params *p, ImageRequest &req);
// Adds and evaluates `bm` (takes ownership) as the request says; the conversation is unchanged on failure.
int add_bitmap(mcv_session *s, mtmd_bitmap *bm, const ImageRequest &req);

// Entry of every public session call: clears the thread's error, refuses NULL, a concurrent call
// (MCV_ERR_BUSY) and a session that an earlier failure left inconsistent.
#define MCV_GUARD(s)                                                                              \
    ::mcv::clear_thread_error();                                                                  \
    if (!(s)) return ::mcv::fail(nullptr, MCV_ERR_INVALID_ARG, "session is NULL");                \
    ::mcv::BusyGuard guard_(s);                                                                   \
    if (!guard_.ok) return ::mcv::fail(nullptr, MCV_ERR_BUSY, "session is in use by another thread"); \
    if ((s)->needs_reset)                                                                         \
    return ::mcv::fail(&(s)->err, MCV_ERR_STATE, "an earlier failure left the context inconsistent; call mcv_session_reset")

// Marks a session busy for one public call; a concurrent second call gets MCV_ERR_BUSY.
struct BusyGuard {
    mcv_session *s;
    bool ok;
    explicit BusyGuard(mcv_session *s_) : s(s_) {
        bool expected = false;
        ok = s && s->busy.compare_exchange_strong(expected, true);
    }
    ~BusyGuard() { if (ok) s->busy.store(false); }
};
}  // namespace mcv

/*
 * minicpmv_edge.h: the stable C ABI of the minicpmv-edge mobile bridge.
 *
 * One header, plain C99, over llama.cpp (llama.h + mtmd.h). Shaped after
 * sqlite3.h: opaque handles with named constructors and NULL-safe destructors,
 * integer status codes plus an error-message call, compile-time and run-time
 * version numbers, params structs whose first field is `struct_size`.
 *
 * ABI growth rules: structs only grow at the end (the library reads
 * min(struct_size, its own sizeof) bytes and keeps defaults for the rest);
 * functions never change signature (a changed behaviour gets a `_v2` name);
 * enum values are never renumbered. MCV_ABI_VERSION changes only on a break;
 * additions bump MCV_VERSION_MINOR (check mcv_version_number() >= 2000 before
 * calling a 0.2 function, >= 3000 for 0.3, through a dynamically loaded library).
 *
 * Prompt format: nothing model-specific lives here or in the wrappers. The
 * prompt is the model's own chat template; the bridge cannot run jinja, so it
 * renders the template from plain facts in the text GGUF's `minicpmv_edge.*`
 * metadata (docs/gguf-metadata.md: turns, trimming, thinking prefixes, past
 * answers losing their <think> block, stop strings, image ids), or for a GGUF
 * written by another tool from the family recognised by its standard keys.
 * Tests pin the bytes to the jinja rendering the Python runtime uses.
 *
 * Ownership:
 *  - Every `const char *` argument is read during the call only (copied if kept).
 *  - Image buffers passed in are read during the call only.
 *  - Strings returned through `char **` are owned by the caller and released
 *    with mcv_string_free(). Strings returned as `const char *` are owned by
 *    the library (lifetime stated per function).
 *  - Sessions borrow their model: free every session of a model before
 *    mcv_model_free(); freeing a model with live sessions returns
 *    MCV_ERR_STATE and frees nothing.
 *
 * Threads:
 *  - A model may be shared by sessions on different threads. The vision
 *    encoder is serialised by a lock inside the model.
 *  - One session is used by one thread at a time; a second concurrent call on
 *    the same session returns MCV_ERR_BUSY (it is detected, not undefined).
 *    Exception: mcv_session_cancel() may be called from any thread at any time.
 *  - Callbacks run on the thread that called mcv_session_generate().
 *
 * Errors: every function that can fail returns an mcv_status. The message of
 * the last failure is kept twice: per handle (mcv_model_errmsg /
 * mcv_session_errmsg; valid until the next failing call on that handle) and
 * per thread (mcv_last_error; valid until the next failing call on that
 * thread; this is the only place to look when no handle exists, e.g. when
 * mcv_model_load fails).
 */
#ifndef MINICPMV_EDGE_H
#define MINICPMV_EDGE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(MCV_BUILD)
#define MCV_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MCV_API __attribute__((visibility("default")))
#else
#define MCV_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versions ------------------------------------------------------------ */
#define MCV_VERSION_MAJOR 0
#define MCV_VERSION_MINOR 3 /* 0.2: external vision encoder; 0.3: prefill ahead, per-image budgets, frames */
#define MCV_VERSION_PATCH 0
#define MCV_VERSION_STRING "0.3.0"
/* major*1000000 + minor*1000 + patch; compare with mcv_version_number() */
#define MCV_VERSION_NUMBER (MCV_VERSION_MAJOR * 1000000 + MCV_VERSION_MINOR * 1000 + MCV_VERSION_PATCH)
#define MCV_ABI_VERSION 1

MCV_API const char *mcv_version(void);        /* static string, e.g. "0.1.0" */
MCV_API int32_t     mcv_version_number(void); /* MCV_VERSION_NUMBER of the built library */
MCV_API int32_t     mcv_abi_version(void);    /* MCV_ABI_VERSION of the built library */

/* ---- status codes -------------------------------------------------------- */
typedef enum mcv_status {
    MCV_OK = 0,
    MCV_DONE = 1,                   /* mcv_session_next: the reply has ended */
    MCV_ERR_INVALID_ARG = -1,       /* NULL handle/pointer, bad value, struct_size too small */
    MCV_ERR_IO = -2,                /* file missing or unreadable */
    MCV_ERR_MODEL_LOAD = -3,        /* llama.cpp rejected the text GGUF */
    MCV_ERR_MMPROJ_LOAD = -4,       /* the projector GGUF is unreadable or mtmd rejected it */
    MCV_ERR_MISMATCH = -5,          /* text model and projector are not a pair */
    MCV_ERR_FORMAT = -6,            /* minicpmv_edge.* metadata missing or malformed */
    MCV_ERR_IMAGE = -7,             /* image bytes/pixels could not be decoded or are too large */
    MCV_ERR_CONTEXT_FULL = -8,      /* the prompt does not fit into n_ctx */
    MCV_ERR_CANCELLED = -9,         /* mcv_session_cancel() stopped the call */
    MCV_ERR_DECODE = -10,           /* llama_decode / mtmd encode failed */
    MCV_ERR_NO_MEMORY = -11,
    MCV_ERR_BUFFER_TOO_SMALL = -12, /* mcv_session_next: *n_out holds the size needed */
    MCV_ERR_UNSUPPORTED = -13,      /* e.g. an image on a model loaded without projector */
    MCV_ERR_STATE = -14,            /* call not valid now (next without begin, model with sessions) */
    MCV_ERR_BUSY = -15,             /* the session is in use by another thread */
    MCV_ERR_INTERNAL = -16
} mcv_status;

MCV_API const char *mcv_status_string(int status); /* static string; never NULL */

/* ---- handles ------------------------------------------------------------- */
typedef struct mcv_model mcv_model;     /* weights + projector + prompt format */
typedef struct mcv_session mcv_session; /* one conversation: KV cache, sampler, counters */

/* ---- model --------------------------------------------------------------- */
typedef struct mcv_model_params {
    size_t  struct_size;      /* = sizeof(mcv_model_params); set by mcv_model_params_init */
    int32_t n_ctx;            /* context length of each session; default 4096 */
    int32_t n_batch;          /* logical = physical batch for prefill; default 512 */
    int32_t n_threads;        /* CPU threads; <= 0: physical cores (default) */
    int32_t n_gpu_layers;     /* layers offloaded to GPU/Metal; default 0 */
    int32_t mmproj_use_gpu;   /* 1: vision encoder on GPU if the build has one; default 0 */
    int32_t max_slices;       /* cap on image slices; <= 0: the GGUF's image.max_slice_nums.
                                 Enforced by downscaling before mtmd (it has no runtime setter),
                                 with the rule of edge_runtime/image_budget.py fitted_size; 1: no slicing. */
    int64_t image_max_pixels; /* larger images are downscaled to this many pixels; <= 0: no cap */
} mcv_model_params;

MCV_API void mcv_model_params_init(mcv_model_params *params); /* fills struct_size + defaults */

/* Loads a text GGUF and (optionally, NULL for text only) its mmproj GGUF.
 * The pair is validated from metadata before mtmd is initialised
 * (family, projector type/version, projection width vs n_embd): a wrong pair
 * gives MCV_ERR_MISMATCH. params may be NULL (defaults). On failure *out is
 * NULL and mcv_last_error() says why. */
MCV_API int mcv_model_load(const char *text_path, const char *mmproj_path,
                           const mcv_model_params *params, mcv_model **out);
MCV_API int  mcv_model_free(mcv_model *model); /* NULL-safe (returns MCV_OK) */
MCV_API const char *mcv_model_errmsg(const mcv_model *model); /* "" if none; NULL model: thread-local */

/* Copies a minicpmv_edge.* (or any) metadata value of the text GGUF as text;
 * returns the length, or -1 if absent. Like snprintf: output is truncated
 * to buf_size-1 bytes and always NUL-terminated when buf_size > 0. */
MCV_API int32_t mcv_model_meta(const mcv_model *model, const char *key, char *buf, size_t buf_size);
MCV_API int32_t mcv_model_has_vision(const mcv_model *model); /* 1/0 */

/* ---- session ------------------------------------------------------------- */
typedef enum mcv_role { MCV_ROLE_SYSTEM = 0, MCV_ROLE_USER = 1, MCV_ROLE_ASSISTANT = 2 } mcv_role;

MCV_API int mcv_session_create(mcv_model *model, mcv_session **out);
MCV_API int mcv_session_reset(mcv_session *session); /* forget the conversation, keep the context */
MCV_API int mcv_session_free(mcv_session *session);  /* NULL-safe */
MCV_API const char *mcv_session_errmsg(const mcv_session *session);

/* Conversation building. Parts accumulate into the open turn: a text with
 * the open turn's role is another part (joined by the model's content
 * separator, "\n" for MiniCPM-V); a different role closes the turn and opens
 * a new one. Images always belong to a user turn (one is opened if needed),
 * and are preceded by `<image_id>N</image_id>` when the model uses ids
 * (N counts images from 0 per conversation). Model-card order [image,
 * "question"] = add_image then add_text(USER, "question"). As the chat
 * templates require: a system text only first (else MCV_ERR_INVALID_ARG);
 * an assistant turn (given or generated) is rendered as the template renders
 * past answers once the next message comes (4.5 / 4.6: without the thinking
 * prefix and <think> block; the KV cache is cut back to the answer's start). */
MCV_API int mcv_session_add_text(mcv_session *session, mcv_role role, const char *utf8);
MCV_API int mcv_session_end_turn(mcv_session *session); /* close the open turn explicitly */

/* Images are decoded, sliced and encoded during the call (slow on phones:
 * call off the UI thread). Bytes: JPEG, PNG, BMP or GIF. Raw: RGB888, rows
 * `stride` bytes apart (stride >= 3*width). */
MCV_API int mcv_session_add_image_file(mcv_session *session, const char *path);
MCV_API int mcv_session_add_image_bytes(mcv_session *session, const uint8_t *data, size_t size);
MCV_API int mcv_session_add_image_rgb(mcv_session *session, const uint8_t *rgb,
                                      int32_t width, int32_t height, int32_t stride);

/* Thinking: appends the GGUF's thinking.prefix_on/off after the assistant
 * prefix (generation needs a user turn last: else MCV_ERR_STATE). MCV_ERR_UNSUPPORTED (state unchanged) when enabling on a model
 * without thinking.supported. Default: the GGUF's thinking.default. */
MCV_API int mcv_session_set_thinking(mcv_session *session, int32_t enabled);

/* ---- generation ---------------------------------------------------------- */
typedef struct mcv_gen_params {
    size_t   struct_size; /* = sizeof(mcv_gen_params); set by mcv_gen_params_init */
    int32_t  max_tokens;  /* default 512; <= 0: until the context is full */
    float    temperature; /* <= 0: greedy (default) */
    int32_t  top_k;       /* default 40 (only with temperature > 0) */
    float    top_p;       /* default 0.95 (only with temperature > 0) */
    uint32_t seed;        /* default 0xFFFFFFFF = random */
} mcv_gen_params;

MCV_API void mcv_gen_params_init(mcv_gen_params *params);

/* Called with each piece of the reply: complete UTF-8 (never a split
 * character), stop strings held back and removed, not NUL-terminated (len
 * bytes; valid during the call only). Return non-zero to stop. */
typedef int (*mcv_token_callback)(const char *piece, size_t len, void *user_data);

/* Closes the open turn, appends the assistant prefix (+ thinking prefix),
 * evaluates everything pending and streams the reply. Returns MCV_OK when
 * the reply ended (end-of-generation token, stop string, max_tokens or the
 * callback asked to stop), MCV_ERR_CANCELLED after mcv_session_cancel().
 * params may be NULL (defaults). The reply stays in the KV cache: the next
 * add_* continues the conversation after it. */
MCV_API int mcv_session_generate(mcv_session *session, const mcv_gen_params *params,
                                 mcv_token_callback callback, void *user_data);

/* Pull style: begin, then next until MCV_DONE (or an error), e.g. for JNI
 * loops. mcv_session_next copies the next piece NUL-terminated into buf:
 * *n_out = its length. If buf_size is too small it returns
 * MCV_ERR_BUFFER_TOO_SMALL, *n_out = bytes needed (incl. NUL), and keeps the
 * piece for the retry. mcv_session_next_alloc returns the piece as a new
 * string the caller frees with mcv_string_free (*out NULL on MCV_DONE). */
MCV_API int mcv_session_begin(mcv_session *session, const mcv_gen_params *params);
MCV_API int mcv_session_next(mcv_session *session, char *buf, size_t buf_size, size_t *n_out);
MCV_API int mcv_session_next_alloc(mcv_session *session, char **out);

/* Any thread, any time: stops the running generate/next/prefill at the next
 * token (also inside llama_decode via its abort callback; a single vision
 * encode is not interrupted). A cancel while nothing runs is ignored: each
 * generate/begin clears the flag. */
MCV_API void mcv_session_cancel(mcv_session *session);

MCV_API void mcv_string_free(char *s); /* NULL-safe */

/* ---- external vision encoder (since 0.2) -------------------------------- */
/* An app may replace mtmd's vision encoder with its own (CoreML, NNAPI, QNN,
 * an ONNX export of docs/vision-export.md). mtmd still decides the slicing,
 * inserts the <image>/<slice> text around each chunk and decodes the
 * embeddings (mtmd_helper_decode_image_chunk); only mtmd_encode_chunk is
 * skipped. The bridge calls the encoder once per image chunk, in order:
 * chunk 0 is the overview, chunks 1..n_chunks-1 are the slices, row-major.
 *
 * Pixels: mtmd does not expose its preprocessed slices, so the callback gets
 * the RGB image mtmd sliced (after the bridge's max_slices/image_max_pixels
 * downscale) and the geometry, and the app reproduces the preprocessing
 * (edge_runtime/external_encoder.py `preprocess` is the reference):
 *  - chunk 0: the whole image resized to width x height (bicubic, stretched);
 *  - slices: the whole image resized into refined_width x refined_height
 *    keeping its aspect (bicubic, centred on black), then the crop
 *    (slice_x, slice_y, width, height) of it;
 *  - then x/255, (x - mean)/std per channel (the mmproj's clip.vision.image_mean/std).
 * The `pixels` argument is reserved for a future built-in preprocessor: it is
 * NULL in this version.
 *
 * Output: write n_tokens * n_embd float32 into out_embd (row-major
 * [n_tokens][n_embd], out_floats == that product), what mtmd_encode_chunk
 * would have produced. Return MCV_OK (0), MCV_ENCODE_USE_DEFAULT to let mtmd
 * encode this chunk itself (e.g. a grid the app's model was not exported
 * for), or any other value to fail: the add_image call then returns
 * MCV_ERR_DECODE with a message naming the chunk and leaves the conversation
 * as it was. Non-finite outputs are refused the same way.
 *
 * Ownership and threads:
 *  - info, info->image_rgb and out_embd belong to the library and are valid
 *    during the callback only; `user` is passed through untouched and never
 *    freed. The registration is kept until replaced, survives
 *    mcv_session_reset and ends with mcv_session_free.
 *  - The callback runs synchronously on the thread that called
 *    mcv_session_add_image_*, while that session is busy: calling functions
 *    on the same session from it returns MCV_ERR_BUSY (other sessions are
 *    fine). The model's vision lock is not held during the callback, so
 *    encoders of different sessions may run in parallel: an encoder shared by
 *    sessions on several threads must be thread-safe itself.
 *  - mcv_session_cancel does not interrupt a running callback; the cancel
 *    takes effect after it returns. */
#define MCV_ENCODE_USE_DEFAULT 1

typedef struct mcv_slice_info {
    size_t  struct_size;     /* sizeof(mcv_slice_info) of the library; fields only grow at the end */
    int32_t image_index;     /* image of this conversation (0-based; the <image_id> number) */
    int32_t chunk_index;     /* 0: overview; 1..: slices, row-major */
    int32_t n_chunks;        /* chunks of this image: 1 + grid_cols * grid_rows */
    int32_t width, height;   /* this chunk's size in pixels after preprocessing (the encoder input) */
    int32_t patch_size;      /* encoder patch side in pixels: the patch grid is height/patch_size rows x
                                width/patch_size columns */
    int32_t n_tokens;        /* embedding rows mtmd expects for this chunk */
    int32_t n_embd;          /* floats per row (the text model's input width) */
    int32_t grid_cols, grid_rows;          /* slice grid; 0, 0 when the image is not sliced */
    int32_t slice_x, slice_y;              /* slices: top-left of the crop in the refined image; 0 for the overview */
    int32_t refined_width, refined_height; /* the image the slices are cut from; 0, 0 when not sliced */
    int32_t image_width, image_height;     /* the RGB image mtmd sliced */
    const uint8_t *image_rgb;              /* that image, packed RGB888 (image_width * 3 bytes per row) */
} mcv_slice_info;

typedef int (*mcv_encode_fn)(void *user, const mcv_slice_info *info, const float *pixels,
                             float *out_embd, size_t out_floats);

/* Registers (fn != NULL) or removes (fn == NULL) the session's external
 * encoder; applies to images added afterwards. MCV_ERR_UNSUPPORTED on a model
 * without projector. */
MCV_API int mcv_session_set_encoder(mcv_session *session, mcv_encode_fn fn, void *user);

/* ---- app-shaped calls: prefill ahead, per-image budgets (since 0.3) ------ */
/* The flow of a phone app (OpenBMB's MiniCPM-V-Apps bridge has the same shape):
 *
 *   picked a photo   -> mcv_session_prefill_image*()   (encode + KV now, while the user types)
 *   a video frame    -> mcv_session_prefill_video_frame()
 *   system / context -> mcv_session_prefill_text()
 *   sent a question  -> mcv_session_add_text(USER, q); mcv_session_generate()  (only q is evaluated)
 *   new chat         -> mcv_session_reset()
 *   stop button      -> mcv_session_cancel()   (any thread; also stops a prefill between chunks)
 *
 * Every prefill call evaluates everything pending (earlier add_text parts included) into the
 * KV cache before it returns, except what closing the turn may still rewrite as the chat
 * template does (trailing whitespace its |trim drops; an assistant answer given as text, whose
 * history form it writes), so the next generate evaluates only what was added after it:
 * mcv_stats.n_prefill_tokens of that reply counts the question's tokens (plus the turn's closing
 * and the assistant prefix), and n_encoded_chunks does not move. The prompt bytes are the same as
 * for the add_* calls (and as edge_runtime.prompt renders the conversation); text is tokenized
 * per call, split where the call boundaries are. mcv_session_add_image_* are
 * mcv_session_prefill_image_* with the model's defaults (they always prefilled).
 *
 * On failure (bad image, MCV_ERR_CANCELLED, context full, ...) the conversation is as it was
 * before the call. Exception: recurrent memory (4.6's Qwen3.5 layers) cannot be cut back to a
 * position inside the conversation; when tokens of the failed call were already evaluated
 * there, the context is cleared and calls return MCV_ERR_STATE until mcv_session_reset.
 * Slow (seconds per image on phones): call off the UI thread. */

typedef struct mcv_image_params {
    size_t  struct_size;  /* = sizeof(mcv_image_params); set by mcv_image_params_init */
    int32_t max_slices;   /* this image's slice budget; <= 0: the model's (mcv_model_params.max_slices,
                             else the GGUF's image.max_slice_nums; for video frames the GGUF's
                             video.max_slice_nums). 1: overview only. The image is downscaled so that
                             LLaVA-UHD's slice count stays within it (mtmd has no runtime setter).
                             Above the GGUF's image.max_slice_nums: MCV_ERR_UNSUPPORTED (mtmd at
                             llama.cpp 0c1e570 slices at most 9 per image). */
    int64_t max_pixels;   /* this image's pixel cap (downscaled above it); <= 0: the model's image_max_pixels */
    int32_t video_frame;  /* 0: an image (default). 1: a video frame (as mcv_session_prefill_video_frame):
                             not counted in n_images; it continues the video when nothing was
                             added since the previous frame, else starts one. 2: a frame that
                             starts a new video even right after another video's frames. */
} mcv_image_params;

MCV_API void mcv_image_params_init(mcv_image_params *params); /* fills struct_size + defaults */

/* Adds `utf8` as a part of a `role` turn (as mcv_session_add_text) and evaluates everything
 * pending now (but what closing the turn may rewrite, see above). */
MCV_API int mcv_session_prefill_text(mcv_session *session, mcv_role role, const char *utf8);

/* Adds an image to the open user turn (one is opened if needed) and encodes it into the KV
 * cache now. params may be NULL (the model's defaults). Bytes: JPEG, PNG, BMP or GIF; raw:
 * RGB888, rows `stride` bytes apart. */
MCV_API int mcv_session_prefill_image(mcv_session *session, const uint8_t *data, size_t size,
                                      const mcv_image_params *params);
MCV_API int mcv_session_prefill_image_file(mcv_session *session, const char *path,
                                           const mcv_image_params *params);
MCV_API int mcv_session_prefill_image_rgb(mcv_session *session, const uint8_t *rgb, int32_t width,
                                          int32_t height, int32_t stride, const mcv_image_params *params);

/* One decoded video frame (RGB888, e.g. from MediaCodec / AVFoundation at 1 fps), with the
 * GGUF's video slice budget (1: unsliced). Consecutive frames of a user turn are one video,
 * written as edge_runtime/prompt.py writes video parts: where the template has one placeholder
 * per video (minicpmv_edge.prompt.video_placeholder: 4.6, 4.7, OCR) the frames back to back,
 * behind an <image_id> per video only when minicpmv_edge.video.use_image_id is true (numbered
 * apart from the images'); elsewhere each frame like an image part without an id (the model
 * cards' video recipe). mcv_image_params.video_frame = 2 starts a new video. */
MCV_API int mcv_session_prefill_video_frame(mcv_session *session, const uint8_t *rgb, int32_t width,
                                            int32_t height, int32_t stride);

/* What an image of width x height would cost if prefilled next with `params` (NULL:
 * defaults), computed without encoding it (mtmd's own tokenizer on a placeholder bitmap):
 * the size it would be downscaled to, its chunks and slice grid, and the context positions it
 * would take. Cheap (no pixels, no encoder): call it to show or choose a budget before encoding. */
typedef struct mcv_image_cost {
    size_t  struct_size;           /* set by the caller to sizeof(mcv_image_cost) */
    int32_t width, height;         /* after the budget's downscale: what mtmd slices */
    int32_t n_chunks;              /* 1 (overview) + slices = vision-encoder runs */
    int32_t grid_cols, grid_rows;  /* slice grid; 0, 0 when not sliced */
    int32_t n_tokens;              /* context positions, with the <image>/<slice>/id tokens */
    int32_t n_embd_rows;           /* embedding rows the encoder produces (its compute) */
} mcv_image_cost;

MCV_API int mcv_session_image_cost(mcv_session *session, int32_t width, int32_t height,
                                   const mcv_image_params *params, mcv_image_cost *out);

/* ---- stats and introspection ------------------------------------------- */
typedef enum mcv_finish {
    MCV_FINISH_NONE = 0, MCV_FINISH_EOG = 1, MCV_FINISH_STOP_STRING = 2, MCV_FINISH_LENGTH = 3,
    MCV_FINISH_CALLBACK = 4, MCV_FINISH_CANCELLED = 5, MCV_FINISH_CONTEXT_FULL = 6
} mcv_finish;

typedef struct mcv_stats {
    size_t  struct_size;        /* set by the caller to sizeof(mcv_stats) */
    double  image_encode_ms;    /* total vision-encoder time in this conversation */
    double  prefill_ms;         /* last reply: time to evaluate its pending prompt */
    double  prefill_tok_per_s;  /* last reply: text tokens prefilled per second */
    double  decode_tok_per_s;   /* last reply: generated tokens per second (after the first) */
    double  ttft_ms;            /* last reply: begin -> first piece available */
    int32_t n_prefill_tokens;   /* last reply */
    int32_t n_decode_tokens;    /* last reply */
    int32_t n_ctx_used;         /* positions filled in the context */
    int32_t n_ctx;              /* context size */
    int32_t n_images;           /* images in this conversation */
    int32_t finish_reason;      /* mcv_finish of the last reply */
    /* since 0.3 (a 0.2 caller's smaller struct_size gets the fields above only) */
    double  decode_ms;            /* last reply: first sampled token -> last one */
    double  last_image_encode_ms; /* the most recent image or frame: vision encoder, all its chunks */
    double  last_image_ms;        /* the same image: the whole add/prefill call (decode, resize, encode, KV) */
    int32_t last_image_n_tokens;  /* context positions it took (its <image>/<slice>/id tokens included) */
    int32_t last_image_n_chunks;  /* its chunks: 1 (overview) + slices */
    int32_t n_encoded_chunks;     /* vision-encoder runs in this conversation (a reply adds none) */
    int32_t n_video_frames;       /* video frames in this conversation (not counted in n_images) */
} mcv_stats;

MCV_API int mcv_session_stats(const mcv_session *session, mcv_stats *out);

/* The conversation as prompt text (what is in the KV cache plus what is
 * pending; images appear as mtmd's media marker). With
 * with_generation_prefix != 0 the assistant prefix a generate() would add is
 * appended (without changing the session). For tests and debugging: it
 * equals the jinja rendering of the model's chat template for the same turns
 * (edge_runtime.prompt.PromptFormat.render).
 * *out is freed with mcv_string_free. */
MCV_API int mcv_session_prompt_text(mcv_session *session, int32_t with_generation_prefix, char **out);

/* ---- logging ------------------------------------------------------------- */
/* level: 2 info, 3 warning, 4 error (ggml's numbering). Process-wide; the
 * default prints warnings and errors to stderr. cb NULL: silence. Set before
 * loading models; the callback may be called from any thread. */
typedef void (*mcv_log_callback)(int level, const char *text, void *user_data);
MCV_API void mcv_set_log_callback(mcv_log_callback cb, void *user_data);

/* Last error message of the calling thread (see "Errors" above); "" if none. */
MCV_API const char *mcv_last_error(void);

#ifdef __cplusplus
}
#endif
#endif /* MINICPMV_EDGE_H */

"""Every GGUF metadata key minicpmv-edge writes or reads, in one place.

Two groups:

* `LLAMA_*` / `CLIP_*`: llama.cpp's own keys that the PyPI `gguf` package lacks or
  that must be written with an exact type, because llama.cpp asserts the type on
  read and aborts on a mismatch (ggml/src/gguf.cpp:195-196). The type is part of
  the name below (`_I32`, `_U32`).
* `EDGE_*`: our namespace, `minicpmv_edge.*`, in the text GGUF (and the family in
  the mmproj). These carry per-version runtime facts (prompt format, thinking
  rule, slice defaults, token counts) so that the Python runtime and the C bridge
  read one truth instead of re-typing it. Documented in docs/gguf-metadata.md.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# --- llama.cpp literals (tools/mtmd/clip-impl.h, clip.cpp) -------------------
CLIP_PROJECTOR_TYPE = "clip.projector_type"  # string
CLIP_MINICPMV_VERSION_I32 = "clip.minicpmv_version"  # INT32: read with get_i32 (clip.cpp:1321)
CLIP_MINICPMV_QUERY_NUM_U32 = "clip.minicpmv_query_num"  # UINT32
CLIP_HAS_VISION = "clip.has_vision_encoder"
CLIP_IMAGE_SIZE = "clip.vision.image_size"
CLIP_PROJECTION_DIM = "clip.vision.projection_dim"
CLIP_SCALE_FACTOR_U32 = "clip.vision.projector.scale_factor"
CLIP_WA_LAYER_INDEXES_I32 = "clip.vision.wa_layer_indexes"  # INT32 array (clip.cpp get_arr_int)
LLM_RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"  # bool array; no PyPI gguf helper (llama-arch.cpp:305)
PROJECTOR_RESAMPLER = "resampler"  # clip-impl.h PROJECTOR_TYPE_MINICPMV
PROJECTOR_MINICPMV4_6 = "minicpmv4_6"  # missing from PyPI gguf's VisionProjectorType

# mmproj tensor names that PyPI gguf maps wrongly or not at all (clip-impl.h:167-172)
TN_RESAMPLER_POS_EMBED_K = "resampler.pos_embed_k"  # gguf maps it to "pos_embd_k": wrong
TN_RESAMPLER_PROJ = "resampler.proj.weight"
TN_VISION_POST_LN = "v.post_ln"

# --- minicpmv_edge.* ----------------------------------------------------------
_NS = "minicpmv_edge."
EDGE_SCHEMA_VERSION = _NS + "schema_version"  # u32
EDGE_TOOL_VERSION = _NS + "tool_version"  # str
EDGE_FAMILY = _NS + "family"  # str, e.g. "minicpmv-4.5"; also in the mmproj
EDGE_MODEL_VERSION = _NS + "model_version"  # str, e.g. "4.5"
EDGE_PROJECTOR_TYPE = _NS + "projector_type"  # str, what the matching mmproj must declare
EDGE_PROJECTOR_VERSION = _NS + "projector_version"  # i32, clip.minicpmv_version it must carry (0: none)
EDGE_SOURCE = _NS + "source"  # str, checkpoint directory name
# Unicode form ("NFC", ...) the source tokenizer normalizes text to before splitting; "" none.
# llama.cpp does not normalize, so the runtimes apply it (minicpmv_edge/text_normalize.py,
# mobile_bridge/src/normalize.cpp) before tokenizing.
EDGE_TOKENIZER_NORMALIZER = _NS + "tokenizer.normalizer"  # str

# prompt: the chat template (tokenizer.chat_template) decides; these carry what it does not
# (minicpmv_edge/model_facts.py names the consumer of each)
EDGE_PROMPT_CONTENT_FORM = _NS + "prompt.content_form"  # str: "text" (parts joined by "\n") | "parts"
EDGE_PROMPT_IMAGE_PLACEHOLDER = _NS + "prompt.image_placeholder"  # str: one image in the rendered template
EDGE_PROMPT_VIDEO_PLACEHOLDER = _NS + "prompt.video_placeholder"  # str: one video ("": frames are images)
# the template as plain facts for the C bridge, which cannot run jinja
EDGE_PROMPT_FORMAT = _NS + "prompt.format"  # str: "chatml"
EDGE_PROMPT_TRIM_CONTENT = _NS + "prompt.trim_content"  # bool: message text is |trim-med (4.6)
EDGE_PROMPT_TURN_PREFIX = _NS + "prompt.turn_prefix"  # str with {role}: "<|im_start|>{role}\n"
EDGE_PROMPT_TURN_SUFFIX = _NS + "prompt.turn_suffix"  # str: "<|im_end|>\n"
EDGE_PROMPT_DEFAULT_SYSTEM = _NS + "prompt.default_system"  # str ("" = no system turn)
EDGE_PROMPT_CONTENT_SEPARATOR = _NS + "prompt.content_separator"  # str joining content items: "\n"
EDGE_PROMPT_STOP = _NS + "prompt.stop"  # [str]: strings that end a turn
EDGE_PROMPT_IMAGE_ID_TEMPLATE = _NS + "prompt.image_id_template"  # str with {id}
EDGE_PROMPT_USE_IMAGE_ID = _NS + "prompt.use_image_id"  # bool (images); video frames never use ids

# thinking: text appended after the assistant turn prefix
EDGE_THINK_SUPPORTED = _NS + "thinking.supported"  # bool
EDGE_THINK_DEFAULT = _NS + "thinking.default"  # bool
EDGE_THINK_PREFIX_ON = _NS + "thinking.prefix_on"  # str
EDGE_THINK_PREFIX_OFF = _NS + "thinking.prefix_off"  # str
EDGE_THINK_OPEN = _NS + "thinking.open_tag"  # str "<think>"
EDGE_THINK_CLOSE = _NS + "thinking.close_tag"  # str "</think>"
EDGE_THINK_STRIP_HISTORY = _NS + "thinking.strip_history"  # bool: turns before the last user query lose <think>

# images
EDGE_SLICE_MODE = _NS + "image.slice_mode"  # bool
EDGE_SLICE_MAX = _NS + "image.max_slice_nums"  # u32 (images)
EDGE_SLICE_SIZE = _NS + "image.scale_resolution"  # u32, 448
EDGE_PATCH_SIZE = _NS + "image.patch_size"  # u32, 14
EDGE_TOKENS_PER_SLICE = _NS + "image.tokens_per_slice"  # u32 for a full 448x448 slice
EDGE_VIDEO_MAX_SLICE = _NS + "video.max_slice_nums"  # u32 (1)
EDGE_VIDEO_USE_IMAGE_ID = _NS + "video.use_image_id"  # bool (false)
# the model's own video recipe (minicpmv_edge/video_facts.py, edge_runtime/video.py)
EDGE_VIDEO_RECIPE = _NS + "video.recipe"  # str: "frames" | "packed" (4.5 3D resampler) | "stacked" (4.6 processor)
EDGE_VIDEO_FPS = _NS + "video.fps"  # f64: default sampling rate (4.5 choose_fps; stacked: samples per second)
EDGE_VIDEO_MAX_FRAMES = _NS + "video.max_frames"  # u32: MAX_NUM_FRAMES (4.5: packed groups) / max_num_frames
EDGE_VIDEO_MAX_PACKING = _NS + "video.max_packing"  # u32: 4.5 MAX_NUM_PACKING (default 3)
EDGE_VIDEO_PACKING_LIMIT = _NS + "video.packing_limit"  # u32: 4.5 valid packing range 1..6
EDGE_VIDEO_TIME_SCALE = _NS + "video.time_scale"  # f64: 4.5 TIME_SCALE (0.1 s per temporal id)
EDGE_VIDEO_STACK_FRAMES = _NS + "video.stack_frames"  # u32: 4.6 stack_frames default (1)
EDGE_DOWNSAMPLE_MODE = _NS + "image.downsample_mode"  # str "16x"/"4x" (4.6 only; mmproj)
EDGE_SMALL_IMAGE_UPSIZE = _NS + "image.small_image_upsize"  # str "always"/"never" (MiniCPM-OCR; absent: always)

# decoder positions of image tokens: "sequential" (absent; one position per token, 4.6 / OCR) or
# "canvas" (4.7's canvas M-RoPE, edge_runtime/canvas_positions.py), anchored on these token ids
EDGE_IMAGE_POSITIONS = _NS + "image.positions"  # str
POSITIONS_SEQUENTIAL = "sequential"
POSITIONS_CANVAS = "canvas"
EDGE_CANVAS_IMAGE_START = _NS + "canvas.image_start_id"  # u32, "<image>"
EDGE_CANVAS_IMAGE_END = _NS + "canvas.image_end_id"  # u32, "</image>"
EDGE_CANVAS_SLICE_START = _NS + "canvas.slice_start_id"  # u32, "<slice>"
EDGE_CANVAS_SLICE_END = _NS + "canvas.slice_end_id"  # u32, "</slice>"
EDGE_CANVAS_NEWLINE = _NS + "canvas.newline_id"  # u32, "\n" between slice rows

# written only by the families they concern; absent means the default stated beside each key
EDGE_FAMILY_SPECIFIC = (EDGE_SMALL_IMAGE_UPSIZE, EDGE_IMAGE_POSITIONS, EDGE_CANVAS_IMAGE_START, EDGE_CANVAS_IMAGE_END,
                        EDGE_CANVAS_SLICE_START, EDGE_CANVAS_SLICE_END, EDGE_CANVAS_NEWLINE)
# the keys every converted text GGUF carries
EDGE_KEYS = [v for k, v in dict(globals()).items()
             if k.startswith("EDGE_") and isinstance(v, str) and v not in EDGE_FAMILY_SPECIFIC]

"""Per-version runtime facts of every MiniCPM-V family, in one place.

The chat template (tokenizer.chat_template, verbatim from the checkpoint) decides
the prompt. What it does not carry lives here, once per family:

* how a message's content reaches the template and which placeholder stands for
  an image in the rendered text (the model card's chat() joins content parts with
  "\\n" and writes `(<image>./</image>)` per image; 4.6's template gets content
  parts and writes `<|image_pad|>`), and the image ids the processors add;
* slice defaults and token counts (preprocessor_config.json);
* for the C bridge, which cannot run jinja: the template's behaviour in a few
  plain facts (turn prefix/suffix, trimming, thinking prefixes, dropping past
  reasoning); tests pin the bridge's bytes to the jinja rendering.

Who reads this: the converter's family modules start from these records and
write them into `minicpmv_edge.*` keys (with values read from the checkpoint's
own files where it has them); the runtime reads those keys, and for a GGUF
written by another tool (llama.cpp's converters, OpenBMB's releases, Ollama)
detects the family from standard keys (`detect`) and uses the record as is;
`mobile_bridge/src/family_facts.h` is generated from `FAMILIES` (c_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from . import schema
from .errors import UnsupportedModelError

CONTENT_TEXT = "text"  # content parts joined with "\n" into one string (model cards' chat())
CONTENT_PARTS = "parts"  # content as a list of {"type": "text"|"image"|"video"} items


@dataclass(frozen=True)
class ModelFacts:
    family: str  # "minicpmv-4.5"
    model_version: str  # "4.5"
    text_arch: str  # general.architecture of the text GGUF
    projector_type: str  # clip.projector_type of the matching mmproj
    projector_version: int  # clip.minicpmv_version it carries (0: none)
    n_vocab: int  # rows of the official vocabulary: tells families of one architecture apart
    # GGUFs of this family exist from other tools (llama.cpp's converters, OpenBMB, Ollama) and are
    # recognised from standard keys; False where no other tool writes it and it looks like another family
    detectable: bool = True
    # --- prompt: what the chat template does not carry ---
    content_form: str = CONTENT_TEXT
    image_placeholder: str = "(<image>./</image>)"  # in the rendered template: one image
    video_placeholder: str = ""  # one whole video; "": a video's frames are images (no ids)
    image_id_template: str = "<image_id>{id}</image_id>"
    use_image_id: bool = True  # preprocessor_config use_image_id (all four releases: true)
    video_use_image_id: bool = False  # an id before a video (the 4.6 processor can; its model card's video call: off)
    stop: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    thinking_supported: bool = False
    thinking_default: bool = False  # what the runtimes do when not told (the model cards' chat(): off)
    think_open: str = "<think>"
    think_close: str = "</think>"
    # --- the template as plain facts, for the C bridge (pinned to jinja by tests) ---
    turn_prefix: str = "<|im_start|>{role}\n"
    turn_suffix: str = "<|im_end|>\n"
    content_separator: str = "\n"
    default_system: str = ""  # system turn the template adds when the first message is not system
    trim_content: bool = False  # message text goes through jinja's |trim (4.6)
    strip_history: bool = False  # assistant turns before the last user query lose their <think> block
    thinking_prefix_on: str = ""  # after the assistant turn prefix, enable_thinking=true
    thinking_prefix_off: str = ""  # enable_thinking=false
    # --- images ---
    slice_mode: bool = True
    max_slice_nums: int = 9
    scale_resolution: int = 448
    patch_size: int = 14
    tokens_per_slice: int = 64  # embeddings per full slice
    video_max_slice_nums: int = 1  # frames are not sliced

    def tagged(self, role: str, content: str) -> str:
        return self.turn_prefix.replace("{role}", role) + content + self.turn_suffix

    def image_id(self, index: int) -> str:
        return self.image_id_template.replace("{id}", str(index))

    def write(self, w) -> None:
        write(w, self)


_QWEN_THINK = dict(thinking_supported=True, thinking_prefix_on="<think>\n",
                   thinking_prefix_off="<think>\n\n</think>\n\n", strip_history=True)

FAMILIES: dict[str, ModelFacts] = {f.family: f for f in (
    # Qwen2-7B-Instruct's template: "You are a helpful assistant." when no system message comes first
    ModelFacts("minicpmv-2.6", "2.6", "qwen2", schema.PROJECTOR_RESAMPLER, 3, 151666,
               default_system="You are a helpful assistant."),
    # reconstruction: the real 4.0 tokenizer files are not public here (README family table)
    ModelFacts("minicpmv-4.0", "4.0", "llama", schema.PROJECTOR_RESAMPLER, 5, 73448,
               stop=("<|im_end|>", "</s>")),
    # real template: openbmb/MiniCPM-V-4_5 tokenizer_config.json
    ModelFacts("minicpmv-4.5", "4.5", "qwen3", schema.PROJECTOR_RESAMPLER, 6, 151748, **_QWEN_THINK),
    # real template: openbmb/MiniCPM-V-4.6 chat_template.jinja; processing_minicpmv4_6.py (videos: the
    # model card's video call passes use_image_id False, minicpmv_edge/video_facts.py)
    ModelFacts("minicpmv-4.6", "4.6", "qwen35", schema.PROJECTOR_MINICPMV4_6, 0, 248094,
               content_form=CONTENT_PARTS, image_placeholder="<|image_pad|>", video_placeholder="<|video_pad|>",
               video_use_image_id=False, trim_content=True, **_QWEN_THINK),
    # 4.6 architecture, images 4x by default; only our converter writes it (llama.cpp's does not know
    # MiniCPMOcrForConditionalGeneration), and its standard keys equal 4.6's
    ModelFacts("minicpm-ocr-1.0", "ocr-1.0", "qwen35", schema.PROJECTOR_MINICPMV4_6, 0, 248094, detectable=False,
               content_form=CONTENT_PARTS, image_placeholder="<|image_pad|>", video_placeholder="<|video_pad|>",
               video_use_image_id=False, trim_content=True, **_QWEN_THINK),
    # 4.6 stack + canvas M-RoPE; no other tool runs it
    ModelFacts("minicpmv-4.7", "4.7", "qwen35", schema.PROJECTOR_MINICPMV4_6, 0, 248094, detectable=False,
               content_form=CONTENT_PARTS, image_placeholder="<|image_pad|>", video_placeholder="<|video_pad|>",
               video_use_image_id=False, trim_content=True, **_QWEN_THINK),
)}

# ModelFacts field -> (minicpmv_edge.* key, GGUF value type); the one map for reading and writing
KEYS: dict[str, tuple[str, str]] = {
    "family": (schema.EDGE_FAMILY, "str"),
    "model_version": (schema.EDGE_MODEL_VERSION, "str"),
    "projector_type": (schema.EDGE_PROJECTOR_TYPE, "str"),
    "projector_version": (schema.EDGE_PROJECTOR_VERSION, "i32"),
    "content_form": (schema.EDGE_PROMPT_CONTENT_FORM, "str"),
    "image_placeholder": (schema.EDGE_PROMPT_IMAGE_PLACEHOLDER, "str"),
    "video_placeholder": (schema.EDGE_PROMPT_VIDEO_PLACEHOLDER, "str"),
    "image_id_template": (schema.EDGE_PROMPT_IMAGE_ID_TEMPLATE, "str"),
    "use_image_id": (schema.EDGE_PROMPT_USE_IMAGE_ID, "bool"),
    "video_use_image_id": (schema.EDGE_VIDEO_USE_IMAGE_ID, "bool"),
    "stop": (schema.EDGE_PROMPT_STOP, "strs"),
    "thinking_supported": (schema.EDGE_THINK_SUPPORTED, "bool"),
    "thinking_default": (schema.EDGE_THINK_DEFAULT, "bool"),
    "think_open": (schema.EDGE_THINK_OPEN, "str"),
    "think_close": (schema.EDGE_THINK_CLOSE, "str"),
    "turn_prefix": (schema.EDGE_PROMPT_TURN_PREFIX, "str"),
    "turn_suffix": (schema.EDGE_PROMPT_TURN_SUFFIX, "str"),
    "content_separator": (schema.EDGE_PROMPT_CONTENT_SEPARATOR, "str"),
    "default_system": (schema.EDGE_PROMPT_DEFAULT_SYSTEM, "str"),
    "trim_content": (schema.EDGE_PROMPT_TRIM_CONTENT, "bool"),
    "strip_history": (schema.EDGE_THINK_STRIP_HISTORY, "bool"),
    "thinking_prefix_on": (schema.EDGE_THINK_PREFIX_ON, "str"),
    "thinking_prefix_off": (schema.EDGE_THINK_PREFIX_OFF, "str"),
    "slice_mode": (schema.EDGE_SLICE_MODE, "bool"),
    "max_slice_nums": (schema.EDGE_SLICE_MAX, "u32"),
    "scale_resolution": (schema.EDGE_SLICE_SIZE, "u32"),
    "patch_size": (schema.EDGE_PATCH_SIZE, "u32"),
    "tokens_per_slice": (schema.EDGE_TOKENS_PER_SLICE, "u32"),
    "video_max_slice_nums": (schema.EDGE_VIDEO_MAX_SLICE, "u32"),
}


def by_name(name: str) -> ModelFacts:
    for f in FAMILIES.values():
        if name in (f.family, f.model_version):
            return f
    raise UnsupportedModelError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")


def from_checkpoint(family: str, preprocessor: Mapping[str, Any], config: Mapping[str, Any], **overrides) -> ModelFacts:
    """The family record with the values a checkpoint's own files state (the converter's view)."""
    base = by_name(family)
    sc = config.get("slice_config") or {}
    pick = {
        "use_image_id": preprocessor.get("use_image_id", config.get("use_image_id")),
        "slice_mode": preprocessor.get("slice_mode", config.get("slice_mode")),
        "max_slice_nums": preprocessor.get("max_slice_nums", sc.get("max_slice_nums")),
        "scale_resolution": preprocessor.get("scale_resolution", sc.get("scale_resolution")),
        "patch_size": preprocessor.get("patch_size", config.get("patch_size", sc.get("patch_size"))),
    }
    kw = {k: type(getattr(base, k))(v) for k, v in pick.items() if v is not None}
    return replace(base, **{**kw, **overrides})


def detect(text_kv: Mapping[str, Any], n_vocab: int | None = None, mm_kv: Mapping[str, Any] | None = None,
           where: str | None = None) -> ModelFacts:
    """The family of a GGUF pair from llama.cpp's standard keys alone.

    text: `general.architecture`; mmproj: `clip.projector_type` + `clip.minicpmv_version`
    (legacy converter versions 3/5/6, legacy-models/minicpmv-convert-image-encoder-to-gguf.py:504);
    the vocabulary size where one pair matches two families, and always for a text model
    alone (qwen2/qwen3/llama GGUFs are mostly not MiniCPM-V)."""
    arch = str(text_kv.get("general.architecture", "?"))
    cands = [f for f in FAMILIES.values() if f.text_arch == arch and f.detectable]
    if mm_kv is not None:
        ptype, pver = mm_kv.get(schema.CLIP_PROJECTOR_TYPE), int(mm_kv.get(schema.CLIP_MINICPMV_VERSION_I32) or 0)
        cands = [f for f in cands if f.projector_type == ptype and (f.projector_version == pver or not f.projector_version)]
        if len(cands) > 1 and n_vocab:
            cands = [f for f in cands if f.n_vocab == n_vocab] or cands
    else:
        # a text model alone: the architecture is shared with many other models, the vocabulary is not
        cands = [f for f in cands if f.n_vocab == n_vocab]
    if len(cands) == 1:
        return cands[0]
    what = f"architecture {arch!r}, {n_vocab} tokens" + (
        f", projector {mm_kv.get(schema.CLIP_PROJECTOR_TYPE)!r} version {mm_kv.get(schema.CLIP_MINICPMV_VERSION_I32)}"
        if mm_kv is not None else ", no projector")
    known = "; ".join(f"{f.family}: {f.text_arch} ({f.n_vocab} tokens) + {f.projector_type}"
                      + (f" v{f.projector_version}" if f.projector_version else "")
                      for f in FAMILIES.values() if f.detectable)
    raise UnsupportedModelError(f"not a MiniCPM-V GGUF we recognise ({what}) and no minicpmv_edge.* keys; known: "
                                f"{known}; or convert the checkpoint with `minicpmv-edge convert`", where)


def _coerce(kind: str, value):
    if kind == "strs":
        return tuple(str(v) for v in value)
    return {"str": str, "bool": bool, "u32": int, "i32": int}[kind](value)


def from_gguf(text_kv: Mapping[str, Any], n_vocab: int | None = None, mm_kv: Mapping[str, Any] | None = None,
              where: str | None = None) -> tuple[ModelFacts, bool]:
    """Facts for a loaded pair: our keys where the file has them, else the detected family's
    record (adjusted by the mmproj's own slice keys). Returns (facts, has_our_keys)."""
    ours = schema.EDGE_FAMILY in text_kv
    base = by_name(text_kv[schema.EDGE_FAMILY]) if ours and text_kv[schema.EDGE_FAMILY] in FAMILIES else None
    if base is None:
        base = detect(text_kv, n_vocab, mm_kv, where)
    kw = {}
    for name, (key, kind) in KEYS.items():
        if key in text_kv:
            kw[name] = _coerce(kind, text_kv[key])
    if not ours and mm_kv is not None:
        kw.update(_mmproj_slice_facts(base, mm_kv))
    return replace(base, **kw), ours


def _mmproj_slice_facts(base: ModelFacts, mm_kv: Mapping[str, Any]) -> dict:
    """Slice size and tokens per slice as clip.cpp derives them from the projector's own keys."""
    out = {}
    size, patch = mm_kv.get(schema.CLIP_IMAGE_SIZE), mm_kv.get("clip.vision.patch_size")
    if size:
        out["scale_resolution"] = int(size)
    if patch:
        out["patch_size"] = int(patch)
    if base.projector_type == schema.PROJECTOR_MINICPMV4_6:
        merge = int(mm_kv.get(schema.CLIP_SCALE_FACTOR_U32) or 4)  # clip.cpp: n_merge, 2 (4x) or 4 (16x)
        side = out.get("scale_resolution", base.scale_resolution) // out.get("patch_size", base.patch_size)
        out["tokens_per_slice"] = side * side // (merge * merge)
    elif mm_kv.get(schema.CLIP_MINICPMV_QUERY_NUM_U32):
        out["tokens_per_slice"] = int(mm_kv[schema.CLIP_MINICPMV_QUERY_NUM_U32])
    return out


def write(w, facts: ModelFacts) -> None:
    """Write every fact as a minicpmv_edge.* key (gguf.GGUFWriter `w`)."""
    from gguf import GGUFValueType

    for name, (key, kind) in KEYS.items():
        if name in ("family", "model_version"):
            continue  # the pipeline writes these into both files
        value = getattr(facts, name)
        if kind == "str":
            # GGUFWriter.add_string silently drops ""; an empty prefix is a fact too
            w.add_key_value(key, value, GGUFValueType.STRING)
        elif kind == "bool":
            w.add_bool(key, bool(value))
        elif kind == "u32":
            w.add_uint32(key, int(value))
        elif kind == "i32":
            w.add_int32(key, int(value))
        else:
            w.add_array(key, list(value))
    w.add_key_value(schema.EDGE_PROMPT_FORMAT, "chatml", GGUFValueType.STRING)


FIELD_NAMES = tuple(f.name for f in fields(ModelFacts))

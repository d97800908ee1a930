"""The reference prompts: the real chat templates rendered by transformers, with images
expanded by the real processors, then each image's expansion collapsed to mtmd's marker.

4.6: transformers' own MiniCPMV4_6Processor (real tokenizer.json, chat_template.jinja,
preprocessor_config.json) -- apply_chat_template, then the processor call that expands
`<|image_pad|>` into `<image_id>N</image_id><image>...</image><slice>...`.
4.5: what the model card's chat() does (remote-code/modeling_minicpmv.py: content parts
joined by "\\n", `(<image>./</image>)` per image), the real template through transformers'
tokenizer (vocab.json + merges.txt + tokenizer_config.json), and the real image
processor's `get_slice_image_placeholder` per image (processing_minicpmv.py).

mtmd writes `<image>`/`<slice>` and the embeddings itself, so the comparison is on the
text with each expansion replaced by the marker; token counts per slice are mtmd's.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
import types
from pathlib import Path

MARKER = "<__media__>"
TEXT_IMAGE = "(<image>./</image>)"


def real_dir() -> Path:
    """../shared/reference/real-checkpoints (minicpmv_edge.fixtures.sources finds it, as the fixtures
    do: beside the repository or the main checkout of a worktree, or $MINICPMV_EDGE_REAL_CHECKPOINTS);
    missing is an error, not a skip."""
    from minicpmv_edge.fixtures.sources import real_checkpoints_dir

    return real_checkpoints_dir()


def real_template(family: str) -> str:
    if family == "minicpmv-4.5":
        return json.loads((real_dir() / "minicpm-v-4_5/tokenizer_config.json").read_text())["chat_template"]
    return (real_dir() / "minicpm-v-4.6/chat_template.jinja").read_text()


# ---------------------------------------------------------------------------- 4.6
_EXPANSION_46 = re.compile(r"<image>(?:<\|image_pad\|>)+</image>"
                           r"(?:(?:<slice>(?:<\|image_pad\|>)+</slice>)+(?:\n(?:<slice>(?:<\|image_pad\|>)+</slice>)+)*)?")


def processor_46(tmp: Path):
    from transformers import AutoTokenizer
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil
    from transformers.models.minicpmv4_6.processing_minicpmv4_6 import MiniCPMV4_6Processor

    src = real_dir() / "minicpm-v-4.6"
    for name in ("tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json", "config.json"):
        shutil.copy(src / name, tmp / name)
    with gzip.open(src / "tokenizer.json.gz", "rb") as f:
        (tmp / "tokenizer.json").write_bytes(f.read())
    # the processor reads these token names from the tokenizer (values: the real added tokens)
    from minicpmv_edge.fixtures.recipes.minicpmv_4_6 import MM46_TOKEN_ATTRS

    tok = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=dict(MM46_TOKEN_ATTRS))

    class Processor(MiniCPMV4_6Processor):
        # The video processor needs torchvision, which exists here only as a 5.5 GB CUDA build;
        # images never reach it, and __init__ reads just these two settings from it.
        def check_argument_for_proper_class(self, name, arg):
            return type(arg) if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

        def get_text_with_replacements(self, *args, **kwargs):
            # the expanded text exactly as __call__ hands it to the tokenizer (decoding the
            # ids back would apply the tokenizer's NFC normalizer)
            out = super().get_text_with_replacements(*args, **kwargs)
            self.expanded = list(out[0])
            return out

    preproc = json.loads((tmp / "preprocessor_config.json").read_text())
    video = types.SimpleNamespace(slice_mode=preproc.get("slice_mode", True), downsample_mode="16x")
    return Processor(image_processor=MiniCPMV4_6ImageProcessorPil(**preproc), video_processor=video, tokenizer=tok,
                     chat_template=(tmp / "chat_template.jinja").read_text())


def hf_messages_46(messages):
    """Model-card-style messages as an HF user hands them to the 4.6 processor."""
    from PIL import Image

    out, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            items = []
            for c in content:
                if isinstance(c, Image.Image):
                    items.append({"type": "image"})
                    images.append(c)
                else:
                    items.append({"type": "text", "text": c})
            content = items
        out.append({**m, "content": content})
    return out, images


def reference_46(proc, messages, tools=None, **kw) -> str:
    msgs, images = hf_messages_46(messages)
    text = proc.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False, **kw)
    if not images:
        return text
    proc(text=[text], images=images, return_tensors=None)
    return _EXPANSION_46.sub(MARKER, proc.expanded[0])


# ---------------------------------------------------------------------------- 4.5
_EXPANSION_45 = re.compile(r"<image>(?:<unk>)+</image>"
                           r"(?:(?:<slice>(?:<unk>)+</slice>)+(?:\n(?:<slice>(?:<unk>)+</slice>)+)*)?")


def tokenizer_45():
    from transformers import Qwen2TokenizerFast

    # the checkpoint's tokenizer_config names remote code (MiniCPMVTokenizerFast, a Qwen2 fast
    # tokenizer with extra attributes); its vocabulary and template load as Qwen2's
    return Qwen2TokenizerFast.from_pretrained(real_dir() / "minicpm-v-4_5")


def image_processor_45():
    sys.path.insert(0, str(real_dir() / "minicpm-v-4_5/remote-code"))
    try:
        import image_processing_minicpmv as ipm
    finally:
        sys.path.pop(0)
    cfg = json.loads((real_dir() / "minicpm-v-4_5/preprocessor_config.json").read_text())
    return ipm.MiniCPMVImageProcessor(**cfg)


def card_messages_45(messages):
    """modeling_minicpmv.py chat(): each message's parts joined by "\\n", images as the placeholder."""
    from PIL import Image

    out, images = [], []
    for m in messages:
        content = m["content"] if isinstance(m["content"], list) else [m["content"]]
        parts = []
        for c in content:
            if isinstance(c, Image.Image):
                images.append(c)
                parts.append(TEXT_IMAGE)
            else:
                parts.append(c)
        out.append({**m, "content": "\n".join(parts)})
    return out, images


def reference_45(tok, improc, messages, tools=None, **kw) -> str:
    msgs, images = card_messages_45(messages)
    text = tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False, **kw)
    chunks = text.split(TEXT_IMAGE)
    assert len(chunks) == len(images) + 1
    out = chunks[0]
    for i, img in enumerate(images):  # processing_minicpmv._convert_images_texts_to_inputs
        out += improc.get_slice_image_placeholder(img.size, i) + chunks[i + 1]
    return _EXPANSION_45.sub(MARKER, out)

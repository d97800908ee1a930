"""What every family module provides, and the runtime facts it writes.

A family is one MiniCPM-V version: how to recognise its config.json, how its
tensors map onto llama.cpp's text model and projector, and the per-version
facts (prompt format, thinking rule, slice defaults) that the runtimes read
back from the text GGUF's `minicpmv_edge.*` keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from gguf import GGUFValueType, GGUFWriter

from minicpmv_edge import schema

from ..safetensors_reader import Checkpoint
from ..writer import PlannedTensor


@dataclass(frozen=True)
class RuntimeFacts:
    """Per-version facts for the runtimes (see docs/gguf-metadata.md)."""

    thinking_supported: bool
    thinking_prefix_on: str = ""
    thinking_prefix_off: str = ""
    stop: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")
    default_system: str = ""
    use_image_id: bool = True
    slice_mode: bool = True
    max_slice_nums: int = 9
    scale_resolution: int = 448
    patch_size: int = 14
    tokens_per_slice: int = 64
    video_max_slice_nums: int = 1

    def write(self, w: GGUFWriter) -> None:
        def add_string(key: str, value: str) -> None:
            # GGUFWriter.add_string silently drops "" values; an empty prefix is a fact too
            w.add_key_value(key, value, GGUFValueType.STRING)

        add_string(schema.EDGE_PROMPT_FORMAT, "chatml")
        add_string(schema.EDGE_PROMPT_TURN_PREFIX, "<|im_start|>{role}\n")
        add_string(schema.EDGE_PROMPT_TURN_SUFFIX, "<|im_end|>\n")
        add_string(schema.EDGE_PROMPT_DEFAULT_SYSTEM, self.default_system)
        add_string(schema.EDGE_PROMPT_CONTENT_SEPARATOR, "\n")  # chat() joins content items with "\n"
        w.add_array(schema.EDGE_PROMPT_STOP, list(self.stop))
        add_string(schema.EDGE_PROMPT_IMAGE_ID_TEMPLATE, "<image_id>{id}</image_id>")
        w.add_bool(schema.EDGE_PROMPT_USE_IMAGE_ID, self.use_image_id)
        w.add_bool(schema.EDGE_THINK_SUPPORTED, self.thinking_supported)
        w.add_bool(schema.EDGE_THINK_DEFAULT, False)
        add_string(schema.EDGE_THINK_PREFIX_ON, self.thinking_prefix_on)
        add_string(schema.EDGE_THINK_PREFIX_OFF, self.thinking_prefix_off)
        add_string(schema.EDGE_THINK_OPEN, "<think>")
        add_string(schema.EDGE_THINK_CLOSE, "</think>")
        w.add_bool(schema.EDGE_THINK_STRIP_HISTORY, False)  # the templates keep past thinking verbatim
        w.add_bool(schema.EDGE_SLICE_MODE, self.slice_mode)
        w.add_uint32(schema.EDGE_SLICE_MAX, self.max_slice_nums)
        w.add_uint32(schema.EDGE_SLICE_SIZE, self.scale_resolution)
        w.add_uint32(schema.EDGE_PATCH_SIZE, self.patch_size)
        w.add_uint32(schema.EDGE_TOKENS_PER_SLICE, self.tokens_per_slice)
        w.add_uint32(schema.EDGE_VIDEO_MAX_SLICE, self.video_max_slice_nums)
        w.add_bool(schema.EDGE_VIDEO_USE_IMAGE_ID, False)


@dataclass
class ConversionPlan:
    """Everything the pipeline needs to write the two files, nothing read yet."""

    text_arch: str
    text_tensors: list[PlannedTensor]
    add_text_metadata: Callable[[GGUFWriter], None]  # hparams + tokenizer (not our keys)
    mmproj_tensors: list[PlannedTensor]
    add_mmproj_metadata: Callable[[GGUFWriter], None]
    projector_type: str
    projector_version: int  # clip.minicpmv_version, 0 when the projector has none
    facts: RuntimeFacts
    consumed: set[str] = field(default_factory=set)  # source tensors used or deliberately skipped


class Family:
    """Base for family modules; subclasses set the class attributes and `plan`."""

    name: ClassVar[str]  # "minicpmv-4.5"
    model_version: ClassVar[str]  # "4.5"
    example: ClassVar[str]  # a Hugging Face repo id of this layout, for messages and docs

    @classmethod
    def matches(cls, config: dict, src: Path) -> bool:
        raise NotImplementedError

    def plan(self, src: Path, ckpt: Checkpoint, config: dict, outtype) -> ConversionPlan:
        raise NotImplementedError

"""Prompt text from the per-version facts the converter wrote into the text GGUF.

The runtime never re-types a family's format: every string below comes from
`minicpmv_edge.*` metadata (docs/gguf-metadata.md). Images become mtmd's media
marker, optionally preceded by `<image_id>N</image_id>`, exactly where the
model card's chat() puts its `(<image>./</image>)` placeholder; mtmd then
inserts `<image>`/`<slice>` tokens and the embeddings itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from minicpmv_edge import schema
from minicpmv_edge.errors import GGUFError
from minicpmv_edge.gguf_info import GGUFInfo


@dataclass(frozen=True)
class PromptFormat:
    family: str
    turn_prefix: str
    turn_suffix: str
    default_system: str
    separator: str
    stop: tuple[str, ...]
    image_id_template: str
    use_image_id: bool
    thinking_supported: bool
    thinking_prefix_on: str
    thinking_prefix_off: str
    think_open: str
    think_close: str
    max_slice_nums: int
    video_max_slice_nums: int
    tokens_per_slice: int

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> "PromptFormat":
        kv = info.kv
        if schema.EDGE_FAMILY not in kv:
            raise GGUFError("no minicpmv_edge.* metadata; convert the checkpoint with `minicpmv-edge convert`",
                            info.path)
        return cls(
            family=kv[schema.EDGE_FAMILY],
            turn_prefix=kv[schema.EDGE_PROMPT_TURN_PREFIX],
            turn_suffix=kv[schema.EDGE_PROMPT_TURN_SUFFIX],
            default_system=kv.get(schema.EDGE_PROMPT_DEFAULT_SYSTEM, ""),
            separator=kv.get(schema.EDGE_PROMPT_CONTENT_SEPARATOR, "\n"),
            stop=tuple(kv.get(schema.EDGE_PROMPT_STOP, [])),
            image_id_template=kv.get(schema.EDGE_PROMPT_IMAGE_ID_TEMPLATE, "<image_id>{id}</image_id>"),
            use_image_id=bool(kv.get(schema.EDGE_PROMPT_USE_IMAGE_ID, False)),
            thinking_supported=bool(kv.get(schema.EDGE_THINK_SUPPORTED, False)),
            thinking_prefix_on=kv.get(schema.EDGE_THINK_PREFIX_ON, ""),
            thinking_prefix_off=kv.get(schema.EDGE_THINK_PREFIX_OFF, ""),
            think_open=kv.get(schema.EDGE_THINK_OPEN, "<think>"),
            think_close=kv.get(schema.EDGE_THINK_CLOSE, "</think>"),
            max_slice_nums=int(kv.get(schema.EDGE_SLICE_MAX, 9)),
            video_max_slice_nums=int(kv.get(schema.EDGE_VIDEO_MAX_SLICE, 1)),
            tokens_per_slice=int(kv.get(schema.EDGE_TOKENS_PER_SLICE, 64)),
        )

    def turn(self, role: str, content: str) -> str:
        return self.turn_prefix.format(role=role) + content + self.turn_suffix

    def generation_prefix(self, enable_thinking: bool) -> str:
        p = self.turn_prefix.format(role="assistant")
        if self.thinking_supported:
            p += self.thinking_prefix_on if enable_thinking else self.thinking_prefix_off
        return p

    def image_placeholder(self, marker: str, image_index: int, use_id: bool | None = None) -> str:
        use = self.use_image_id if use_id is None else use_id
        return (self.image_id_template.format(id=image_index) if use else "") + marker

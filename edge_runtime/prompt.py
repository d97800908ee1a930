"""Prompt text from the model's own chat template, with mtmd's media markers for images.

The template in the text GGUF (tokenizer.chat_template, verbatim from the
checkpoint) is rendered as transformers' apply_chat_template does
(minicpmv_edge/chat_template.py). Per-family facts it does not carry come from
minicpmv_edge/model_facts.py (our GGUF keys, or the detected family for a GGUF
written by another tool):

* how a message's content reaches the template: the model cards' chat() (2.6, 4.0,
  4.5) joins content parts with "\\n" and writes `(<image>./</image>)` per image;
  4.6's template takes content parts and writes `<|image_pad|>` itself;
* what the processor puts in place of each placeholder: `<image_id>N</image_id>`
  (N counts the images of the prompt) and the image; here mtmd's media marker,
  where mtmd inserts `<image>`/`<slice>` tokens and the embeddings itself.

Video: 4.6 renders a video as `<|video_pad|>` and its processor expands it to one
id and the frames without separators; the older families pass frames as images
without ids (the model cards' video recipe).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from minicpmv_edge import model_facts
from minicpmv_edge.chat_template import ChatTemplate
from minicpmv_edge.errors import GGUFError, InputError
from minicpmv_edge.gguf_info import GGUFInfo, facts_of
from minicpmv_edge.model_facts import CONTENT_PARTS, ModelFacts

TEMPLATE_KEY = "tokenizer.chat_template"
_PROBE_ANSWER, _PROBE_QUESTION = "\ue000", "\ue001"  # private-use characters no template writes


@dataclass
class Media:
    """One media marker of the prompt, in order: an image, or one frame of a video."""

    image: Any  # edge_runtime.media.Image (while rendering: a whole messages.Video when video)
    frame: bool = False
    video: bool = False


@dataclass
class RenderedPrompt:
    text: str  # with mtmd's media marker where each image goes
    media: list[Media] = field(default_factory=list)
    tail: str = ""  # generation-only end: the next turn's history will not repeat it
    in_think: bool = False  # the prompt leaves the model inside a <think> block


class PromptFormat:
    """A model's chat template plus its family facts."""

    def __init__(self, facts: ModelFacts, template: ChatTemplate, own_keys: bool = True):
        self.facts = facts
        self.template = template
        self.own_keys = own_keys  # False: a GGUF written by another tool (facts from detection)

    def __getattr__(self, name: str):  # family, stop, thinking_supported, max_slice_nums, ...
        if name in model_facts.FIELD_NAMES:
            return getattr(self.facts, name)
        raise AttributeError(name)

    @classmethod
    def from_gguf(cls, info: GGUFInfo, mm: GGUFInfo | None = None,
                  special_tokens: Mapping[str, str] | None = None) -> "PromptFormat":
        """From the header alone (checked before llama.cpp loads anything); the special tokens
        the template may reference can be set once the vocabulary is loaded."""
        facts, own = facts_of(info, mm)  # the same detection as `inspect`
        source = info.get(TEMPLATE_KEY)
        if not isinstance(source, str) or not source.strip():
            raise GGUFError(f"no {TEMPLATE_KEY}: the prompt format comes from the model's own chat template "
                            "(convert the checkpoint again with its tokenizer_config.json or chat_template.jinja)",
                            info.path)
        try:
            template = ChatTemplate(source, special_tokens)
        except InputError as exc:
            raise GGUFError(f"{TEMPLATE_KEY}: {exc.problem}", info.path) from None
        return cls(facts, template, own)

    # --- messages -> template input ------------------------------------------
    def _content(self, parts: Sequence[Any], slots: list[Media]) -> Any:
        from .messages import Video

        f = self.facts
        items: list[Any] = []
        for p in parts:
            if isinstance(p, str):
                items.append({"type": "text", "text": p} if f.content_form == CONTENT_PARTS else p)
            elif isinstance(p, Video):
                if f.video_placeholder:
                    items.append({"type": "video"} if f.content_form == CONTENT_PARTS else f.video_placeholder)
                    slots.append(Media(p, video=True))
                    continue
                for frame in p.frames:  # frames as images, without ids
                    items.append({"type": "image"} if f.content_form == CONTENT_PARTS else f.image_placeholder)
                    slots.append(Media(frame, frame=True))
            else:
                items.append({"type": "image"} if f.content_form == CONTENT_PARTS else f.image_placeholder)
                slots.append(Media(p))
        if f.content_form == CONTENT_PARTS:
            return items
        return f.content_separator.join(items)

    def messages(self, turns: Sequence[Any], marker: str) -> tuple[list[dict], list[Media]]:
        slots: list[Media] = []
        out = []
        for n, t in enumerate(turns):
            for p in t.parts:
                if isinstance(p, str) and marker and marker in p:
                    raise InputError(f"message {n}: text contains the media marker {marker!r}")
            msg = {"role": t.role, "content": self._content(t.parts, slots)}
            msg.update(getattr(t, "extra", None) or {})
            out.append(msg)
        return out, slots

    # --- rendering -------------------------------------------------------------
    def render(self, turns: Sequence[Any], marker: str, enable_thinking: bool | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None, **template_kwargs) -> RenderedPrompt:
        if enable_thinking and not self.facts.thinking_supported:
            raise InputError(f"{self.facts.family} has no thinking mode")
        msgs, slots = self.messages(turns, marker)
        kw = dict(tools=tools, enable_thinking=enable_thinking, **template_kwargs)
        text = self.template.render(msgs, add_generation_prompt=True, **kw)
        tail = self._generation_tail(msgs, text, kw)
        body, media = self._place_media(text, slots, marker)
        return RenderedPrompt(body, media, tail, _ends_in_think(text, self.facts))

    def _generation_tail(self, msgs: list[dict], text: str, kw: dict) -> str:
        """The end of the prompt that the next turn's rendering of this turn will not
        repeat (e.g. `<think>\\n\\n</think>\\n\\n`): found by rendering the conversation
        with a probe answer and a probe question after it."""
        probe = msgs + [{"role": "assistant", "content": _PROBE_ANSWER}, {"role": "user", "content": _PROBE_QUESTION}]
        try:
            nxt = self.template.render(probe, add_generation_prompt=False, **kw)
        except InputError:
            return ""
        return text[_common_prefix(text, nxt):]

    def _place_media(self, text: str, slots: list[Media], marker: str) -> tuple[str, list[Media]]:
        f = self.facts
        holders = sorted({h for h in (f.image_placeholder, f.video_placeholder) if h}, key=len, reverse=True)
        if not holders:
            return text, []
        pattern = re.compile("|".join(re.escape(h) for h in holders))
        out: list[str] = []
        media: list[Media] = []
        pos = image_no = video_no = 0
        queue = list(slots)
        for m in pattern.finditer(text):
            if not queue:
                raise InputError(f"the message text contains the image placeholder {m.group(0)!r}; "
                                 "pass images as image parts")
            slot = queue.pop(0)
            out.append(text[pos:m.start()])
            pos = m.end()
            is_video = slot.video
            if (m.group(0) == f.video_placeholder) != is_video:
                raise InputError(f"the chat template put {m.group(0)!r} where a "
                                 f"{'video' if is_video else 'image'} belongs")
            if is_video:
                out.append((f.image_id(video_no) if f.video_use_image_id and f.use_image_id else "")
                           + marker * len(slot.image.frames))
                media.extend(Media(fr, frame=True) for fr in slot.image.frames)
                video_no += 1
            elif slot.frame:
                out.append(marker)
                media.append(slot)
            else:
                out.append((f.image_id(image_no) if f.use_image_id else "") + marker)
                media.append(slot)
                image_no += 1
        if queue:
            raise InputError(f"the chat template dropped {len(queue)} of the images (it rendered "
                             f"{len(slots) - len(queue)} placeholders for {len(slots)})")
        out.append(text[pos:])
        return "".join(out), media


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix (binary search on slice equality: prompts are long)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _ends_in_think(text: str, f: ModelFacts) -> bool:
    if not f.thinking_supported:
        return False
    tail = text.rstrip()
    return tail.endswith(f.think_open)

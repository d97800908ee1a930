"""Chat messages in the model card's form or OpenAI's, normalised to turns of parts.

Model card:  {"role": "user", "content": [PIL.Image, "question"]}  (images as PIL,
             paths or bytes; a string content is one text part)
OpenAI:      {"role": "user", "content": [{"type": "text", "text": ...},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}
Video:       {"type": "video", "video": "clip.mp4", "fps": 1, "max_frames": 16}  (video.py: options)
             {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,..."}}
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from minicpmv_edge.errors import InputError, MediaError

from .media import Image, MediaLimits, load_image
from .tools import tool_fields
from .video import VideoOptions
from .video_source import VideoSource

ROLES = ("system", "user", "assistant", "tool")
# message keys handed to the chat template as they are (transformers aliases the three reasoning names)
PASS_THROUGH = ("reasoning_content", "thinking", "reasoning")


@dataclass
class Video:
    """A video part: its source and options; `frames` holds its prompt units once the model has
    expanded it (video.py: frames or stacked composites as Images, or 4.5's packed groups)."""

    frames: list = field(default_factory=list)
    source: VideoSource | None = None
    options: VideoOptions = field(default_factory=VideoOptions)


@dataclass
class Turn:
    role: str
    parts: list[Any] = field(default_factory=list)  # str | Image | Video
    extra: dict = field(default_factory=dict)  # other message keys the chat template reads (PASS_THROUGH)


def _is_pil(x) -> bool:
    try:
        from PIL import Image as PILImage

        return isinstance(x, PILImage.Image)
    except ImportError:
        return False


def decode_data_url(url: str) -> bytes:
    head, _, data = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head:
        raise MediaError("data URL must be base64 (data:<mime>;base64,...)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("data URL is not valid base64") from None


def normalize(messages, limits: MediaLimits, resolve_url: Callable[[str], Any] | None = None) -> list[Turn]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list")
    turns: list[Turn] = []
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InputError(f"message {n} must be a dict with 'role' and 'content'")
        role = msg["role"]
        if role not in ROLES:
            raise InputError(f"message {n}: role {role!r} is not one of {ROLES}")
        content = msg.get("content")
        items = [content] if isinstance(content, str) or content is None else content
        if not isinstance(items, (list, tuple)):
            items = [items]
        turn = Turn(role, extra={k: msg[k] for k in PASS_THROUGH if msg.get(k) is not None})
        for k, v in turn.extra.items():
            if not isinstance(v, str):
                raise InputError(f"message {n}: {k!r} must be a string")
        turn.extra.update(tool_fields(msg, n))
        for item in items:
            if item is None:
                continue
            turn.parts.append(_part(item, n, limits, resolve_url))
        if role != "user" and any(not isinstance(p, str) for p in turn.parts):
            raise InputError(f"message {n}: only user messages may carry images or video")
        turns.append(turn)
    if turns[-1].role not in ("user", "tool"):
        raise InputError("the last message must come from the user (or be a tool result)")
    return turns


def _is_rgb_array(x) -> bool:
    import numpy as np

    return isinstance(x, np.ndarray)


def _part(item, n, limits, resolve_url):
    if isinstance(item, str):
        return item
    if isinstance(item, Image):  # decoded and checked already (an interactive /image)
        return item
    if isinstance(item, (bytes, bytearray)) or _is_pil(item) or isinstance(item, Path):
        return load_image(item, limits)
    if isinstance(item, dict):
        kind = item.get("type")
        if kind == "text":
            if not isinstance(item.get("text"), str):
                raise InputError(f"message {n}: text part needs a string 'text'")
            return item["text"]
        if kind in ("image_url", "image"):
            src = item.get("image_url", item.get("image"))
            if isinstance(src, dict):
                src = src.get("url")
            if isinstance(src, str):
                if src.startswith("data:"):
                    return load_image(decode_data_url(src), limits, name="data URL")
                if resolve_url is not None:
                    return load_image(resolve_url(src), limits, name=src[:80])
                return load_image(src, limits)
            if src is None:
                raise InputError(f"message {n}: image part has no url")
            if not (isinstance(src, (bytes, bytearray, Path)) or _is_pil(src) or _is_rgb_array(src)):
                raise InputError(f"message {n}: an image must be a path, URL, data URL, bytes, a PIL image or an "
                                 f"HxWx3 uint8 array, got {type(src).__name__}")
            return load_image(src, limits)
        if kind in ("video", "video_url"):
            return _video(item, n, limits, resolve_url)
        raise InputError(f"message {n}: unknown content part type {kind!r}")
    raise InputError(f"message {n}: unsupported content item of type {type(item).__name__}")


def _video(item: dict, n: int, limits: MediaLimits, resolve_url) -> Video:
    """A video part: probed now (a bad file fails before anything runs), decoded when the model
    expands it."""
    src = item.get("video", item.get("video_url"))
    if isinstance(src, dict):
        src = src.get("url")
    options = VideoOptions.from_dict({k: v for k, v in item.items() if k not in ("type", "video", "video_url")},
                                     f"message {n}")
    if isinstance(src, str) and src.startswith("data:"):
        source = VideoSource(decode_data_url(src), limits, "video data URL")
    elif isinstance(src, str) and resolve_url is not None:
        source = VideoSource(resolve_url(src), limits, src[:80])
    elif isinstance(src, (str, Path, bytes, bytearray)):
        source = VideoSource(src, limits)
    else:
        raise InputError(f"message {n}: a video part needs a file path in 'video', got "
                         f"{'nothing' if src is None else type(src).__name__} (or a URL in 'video_url')")
    return Video(source=source, options=options)

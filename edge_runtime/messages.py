"""Chat messages in the model card's form or OpenAI's, normalised to turns of parts.

Model card:  {"role": "user", "content": [PIL.Image, "question"]}  (images as PIL,
             paths or bytes; a string content is one text part)
OpenAI:      {"role": "user", "content": [{"type": "text", "text": ...},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}
Video:       {"type": "video", "video": "clip.mp4", "fps": 1, "max_frames": 16}
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from minicpmv_edge.errors import InputError, MediaError

from .media import Image, MediaLimits, load_image, video_frames

ROLES = ("system", "user", "assistant")


@dataclass
class Video:
    frames: list[Image]


@dataclass
class Turn:
    role: str
    parts: list[Any] = field(default_factory=list)  # str | Image | Video


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


def normalize(messages, limits: MediaLimits, resolve_url: Callable[[str], Any] | None = None,
              video_defaults: tuple[float, int] = (1.0, 16)) -> list[Turn]:
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
        turn = Turn(role)
        for item in items:
            if item is None:
                continue
            turn.parts.append(_part(item, n, limits, resolve_url, video_defaults))
        if role != "user" and any(not isinstance(p, str) for p in turn.parts):
            raise InputError(f"message {n}: only user messages may carry images or video")
        turns.append(turn)
    if turns[-1].role != "user":
        raise InputError("the last message must come from the user")
    return turns


def _is_rgb_array(x) -> bool:
    import numpy as np

    return isinstance(x, np.ndarray)


def _number(item: dict, key: str, default, n: int, kind: type, lo, hi):
    """A numeric field of a content part, type- and range-checked (fps 0 < x <= 240, max_frames 1..1024)."""
    v = item.get(key, default)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and kind is int:
        ok = float(v).is_integer()
    if not ok or not (lo < v <= hi if kind is float else lo <= v <= hi):
        want = f"a number in ({lo:g}, {hi:g}]" if kind is float else f"an integer in {lo}..{hi}"
        raise InputError(f"message {n}: video {key} must be {want}, got {v!r:.40}")
    return kind(v)


def _part(item, n, limits, resolve_url, video_defaults):
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
        if kind == "video":
            video_url = item.get("video_url")
            src = item.get("video") or (video_url.get("url") if isinstance(video_url, dict) else video_url)
            if not isinstance(src, (str, Path)) or not str(src):
                raise InputError(f"message {n}: a video part needs a file path in 'video', got "
                                 f"{'nothing' if src is None else type(src).__name__}")
            fps = _number(item, "fps", video_defaults[0], n, float, 0.0, 240.0)
            cap = _number(item, "max_frames", video_defaults[1], n, int, 1, 1024)
            return Video(video_frames(src, fps=fps, max_frames=cap, limits=limits))
        raise InputError(f"message {n}: unknown content part type {kind!r}")
    raise InputError(f"message {n}: unsupported content item of type {type(item).__name__}")

"""Prefill ahead: put a conversation's images into the KV cache before the question exists.

An app encodes the photo the moment the user picks it, while they type (OpenBMB's app bridge
does the same with `mb_mtmd_prefill_image`); the question then costs only its own tokens.
`MiniCPMV.prefill(messages)` renders the conversation with a cut mark where the question will
go, and evaluates the prompt up to the mark, less any plain text right before it: the tokens of
that text could merge with the question's first characters (BPE), so the prefix stops at the
last image or special token (`</slice>`, `</image>`, `<|im_start|>`), which never merge. The
next `chat` with the same conversation plus the question then finds the whole prefix in the
cache (session.py's prefix match) and evaluates only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minicpmv_edge.errors import InputError

from .messages import Turn

# where the question goes; plain text no template changes and no user types by accident
CUT = "\u27e6minicpmv-edge:question\u27e7"


@dataclass
class PrefillResult:
    n_cached: int  # prompt tokens the KV cache now holds
    n_evaluated: int  # of those, evaluated by this call (text tokens; images count as encoded)
    images_encoded: int  # image chunks run through the encoder by this call (others came from caches)
    ms: float  # the whole call
    image_encode_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"n_cached": self.n_cached, "n_evaluated": self.n_evaluated, "images_encoded": self.images_encoded,
                "ms": round(self.ms, 2), "image_encode_ms": [round(x, 2) for x in self.image_encode_ms]}


def with_cut(messages) -> list:
    """`messages` with the cut mark where the next user text will go: appended to the last user
    message, or as a new user message when the conversation does not end with one."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError("messages must be a non-empty list")
    out = list(messages)
    last = out[-1]
    if isinstance(last, Turn):
        out[-1] = Turn(last.role, list(last.parts) + [CUT]) if last.role == "user" else last
        return out if last.role == "user" else out + [Turn("user", [CUT])]
    if not isinstance(last, dict) or last.get("role") != "user":
        return out + [{"role": "user", "content": CUT}]
    content = last.get("content")
    if content is None:
        parts = [CUT]
    elif isinstance(content, (list, tuple)):
        parts = list(content) + [CUT]
    else:
        parts = [content, CUT]
    out[-1] = {**last, "content": parts}
    return out


def prefix_before_cut(prompt: str) -> str:
    if prompt.count(CUT) != 1:
        raise InputError("the chat template dropped or repeated the prefill cut mark; this model cannot prefill")
    return prompt[:prompt.index(CUT)]


__all__ = ["CUT", "PrefillResult", "with_cut", "prefix_before_cut"]

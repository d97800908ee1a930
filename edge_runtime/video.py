"""Video parts of a conversation, expanded into what the model was trained to read.

Three recipes (minicpmv_edge/video_facts.py says which a model uses, video_sampling.py which
frames each takes):

- "packed" (4.5): frames grouped by the model card's encode_video, each group of up to six
  frames one 64-token unit from the 3D resampler (video_packed.py); groups joined by "\\n" as the
  card's chat() joins the placeholders it keeps;
- "stacked" (4.6 / 4.7 / OCR): main frames plus per-second composites of sub-frames, laid out by
  the video processor's rules (video_frames.py), back to back, no image id;
- "frames" (2.6 / 4.0, and `mode="images"` on 4.5): each frame an unsliced image, the way
  llama.cpp's tools feed video.

The context decides how many units fit: a video is cut to the tokens left after the rest of the
prompt and the answer's reserve, never past the context; when frames are dropped one line says
so (logged as a warning and kept in `notices`). An expansion is remembered per source file and
options, so a follow-up turn sees the same units and reuses the KV cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, fields

import numpy as np

from minicpmv_edge import video_facts as vf
from minicpmv_edge.errors import ContextOverflowError, InputError

from . import video_sampling as sampling
from .media import Image, _checked
from .video_source import VideoSource

log = logging.getLogger(__name__)

MODES = ("auto", "images")
MARKUP = 2  # <image> + </image> around each unit


@dataclass(frozen=True)
class VideoOptions:
    """What a request may set; None takes the model's own value (video_facts)."""

    fps: float | None = None  # 4.5: choose_fps; frames: frames per second; stacked: samples per second
    max_frames: int | None = None  # 4.5: MAX_NUM_FRAMES (groups); stacked: max_num_frames; frames: frames
    packing: int | None = None  # 4.5: force_packing (frames per group)
    max_packing: int | None = None  # 4.5: MAX_NUM_PACKING
    stack_frames: int | None = None  # stacked: samples per second (1 main + N-1 sub-frames)
    mode: str = "auto"  # "images": every sampled frame a separate image (llama.cpp's way; 4.5 baseline)

    @classmethod
    def from_dict(cls, d: dict, where: str = "video") -> "VideoOptions":
        known = {f.name for f in fields(cls)}
        out = {}
        for key, value in d.items():
            if key not in known:
                raise InputError(f"{where}: unknown video option {key!r} (known: {', '.join(sorted(known))})")
            if value is None:
                continue
            if key == "mode":
                if value not in MODES:
                    raise InputError(f"{where}: mode must be one of {MODES}, got {value!r}")
                out[key] = value
                continue
            kind, lo, hi = {"fps": (float, 0.0, 240.0), "max_frames": (int, 1, 1024), "packing": (int, 1, 6),
                            "max_packing": (int, 1, 6), "stack_frames": (int, 1, 10)}[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok and kind is int:
                ok = float(value).is_integer()
            if not ok or not (lo < value <= hi if kind is float else lo <= value <= hi):
                want = f"a number in ({lo:g}, {hi:g}]" if kind is float else f"an integer in {lo}..{hi}"
                raise InputError(f"{where}: video {key} must be {want}, got {value!r:.40}")
            out[key] = kind(value)
        return cls(**out)

    def key(self) -> str:
        return repr(tuple(getattr(self, f.name) for f in fields(self)))


@dataclass
class Plan:
    """One video's units before decoding: enough to count tokens and say what was dropped."""

    indices: list[int]  # frames to decode
    units: list[tuple]  # per unit: ("frame", [pos]) | ("group", [pos...], [ids]) | ("main"/"stack", [pos...])
    tokens: int  # prompt tokens of the whole video
    detail: str  # for notices: "90 frames in 30 groups of 3"


class VideoRecipe:
    """A model's video recipe: plans within a token budget, decodes, makes prompt units."""

    def __init__(self, facts: vf.VideoFacts, exact: bool, video_spec=None, packed_encoder=None, tokens_per_image=64):
        self.facts = facts
        self.exact = exact  # merger families: planner lays units out (visual_plan.py)
        self.video_spec = video_spec  # processor_images.ImageSpec for video crops
        self.encoder = packed_encoder  # video_packed.PackedEncoder (4.5)
        self.tokens_per_image = tokens_per_image  # an unsliced image in mtmd (resampler: query_num)
        self._cache: OrderedDict[str, list] = OrderedDict()
        self.notices: list[str] = []

    # --- options ------------------------------------------------------------------------------
    def check(self, o: VideoOptions, where: str = "video") -> None:
        f = self.facts
        if f.recipe != vf.PACKED and (o.packing or o.max_packing):
            raise InputError(f"{where}: packing applies to MiniCPM-V 4.5's 3D resampler, not to this model")
        if f.recipe != vf.STACKED and o.stack_frames:
            raise InputError(f"{where}: stack_frames applies to the 4.6 / 4.7 / OCR video processor, not to this model")
        if f.recipe == vf.STACKED:
            if o.mode == "images":
                raise InputError(f"{where}: this model's video frames are images already; use stack_frames 1")
            if o.fps is not None and not (float(o.fps).is_integer() and 1 <= o.fps <= 10):
                raise InputError(f"{where}: this model samples one main frame per second plus stack_frames-1 "
                                 "sub-frames: fps must be a whole number 1..10 (it sets stack_frames)")
            if o.fps is not None and o.stack_frames is not None and int(o.fps) != o.stack_frames:
                raise InputError(f"{where}: fps {o.fps:g} and stack_frames {o.stack_frames} disagree")
        if o.max_packing and o.max_packing > f.packing_limit:
            raise InputError(f"{where}: max_packing must be at most {f.packing_limit}")

    # --- planning -----------------------------------------------------------------------------
    def _unit_tokens(self, kind: str, size: tuple[int, int] | None = None) -> int:
        if kind in ("frame", "group"):
            return self.tokens_per_image + MARKUP
        from .processor_images import plan_sizes

        sizes, _ = plan_sizes(size[0], size[1], self.video_spec)
        s = self.video_spec
        return sum((h // s.patch_size) * (w // s.patch_size) // (s.merge * s.merge) + MARKUP for w, h in sizes)

    def plan(self, info, o: VideoOptions, budget: int | None) -> Plan:
        f = self.facts
        fps = o.fps if o.fps is not None else f.fps
        if f.recipe == vf.PACKED and o.mode == "auto":
            return self._plan_packed(info, o, fps, budget)
        if f.recipe == vf.STACKED:
            return self._plan_stacked(info, o, budget)
        cap = o.max_frames or f.max_frames
        if f.recipe == vf.PACKED:  # mode "images": the frames the packed recipe takes, one image each
            full = sampling.packed(info.n_frames, info.fps, fps, cap, o.max_packing or f.max_packing, o.packing,
                                   f.time_scale).indices
        else:
            full = sampling.frames(info.n_frames, info.fps, fps, cap)
        per = self._unit_tokens("frame") + 1  # + the "\n" between frames
        n = len(full) if budget is None else min(len(full), (budget + 1) // per)
        self._need(n, budget, info)
        if n == len(full):
            idx = full
        elif f.recipe == vf.PACKED:
            idx = sampling.uniform_sample(info.n_frames, n)
        else:
            idx = sampling.frames(info.n_frames, info.fps, fps, n)
        plan = Plan(idx, [("frame", [k]) for k in range(len(idx))], len(idx) * per - 1, f"{len(idx)} frames")
        self._notice(info, len(full), len(idx), fps, plan)
        return plan

    def _plan_packed(self, info, o: VideoOptions, fps: float, budget: int | None) -> Plan:
        f = self.facts
        cap, pmax = o.max_frames or f.max_frames, o.max_packing or f.max_packing
        full = sampling.packed(info.n_frames, info.fps, fps, cap, pmax, o.packing, f.time_scale)
        per = self._unit_tokens("group") + 1  # + the "\n" between groups
        groups_fit = len(full.groups) if budget is None else (budget + 1) // per
        self._need(groups_fit, budget, info)
        p = full
        if len(p.groups) > groups_fit:
            p = sampling.packed(info.n_frames, info.fps, fps, min(cap, groups_fit), pmax, o.packing, f.time_scale)
            if len(p.groups) > groups_fit:
                p = sampling.packed(info.n_frames, info.fps, fps, min(cap, groups_fit), pmax, o.packing,
                                    f.time_scale, n_choose=groups_fit * p.packing)
        units, k = [], 0
        for g in p.groups:
            units.append(("group", list(range(k, k + len(g))), g))
            k += len(g)
        plan = Plan(p.indices, units, len(units) * per - 1,
                    f"{p.n_frames} frames in {len(units)} groups of up to {p.packing}")
        self._notice(info, full.n_frames, p.n_frames, fps, plan)
        return plan

    def _plan_stacked(self, info, o: VideoOptions, budget: int | None) -> Plan:
        f = self.facts
        stack = o.stack_frames or (int(o.fps) if o.fps is not None else f.stack_frames)
        cap = o.max_frames or f.max_frames

        def build(n_main: int) -> Plan:
            sp = sampling.stacked(info.n_frames, info.fps, n_main, stack)
            idx = list(sp.main) + list(sp.sub)
            pos = {}
            units = []
            main_tok = self._unit_tokens("main", (info.width, info.height))
            tokens = 0
            for kind, frames in sp.units():
                if kind == "main":
                    units.append(("main", [idx.index(frames[0])]))
                    tokens += main_tok
                else:
                    start = len(sp.main) + sum(len(u[1]) for u in units if u[0] == "stack")
                    units.append(("stack", list(range(start, start + len(frames)))))
                    key = len(frames)
                    if key not in pos:
                        pos[key] = self._unit_tokens("stack", _stack_size(info.width, info.height, len(frames)))
                    tokens += pos[key]
            n_sub = sum(len(u[1]) for u in units if u[0] == "stack")
            return Plan(idx, units, tokens, f"{len(sp.main)} main frames + {n_sub} stacked sub-frames")

        plan = full = build(cap)
        if budget is not None and plan.tokens > budget:
            lo, hi = 0, cap  # the most main frames that fit (tokens grow with the count)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if build(mid).tokens <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            self._need(lo, budget, info)
            plan = build(lo)
        self._notice(info, len(full.indices), len(plan.indices), float(stack), plan)
        return plan

    def _need(self, n: int, budget: int | None, info) -> None:
        if n < 1:
            raise ContextOverflowError(f"{info.label}: not even one video frame fits: the context leaves {budget} "
                                       f"tokens after the rest of the prompt and the answer's reserve")

    def _notice(self, info, wanted: int, got: int, fps: float, plan: Plan) -> None:
        if got < wanted:
            msg = (f"video {info.label}: {wanted} frames at {fps:g} fps do not fit the context; "
                   f"using {plan.detail} ({plan.tokens} tokens)")
            log.warning("%s", msg)
            self.notices.append(msg)

    # --- expansion ----------------------------------------------------------------------------
    def cached(self, src: VideoSource, o: VideoOptions) -> list | None:
        """The units of an earlier expansion of this video with these options, or None."""
        key = src.key + "|" + o.key()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        return None

    def expand(self, src: VideoSource, o: VideoOptions, budget: int | None) -> list:
        """Prompt units of one video (cached per source and options: a later turn gets the same)."""
        hit = self.cached(src, o)
        if hit is not None:
            return hit
        key = src.key + "|" + o.key()
        plan = self.plan(src.info, o, budget)
        rgbs = src.frames(plan.indices)
        units = self._units(src, plan, rgbs, o)
        self._cache[key] = units
        while len(self._cache) > 8:
            self._cache.popitem(last=False)
        return units

    def _units(self, src: VideoSource, plan: Plan, rgbs: list[np.ndarray], o: VideoOptions) -> list:
        out = []
        for u in plan.units:
            if u[0] == "frame":
                out.append(_checked(rgbs[u[1][0]], src.limits, f"{src.label}#frame{plan.indices[u[1][0]]}"))
            elif u[0] == "group":
                from .video_packed import PackedGroup, prepare_frame

                g = PackedGroup([prepare_frame(rgbs[k]) for k in u[1]], list(u[2]))
                g.embed = (lambda grp=g: self.encoder.encode(grp))
                out.append(g)
            elif u[0] == "main":
                out.append(_frame_image(rgbs[u[1][0]], "main"))
            else:
                from .video_frames import stack

                out.append(_frame_image(stack([rgbs[k] for k in u[1]]), "stack"))
        return out


def _stack_size(width: int, height: int, n: int) -> tuple[int, int]:
    """(width, height) of video_frames.stack's canvas for n frames of width x height."""
    from .video_frames import LINE_WIDTH, stack_grid

    rows, cols = stack_grid(n, width, height)
    return cols * width + (cols - 1) * LINE_WIDTH, rows * height + (rows - 1) * LINE_WIDTH


def _frame_image(rgb: np.ndarray, tag: str) -> Image:
    rgb = np.ascontiguousarray(rgb, np.uint8)
    digest = hashlib.blake2b(rgb.tobytes(), digest_size=16, person=f"{tag}{rgb.shape}".encode()[:16]).hexdigest()
    return Image(rgb, digest)


def budget_for(n_ctx: int, base_tokens: int, reserve: int, n_new: int) -> int:
    """Tokens each new video may use: what the context leaves after the rest and the reserve."""
    return max(0, (n_ctx - base_tokens - reserve) // max(1, n_new))


def answer_reserve(n_ctx: int, max_tokens: int | None) -> int:
    """Tokens kept for the answer: max_tokens when given, else a quarter of the context up to 512."""
    if max_tokens is not None and max_tokens > 0:
        return int(max_tokens)
    return min(512, n_ctx // 4)


__all__ = ["VideoOptions", "VideoRecipe", "Plan", "budget_for", "answer_reserve", "MODES"]

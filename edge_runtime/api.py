"""The public Python API: load a converted pair, chat with images, video and thinking.

    from minicpmv_edge.edge_runtime import MiniCPMV
    m = MiniCPMV.from_folder("out/minicpmv45")          # or MiniCPMV("text.gguf", "mmproj.gguf")
    r = m.chat([{"role": "user", "content": [PIL.Image.open("a.jpg"), "What is this?"]}])
    print(r.text, r.reasoning, r.timings)
    for piece in m.chat(messages, stream=True): print(piece.text, end="")

`chat` takes the whole conversation each time; the model's session keeps its
KV cache and re-evaluates only what changed (see session.py).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from minicpmv_edge import schema
from minicpmv_edge.errors import InputError
from minicpmv_edge.gguf_info import check_pair, read_info
from minicpmv_edge.manifest import Manifest

from . import engine
from .engine import Bitmap, Context, Model, Vision
from .media import Image, MediaLimits
from .messages import Turn, Video, normalize
from .prompt import PromptFormat
from .sampling import Sampler, SamplingOptions
from .session import Counters, EmbeddingCache, Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    n_ctx: int = 4096
    n_threads: int | None = None  # default: physical cores
    n_batch: int = 512
    n_gpu_layers: int = 0  # Metal/CUDA builds: layers to offload (-1 = all)
    mmproj_gpu: bool = False  # run the vision encoder on the GPU backend
    max_slices: int | None = None  # cap on LLaVA-UHD slices per image (default: the model's)
    image_max_pixels: int = MediaLimits.max_pixels
    use_mmap: bool = True
    # an external image-slice encoder used instead of mtmd's (edge_runtime/external_encoder.py,
    # e.g. OnnxVisionEncoder("vision-onnx/")): n_chunks(rgb), slices(rgb), encode(pixels), check(...)
    vision_encoder: object | None = None


@dataclass
class Timings:
    load_ms: float = 0.0
    image_encode_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_tokens_evaluated: int = 0
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    decode_ms: float = 0.0
    ttft_ms: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens_evaluated / (self.prefill_ms / 1e3) if self.prefill_ms > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return (self.generated_tokens - 1) / (self.decode_ms / 1e3) if self.decode_ms > 0 and self.generated_tokens > 1 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(prefill_tok_s=round(self.prefill_tok_s, 2), decode_tok_s=round(self.decode_tok_s, 2))
        return d


@dataclass
class Piece:
    """A streamed piece of the reply; `reasoning` marks thinking text."""

    text: str
    reasoning: bool = False


@dataclass
class ChatResult:
    text: str  # the answer (thinking removed)
    reasoning: str  # the thinking part ("" when thinking is off)
    raw: str  # everything the model generated
    finish_reason: str  # "stop" | "length" | "cancelled"
    timings: Timings
    usage: dict

    def __str__(self) -> str:
        return self.text


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MiniCPMV:
    def __init__(self, model: str | Path, mmproj: str | Path | None = None, options: LoadOptions | None = None,
                 **overrides):
        t0 = time.perf_counter()
        self.options = opts = _merge(options or LoadOptions(), overrides)
        if opts.n_ctx < 64:
            raise InputError("n_ctx must be at least 64")
        info, mm_info = check_pair(model, mmproj) if mmproj else (read_info(model), None)
        self.format = PromptFormat.from_gguf(info)
        self.limits = MediaLimits(max_pixels=opts.image_max_pixels)
        threads = opts.n_threads or engine.physical_cores()
        self.model = Model(str(model), n_gpu_layers=opts.n_gpu_layers, use_mmap=opts.use_mmap)
        # the merger families (4.6, OCR, 4.7) lay images out as transformers' processors do and
        # encode the crops themselves (visual_plan.py); the resampler families go through mtmd
        self.exact_images = mm_info is not None and mm_info.get(schema.CLIP_PROJECTOR_TYPE) == schema.PROJECTOR_MINICPMV4_6
        if self.exact_images:
            from .clip_encoder import ClipEncoder

            self.vision = ClipEncoder(str(mmproj), n_threads=threads, use_gpu=opts.mmproj_gpu)
        else:
            self.vision = Vision(str(mmproj), self.model, n_threads=threads, use_gpu=opts.mmproj_gpu) if mmproj else None
        self.cache = EmbeddingCache()
        self._ctx = Context(self.model, n_ctx=opts.n_ctx, n_batch=opts.n_batch, n_threads=threads)
        enc = opts.vision_encoder
        if enc is not None:
            if self.vision is None:
                raise InputError("vision_encoder needs an mmproj (mtmd still slices and tokenizes images)")
            if hasattr(enc, "check"):
                enc.check(mmproj=str(mmproj), text_n_embd=self.model.n_embd, family=self.format.family)
        if self.exact_images:
            self.session = Session(self._ctx, None, self.cache)
            self.session.planner = _planner(self, info, mm_info)
            self.session.planner.external = enc  # e.g. OnnxVisionEncoder: encodes the same processor crops
        else:
            self.session = Session(self._ctx, self.vision, self.cache, encoder=enc)
        self._lock = threading.Lock()
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self._stop_ids = {t for s in self.format.stop for t in self._single_token(s)}

    @classmethod
    def from_folder(cls, folder: str | Path, options: LoadOptions | None = None, **overrides) -> "MiniCPMV":
        m = Manifest.load(folder)
        return cls(m.path_of(folder, "text"), m.path_of(folder, "mmproj"), options, **overrides)

    @property
    def counters(self) -> Counters:
        return self.session.counters

    def reset(self) -> None:
        self.session.reset()

    def cancel(self) -> None:
        """Stop a running generation from another thread (it returns finish_reason 'cancelled')."""
        self._ctx.request_abort()

    def close(self) -> None:
        for h in (getattr(self, "_ctx", None), getattr(self, "vision", None), getattr(self, "model", None)):
            if h is not None:
                h.close()

    def _single_token(self, s: str) -> list[int]:
        ids = self.model.tokenize(s)
        return ids if len(ids) == 1 else []

    # --- prompt -------------------------------------------------------------
    def build_prompt(self, turns: list[Turn], enable_thinking: bool) -> tuple[str, list[Bitmap]]:
        if enable_thinking and not self.format.thinking_supported:
            raise InputError(f"{self.format.family} has no thinking mode")
        if any(not isinstance(p, str) for t in turns for p in t.parts) and self.vision is None:
            raise InputError("this model was loaded without an mmproj; images need one")
        fmt, marker = self.format, (self.vision.marker if self.vision else "")
        out: list[str] = []
        bitmaps: list[Bitmap] = []
        if turns[0].role != "system" and fmt.default_system:
            out.append(fmt.turn("system", fmt.default_system))
        image_index = video_index = 0
        for turn in turns:
            pieces = []
            for part in turn.parts:
                if isinstance(part, str):
                    pieces.append(part)
                elif isinstance(part, Image):
                    pieces.append(fmt.image_placeholder(marker, image_index))
                    rgb = part.rgb if self.exact_images else self._fit_slices(part.rgb, self._max_slices())
                    bitmaps.append(Bitmap(rgb, part.digest))
                    image_index += 1
                elif isinstance(part, Video):
                    frames = []
                    for f in part.frames:  # frames: no slicing, no image ids (model cards' video recipe)
                        frames.append(fmt.image_placeholder(marker, 0, use_id=False))
                        rgb = f.rgb if self.exact_images else self._fit_slices(f.rgb, fmt.video_max_slice_nums)
                        bitmaps.append(Bitmap(rgb, f.digest + "/v"))
                    if self.exact_images:
                        # MiniCPMV4_6Processor.replace_video_token: frames back to back; one image id per
                        # video for 4.6 / OCR (use_image_id), none for 4.7 (its processor drops it)
                        canvas = self.session.planner.canvas
                        prefix = fmt.image_placeholder("", video_index) if fmt.use_image_id and not canvas else ""
                        pieces.append(prefix + "".join(frames))
                        video_index += 1
                    else:
                        pieces.append(fmt.separator.join(frames))
            out.append(fmt.turn(turn.role, fmt.separator.join(pieces)))
        out.append(fmt.generation_prefix(enable_thinking))
        return "".join(out), bitmaps

    def _max_slices(self) -> int:
        return min(self.options.max_slices or self.format.max_slice_nums, self.format.max_slice_nums)

    @staticmethod
    def _fit_slices(rgb, max_slices: int):
        """mtmd always allows 9 slices; fewer are obtained by shrinking the image so that
        LLaVA-UHD's slice count (ceil(area / 448^2)) stays within the cap; 1 = no slicing."""
        import numpy as np
        from PIL import Image as PILImage

        h, w = rgb.shape[:2]
        side = 448
        if max_slices >= 9:
            return rgb
        if max_slices <= 1:
            scale = min(1.0, side / max(h, w))
        else:
            scale = min(1.0, (max_slices * side * side / (w * h)) ** 0.5 * 0.999)
        if scale >= 1.0:
            return rgb
        nw, nh = max(2, int(w * scale)), max(2, int(h * scale))
        return np.asarray(PILImage.fromarray(rgb).resize((nw, nh), PILImage.BICUBIC))

    # --- chat ---------------------------------------------------------------
    _D = SamplingOptions()  # the one place sampling defaults live

    def chat(self, messages, *, stream: bool = False, enable_thinking: bool = False, max_tokens: int = _D.max_tokens,
             temperature: float = _D.temperature, top_p: float = _D.top_p, top_k: int = _D.top_k,
             repeat_penalty: float = _D.repeat_penalty, seed: int = _D.seed, stop: list[str] | tuple[str, ...] = ()):
        sampling = SamplingOptions(temperature=temperature, top_p=top_p, top_k=top_k, repeat_penalty=repeat_penalty,
                                   seed=seed, max_tokens=max_tokens, stop=tuple(stop)).validated()
        # a list of Turns was normalized already (the server decodes images before queueing)
        turns = list(messages) if messages and all(isinstance(m, Turn) for m in messages) \
            else normalize(messages, self.limits)
        prompt, bitmaps = self.build_prompt(turns, enable_thinking)
        gen = self._generate(prompt, bitmaps, sampling, enable_thinking)
        if stream:
            return gen
        for _ in gen:
            pass
        return self.last_result

    def _generate(self, prompt: str, bitmaps: list[Bitmap], s: SamplingOptions, thinking: bool) -> Iterator[Piece]:
        with self._lock:
            self._ctx.clear_abort()
            t0 = time.perf_counter()
            timings = Timings(load_ms=self.load_ms)
            tail = self.format.thinking_prefix_on if thinking else self.format.thinking_prefix_off
            pre = self.session.prefill(prompt, bitmaps, tail=tail if self.format.thinking_supported else "")
            timings.image_encode_ms = pre.image_encode_ms
            timings.prompt_tokens, timings.prompt_tokens_evaluated = pre.n_prompt, pre.n_evaluated
            sampler = Sampler(self.model, s)
            raw = bytearray()
            text_out = ""
            emitted = 0
            in_think = thinking
            close_tag = self.format.think_close
            finish = "length"
            t_first = None
            stops = tuple(s.stop) + tuple(x for x in self.format.stop if not self._single_token(x))
            try:
                for _ in range(s.max_tokens):
                    if self._ctx._abort.is_set():
                        finish = "cancelled"
                        break
                    tok = sampler.sample(self._ctx)
                    if t_first is None:
                        t_first = time.perf_counter()
                        timings.prefill_ms = pre.ms
                        timings.ttft_ms = (t_first - t0) * 1e3
                    timings.generated_tokens += 1
                    if self.model.is_eog(tok) or tok in self._stop_ids:
                        finish = "stop"
                        break
                    raw += self.model.piece(tok)
                    text = raw.decode("utf-8", errors="ignore") if _complete_utf8(raw) else None
                    if text is not None:
                        text_out = text
                        hit = next((x for x in stops if x and x in text_out), None)
                        if hit:
                            text_out = text_out[:text_out.index(hit)]
                            finish = "stop"
                        safe = len(text_out) if hit else _safe_len(text_out, stops + ((close_tag,) if in_think else ()))
                        while emitted < safe:
                            chunk = text_out[emitted:safe]
                            if in_think and close_tag in text_out[:safe]:
                                cut = text_out.index(close_tag)
                                if emitted < cut:
                                    yield Piece(text_out[emitted:cut], True)
                                emitted = cut + len(close_tag)
                                in_think = False
                                continue
                            yield Piece(chunk, in_think)
                            emitted = safe
                        if hit:
                            break
                    try:
                        self.session.append_generated(tok)
                    except Exception as exc:  # aborted from another thread mid-decode
                        if self._ctx._abort.is_set():
                            finish = "cancelled"
                            break
                        raise exc
                if emitted < len(text_out) and finish != "cancelled":  # text held back for a stop string that never came
                    yield Piece(text_out[emitted:], in_think)
            finally:
                sampler.close()
            if t_first is not None:
                timings.decode_ms = (time.perf_counter() - t_first) * 1e3
            timings.peak_rss_mb = peak_rss_mb()
            reasoning, answer = _split_thinking(text_out, thinking, close_tag)
            self.last_result = ChatResult(
                text=answer, reasoning=reasoning, raw=text_out, finish_reason=finish, timings=timings,
                usage={"prompt_tokens": pre.n_prompt, "completion_tokens": timings.generated_tokens,
                       "total_tokens": pre.n_prompt + timings.generated_tokens})


def _split_thinking(text: str, thinking: bool, close_tag: str) -> tuple[str, str]:
    if thinking and close_tag in text:
        r, a = text.split(close_tag, 1)
        return r.strip(), a.lstrip("\n")
    if thinking:
        return text.strip(), ""
    return "", text


def _complete_utf8(buf: bytearray) -> bool:
    try:
        buf.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start < len(buf) - 3  # invalid inside, not a cut-off tail: decode with 'ignore'


def _safe_len(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be emitted without splitting a stop string that may be forming."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold


def _merge(opts: LoadOptions, overrides: dict) -> LoadOptions:
    if not overrides:
        return opts
    unknown = set(overrides) - set(LoadOptions.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown load option(s): {sorted(unknown)}")
    from dataclasses import replace

    return replace(opts, **overrides)


def _planner(m: "MiniCPMV", info, mm_info):
    """The processor-exact image planner for a merger-family pair (4.6, OCR, 4.7)."""
    from .visual_plan import VisualPlanner, Vocab, specs_from_gguf

    kv = info.kv
    canvas = kv.get(schema.EDGE_IMAGE_POSITIONS, schema.POSITIONS_SEQUENTIAL) == schema.POSITIONS_CANVAS

    def one(text: str) -> int:
        ids = m.model.tokenize(text)
        if len(ids) != 1:
            raise InputError(f"the text model has no single token for {text!r}", info.path)
        return ids[0]

    def tid(key: str, text: str) -> int:
        return int(kv[key]) if key in kv else one(text)

    vocab = Vocab(image_start=tid(schema.EDGE_CANVAS_IMAGE_START, "<image>"),
                  image_end=tid(schema.EDGE_CANVAS_IMAGE_END, "</image>"),
                  slice_start=tid(schema.EDGE_CANVAS_SLICE_START, "<slice>"),
                  slice_end=tid(schema.EDGE_CANVAS_SLICE_END, "</slice>"),
                  newline=tid(schema.EDGE_CANVAS_NEWLINE, "\n"), image_pad=one("<|image_pad|>"))
    image_spec, video_spec = specs_from_gguf(kv, mm_info.kv, m.options.max_slices)
    return VisualPlanner(m.model, m.vision, m.cache, image_spec, video_spec, vocab, canvas, m.session.counters)

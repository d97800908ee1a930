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
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from minicpmv_edge import schema
from minicpmv_edge.errors import InputError
from minicpmv_edge.gguf_info import check_pair, read_info
from minicpmv_edge.manifest import Manifest

from . import engine
from .engine import Bitmap, Context, Model, Vision
from .media import Image, MediaLimits
from .messages import Turn, Video, normalize
from .prompt import PromptFormat, RenderedPrompt
from . import chat_args
from .generate import generate
from .results import ChatResult, Piece, Timings  # noqa: F401  (public names of this module)
from .load_checks import resolve_n_ctx
from .sampling import model_defaults
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


class MiniCPMV:
    def __init__(self, model: str | Path, mmproj: str | Path | None = None, options: LoadOptions | None = None,
                 **overrides):
        t0 = time.perf_counter()
        opts = _merge(options or LoadOptions(), overrides)
        info, mm_info = check_pair(model, mmproj) if mmproj else (read_info(model), None)
        self.format = PromptFormat.from_gguf(info, mm_info)  # family facts + chat template, before llama.cpp
        # ranges, GPU availability, the KV cache against free memory; -c 0 = the training context
        self.options = opts = replace(opts, n_ctx=resolve_n_ctx(opts, info))
        self.limits = MediaLimits(max_pixels=opts.image_max_pixels)
        threads = opts.n_threads or engine.physical_cores()
        self.model = Model(str(model), n_gpu_layers=opts.n_gpu_layers, use_mmap=opts.use_mmap)
        self.format.template.special_tokens.update(self.model.special_tokens())  # bos_token, eos_token, ...
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
        self.video = self._video_recipe(info, mm_info, mmproj, threads)
        self.last_notices: list[str] = []  # one line per video cut to fit the context, last chat()
        self._lock = threading.Lock()
        self._health: str | None = None
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self._stop_ids = {t for s in self.format.stop for t in self._single_token(s)}
        # generation_config.json's settings (general.sampling.*), else the model card's
        self.sampling_defaults = model_defaults(self.model.meta)

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
        """Stop a running generation from another thread (it returns finish_reason 'cancelled'),
        in prefill or decode; the KV cache stays consistent and the next chat() works as usual."""
        self._ctx.request_abort()

    def encode_images(self, images) -> list[float]:
        """Encode images now (an interactive /image): their embeddings wait in the cache for the
        turn that uses them. `images`: what chat() accepts as an image (path, bytes, PIL image, array).
        Returns the milliseconds of each chunk encoded (none when all were cached)."""
        from .media import load_image

        loaded = [im if isinstance(im, Image) else load_image(im, self.limits) for im in images]
        if self.vision is None:
            raise InputError("this model was loaded without an mmproj; images need one")
        bitmaps = [Bitmap(im.rgb if self.exact_images else self._fit_slices(im.rgb, self._max_slices()), im.digest)
                   for im in loaded]
        with self._lock:
            return self.session.encode_ahead(bitmaps)

    def health(self) -> str | None:
        """None when llama.cpp's cache holds exactly what the session recorded; else the problem.
        While a generation runs the state is in flux: then the answer of the last check."""
        if not self._lock.acquire(blocking=False):
            return self._health
        try:
            self._health = self.session.consistency_problem()
        finally:
            self._lock.release()
        return self._health

    def _video_recipe(self, info, mm_info, mmproj, threads: int):
        """The model's own video recipe (video.py), from the GGUF's minicpmv_edge.video.* keys."""
        from minicpmv_edge import video_facts

        from .video import VideoRecipe

        facts = video_facts.read(info.kv, self.format.family)
        self.video_use_image_id = bool(info.kv.get(schema.EDGE_VIDEO_USE_IMAGE_ID, False))
        encoder = None
        if facts.recipe == video_facts.PACKED and mm_info is not None:
            from .video_packed import PackedEncoder

            encoder = PackedEncoder(str(mmproj), mm_info.kv, threads, self.options.mmproj_gpu)
        spec = self.session.planner.video_spec if self.exact_images else None
        return VideoRecipe(facts, self.exact_images, spec, encoder, self.format.tokens_per_slice)

    def close(self) -> None:
        enc = getattr(getattr(self, "video", None), "encoder", None)
        if enc is not None:
            enc.close()
        for h in (getattr(self, "_ctx", None), getattr(self, "vision", None), getattr(self, "model", None)):
            if h is not None:
                h.close()

    def _single_token(self, s: str) -> list[int]:
        ids = self.model.tokenize(s)
        return ids if len(ids) == 1 else []

    # --- prompt -------------------------------------------------------------
    def render(self, turns: list[Turn], enable_thinking: bool | None = False, tools=None,
               **template_kwargs) -> tuple[RenderedPrompt, list[Bitmap]]:
        """The prompt from the model's own chat template (prompt.py), and one bitmap per media marker."""
        if any(not isinstance(p, str) for t in turns for p in t.parts) and self.vision is None:
            raise InputError("this model was loaded without an mmproj; images need one")
        marker = self.vision.marker if self.vision else ""
        rendered = self.format.render(turns, marker, enable_thinking, tools, **template_kwargs)
        bitmaps = []
        for m in rendered.media:
            # exact-image families slice as their processor does (visual_plan.py); mtmd's get shrunk
            # to the slice cap; video frames: no slicing (model cards' video recipe)
            cap = self.format.video_max_slice_nums if m.frame else self._max_slices()
            rgb = m.image.rgb if self.exact_images else self._fit_slices(m.image.rgb, cap)
            bitmaps.append(Bitmap(rgb, m.image.digest + ("/v" if m.frame else ""),
                                  embed=getattr(m.image, "embed", None) if m.frame else None))
        return rendered, bitmaps

    def build_prompt(self, turns: list[Turn], enable_thinking: bool | None = False, tools=None,
                     **template_kwargs) -> tuple[str, list[Bitmap]]:
        rendered, bitmaps = self.render(turns, enable_thinking, tools, **template_kwargs)
        return rendered.text, bitmaps

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
    def chat(self, messages, *, stream: bool = False, enable_thinking: bool | None = False,
             max_tokens: int | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, typical_p: float | None = None,
             repeat_penalty: float | None = None, repeat_last_n: int | None = None,
             presence_penalty: float | None = None, frequency_penalty: float | None = None,
             seed: int | None = None, stop: str | list[str] | tuple[str, ...] | None = None,
             logit_bias: dict | list | None = None, ignore_eos: bool = False,
             grammar: str | None = None, json_schema: dict | str | None = None, response_format: dict | None = None,
             logprobs: bool = False, top_logprobs: int = 0,
             reasoning_format: str = "auto", thinking_budget: int = -1, thinking_budget_message: str = "",
             tools: list | None = None, tool_choice: str | dict | None = None, parallel_tool_calls: bool = True,
             chat_template_kwargs: dict | None = None):
        """Answer the conversation `messages`; a ChatResult, or with stream=True an iterator of Pieces
        (then `last_result` holds the ChatResult once it is exhausted).

        Sampling arguments left at None take the model's defaults (`sampling_defaults`: the GGUF's
        general.sampling.* keys from generation_config.json, else the model card's). `seed` None or -1:
        random. `max_tokens=-1`: until the end of generation or a full context. `logit_bias`: {token id
        or text: bias} (text is tokenized; a bias of False or -inf bans). Constrain the answer with one
        of `grammar` (GBNF), `json_schema`, `response_format` (OpenAI's). `logprobs`/`top_logprobs`:
        per-token log-probabilities in the result (and in each Piece). With `enable_thinking`:
        `reasoning_format` "auto"/"deepseek" separates the thought, "none" leaves it in the text;
        `thinking_budget=N` closes the thought after N tokens (`thinking_budget_message` goes before
        the closing tag). `enable_thinking` True/False as the model cards' chat() passes it; None
        leaves it undefined for the chat template (its own default). `chat_template_kwargs` reach the
        template as variables (as with transformers' apply_chat_template; `enable_thinking` among
        them wins). `tools` (OpenAI's function definitions) reach the chat template; calls in the
        answer come back in `ChatResult.tool_calls` (`Piece.tool_call` when streaming) in the model's own
        format; `tool_choice` "auto" (default), "none", "required" or {"type": "function", "function":
        {"name": ...}} (the last two enforced by a grammar); `parallel_tool_calls=False`: one call at most."""
        prompt, bitmaps, opts, in_think, tail = self._prepare(messages, _arguments(locals()))
        gen = generate(self, prompt, bitmaps, opts, in_think=in_think, tail=tail)
        if stream:
            return gen
        for _ in gen:
            pass
        return self.last_result

    def prompt_for(self, messages, **kwargs) -> str:
        """The prompt `chat(messages, **kwargs)` would evaluate (the model's chat template, each image as
        mtmd's media marker), checked as chat() checks it, without generating."""
        import inspect

        bound = inspect.signature(MiniCPMV.chat).bind(self, messages, **kwargs)
        bound.apply_defaults()
        return self._prepare(messages, _arguments(bound.arguments))[0]

    def _prepare(self, messages, a: dict):
        """chat()'s arguments -> (prompt, bitmaps, GenerateOptions, in_think, tail): chat_args.py."""
        return chat_args.prepare(self, messages, a)

    def expand_videos(self, turns: list[Turn], enable_thinking: bool = False, reserve: int | None = None) -> list[Turn]:
        """Turns with every video part expanded into its prompt units (video.py), each new video
        cut to what the context leaves after the rest of the prompt and `reserve` answer tokens."""
        from .video import answer_reserve, budget_for

        self.last_notices = []
        videos = [p for t in turns for p in t.parts if isinstance(p, Video) and p.source is not None]
        if not videos:
            return turns
        if self.vision is None:
            raise InputError("this model was loaded without an mmproj; video needs one")
        for v in videos:
            self.video.check(v.options, v.source.label)
        known = {id(v): self.video.cached(v.source, v.options) for v in videos}
        new = [v for v in videos if known[id(v)] is None]
        budget = None
        if new:  # count the prompt without the new videos, as the session would lay it out
            probe = [replace(t, parts=[Video(frames=known[id(p)] or []) if isinstance(p, Video) and p.source else p
                                       for p in t.parts]) for t in turns]
            base = self.session.count_tokens(*self.build_prompt(probe, enable_thinking))
            budget = budget_for(self._ctx.n_ctx, base, answer_reserve(self._ctx.n_ctx, reserve), len(new))
        self.video.notices = []
        out = [replace(t, parts=[replace(p, frames=self.video.expand(p.source, p.options, budget))
                                 if isinstance(p, Video) and p.source is not None else p for p in t.parts])
               for t in turns]
        self.last_notices = list(self.video.notices)
        return out

    def tool_plan(self, tools, tool_choice=None, parallel_tool_calls: bool = True, constrained: bool = False):
        """What tools / tool_choice / parallel_tool_calls mean for this model (tools.plan); the grammar is compiled."""
        return chat_args.tool_plan(self, tools, tool_choice, parallel_tool_calls, constrained)

    def token_biases(self, bias) -> tuple[tuple[int, float], ...]:
        """{token id | text: bias} or [[token id | text, bias], ...] -> (token id, bias) pairs (chat_args.py)."""
        return chat_args.token_biases(self.model, bias)

    def check_template_kwargs(self, kwargs) -> dict:
        """chat_template_kwargs with every key a variable of the model's chat template (InputError otherwise)."""
        return chat_args.template_kwargs(self, kwargs)


def _arguments(values: dict) -> dict:
    """chat()'s keyword arguments from its locals() (or a signature binding)."""
    return {k: v for k, v in values.items() if k not in ("self", "messages", "stream")}


def _merge(opts: LoadOptions, overrides: dict) -> LoadOptions:
    if not overrides:
        return opts
    unknown = set(overrides) - set(LoadOptions.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown load option(s): {sorted(unknown)}")
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

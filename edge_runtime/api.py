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
from dataclasses import replace
from pathlib import Path

from minicpmv_edge import schema
from minicpmv_edge.errors import InputError
from minicpmv_edge.gguf_info import check_pair, read_info
from minicpmv_edge.manifest import Manifest

from . import engine
from .engine import Bitmap, Context, Model, Vision
from .external_encoder import slice_plan
from .media import Image, MediaLimits, load_image
from .messages import Turn, Video, normalize
from .prompt import PromptFormat, RenderedPrompt
from . import chat_args
from .generate import generate
from .prefill_ahead import PrefillResult, prefix_before_cut, with_cut
from .encoder_choice import choose
from .image_budget import MTMD_MAX_SLICES, ImageBudget, ImageCost, bitmap_id, fitted_size, resized
from .results import ChatResult, Piece, Timings  # noqa: F401  (public names of this module)
from .load_checks import resolve_n_ctx
from .load_options import LoadOptions, merge_options  # noqa: F401  (LoadOptions: public here too)
from .sampling import model_defaults
from .session import Counters, EmbeddingCache, Session

log = logging.getLogger(__name__)


class MiniCPMV:
    def __init__(self, model: str | Path, mmproj: str | Path | None = None, options: LoadOptions | None = None,
                 **overrides):
        t0 = time.perf_counter()
        opts = merge_options(options or LoadOptions(), overrides)
        info, mm_info = check_pair(model, mmproj) if mmproj else (read_info(model), None)
        self.format = PromptFormat.from_gguf(info, mm_info)  # family facts + chat template, before llama.cpp
        # ranges, GPU availability, the KV cache against free memory; -c 0 = the training context
        self.options = opts = replace(opts, n_ctx=resolve_n_ctx(opts, info))
        self.limits = MediaLimits(max_pixels=opts.image_max_pixels)
        ImageBudget(opts.max_slices, opts.max_pixels).validated(None)  # types and ranges; the cap below
        # mtmd's slice size and patch (clip.vision.image_size / patch_size): image_cost's slice grid
        mm_kv = mm_info.kv if mm_info is not None else {}
        self._slice_geometry = (int(mm_kv.get(schema.CLIP_IMAGE_SIZE, 448)), int(mm_kv.get("clip.vision.patch_size", 14)))
        threads = opts.n_threads or engine.physical_cores()
        self.model = Model(str(model), n_gpu_layers=opts.n_gpu_layers, use_mmap=opts.use_mmap)
        self.format.template.special_tokens.update(self.model.special_tokens())  # bos_token, eos_token, ...
        self.encoder = choose(opts.vision_encoder, mmproj, opts.mmproj_type, opts.mmproj_gpu, opts.vision_onnx,
                              opts.onnx_precision, threads, self.format.family, self.model.n_embd)
        log.info("vision encoder: %s", self.encoder.describe())
        mmproj_file = self.encoder.mmproj
        # the merger families (4.6, OCR, 4.7) lay images out as transformers' processors do and
        # encode the crops themselves (visual_plan.py); the resampler families go through mtmd
        self.exact_images = mm_info is not None and mm_info.get(schema.CLIP_PROJECTOR_TYPE) == schema.PROJECTOR_MINICPMV4_6
        if opts.max_slices and not self.exact_images and opts.max_slices > MTMD_MAX_SLICES:
            raise InputError(f"max_slices {opts.max_slices}: {self.format.family} is sliced by mtmd, which "
                             f"allows at most {MTMD_MAX_SLICES} slices per image at llama.cpp 0c1e570")
        if self.exact_images:
            from .clip_encoder import ClipEncoder

            self.vision = ClipEncoder(str(mmproj_file), n_threads=threads, use_gpu=opts.mmproj_gpu)
        else:
            self.vision = Vision(str(mmproj_file), self.model, n_threads=threads, use_gpu=opts.mmproj_gpu,
                                 flash_attn=opts.vision_flash_attn) if mmproj else None
        self.cache = EmbeddingCache(store=self._disk_cache(opts, mmproj_file))
        self._ctx = Context(self.model, n_ctx=opts.n_ctx, n_batch=opts.n_batch, n_threads=threads)
        enc = self.encoder.external
        if enc is not None:
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

    def _disk_cache(self, opts: LoadOptions, mmproj_file):
        if not opts.image_cache_dir or mmproj_file is None:
            return None
        ext = self.encoder.external
        # what the embeddings depend on besides the projector file: the disk cache's namespace
        identity = "llama.cpp" if ext is None else getattr(ext, "identity", None)
        if not identity:
            log.warning("no persistent image cache: the encoder %s has no `identity`", self.encoder.describe())
            return None
        from .embedding_store import DiskEmbeddingStore, encoder_namespace

        if isinstance(opts.image_cache_mb, bool) or not isinstance(opts.image_cache_mb, int) or opts.image_cache_mb < 1:
            raise InputError(f"image_cache_mb must be a positive integer, got {opts.image_cache_mb!r}")
        root = Path(opts.image_cache_dir)
        try:
            ns = encoder_namespace(mmproj_file, identity, root)
            return DiskEmbeddingStore(root, ns, opts.image_cache_mb << 20)
        except OSError as exc:
            raise InputError(f"cannot use this folder for the image cache ({exc.strerror or exc})", root) from None

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
        bitmaps = [self._bitmap(im, self._budget(None, None), frame=False) for im in loaded]
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
               budget: ImageBudget | None = None, **template_kwargs) -> tuple[RenderedPrompt, list[Bitmap]]:
        """The prompt from the model's own chat template (prompt.py), and one bitmap per media marker,
        laid out under this request's image `budget` (image_budget.py)."""
        if any(not isinstance(p, str) for t in turns for p in t.parts) and self.vision is None:
            raise InputError("this model was loaded without an mmproj; images need one")
        marker = self.vision.marker if self.vision else ""
        rendered = self.format.render(turns, marker, enable_thinking, tools, **template_kwargs)
        bitmaps = []
        for m in rendered.media:
            # exact-image families slice as their processor does (visual_plan.py); mtmd's get shrunk
            # to the slice cap; video frames: no slicing (model cards' video recipe)
            bm = self._bitmap(m.image, budget or ImageBudget(), frame=m.frame)
            bm.embed = getattr(m.image, "embed", None) if m.frame else None
            bitmaps.append(bm)
        return rendered, bitmaps

    def build_prompt(self, turns: list[Turn], enable_thinking: bool | None = False, tools=None,
                     budget: ImageBudget | None = None, **template_kwargs) -> tuple[str, list[Bitmap]]:
        rendered, bitmaps = self.render(turns, enable_thinking, tools, budget=budget, **template_kwargs)
        return rendered.text, bitmaps

    def _max_slices(self) -> int:
        return min(self.options.max_slices or self.format.max_slice_nums, self.format.max_slice_nums)

    def _bitmap(self, img: Image, budget: ImageBudget, frame: bool) -> Bitmap:
        """One image as the encoder will see it under `budget` (image_budget.py); video frames keep the
        model's video slicing (1: unsliced) and take only the pixel cap."""
        h, w = img.rgb.shape[:2]  # (a packed video group has pixels but no size attribute)
        size = self._fitted(w, h, budget, frame)
        max_slices = budget.max_slice_nums if self.exact_images and not frame else None
        return Bitmap(resized(img.rgb, size), bitmap_id(img.digest, (w, h), size, "/v" if frame else ""),
                      max_slices=max_slices)

    def _fitted(self, w: int, h: int, budget: ImageBudget, frame: bool = False) -> tuple[int, int]:
        """The size the slicer gets: the pixel cap, and for mtmd's families (no run-time slice setting)
        the shrink that keeps its slice count within the cap; as the C bridge computes it."""
        if self.exact_images:  # their processors slice with the cap themselves
            return fitted_size(w, h, None, budget.max_pixels)
        cap = self.format.video_max_slice_nums if frame else (budget.max_slice_nums or self._max_slices())
        return fitted_size(w, h, cap, budget.max_pixels)

    def _budget(self, max_slice_nums, max_pixels) -> ImageBudget:
        """This request's image budget; what it leaves open comes from the load options."""
        # processor-exact families slice with any cap (their processors do); mtmd at most 9
        cap = None if self.exact_images else min(self.format.max_slice_nums, MTMD_MAX_SLICES)
        return ImageBudget(max_slice_nums, max_pixels if max_pixels is not None else self.options.max_pixels) \
            .validated(cap)

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
             tools: list | None = None, tool_choice: str | dict | None = None,
             parallel_tool_calls: bool | None = None,
             chat_template_kwargs: dict | None = None, max_slice_nums: int | None = None,
             max_pixels: int | None = None):
        """Answer the conversation `messages`; a ChatResult, or with stream=True an iterator of Pieces
        (then `last_result` holds the ChatResult once it is exhausted).

        `max_slice_nums` / `max_pixels`: this request's image budget (image_budget.py; `image_cost`
        tells what an image costs under it before anything is encoded).

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
        {"name": ...}} (the last two enforced by a grammar); `parallel_tool_calls=False`: one call at most.
        `max_slice_nums` / `max_pixels`: this request's image budget (image_budget.py)."""
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

    def tool_plan(self, tools, tool_choice=None, parallel_tool_calls: bool | None = None, constrained: bool = False):
        """What tools / tool_choice / parallel_tool_calls mean for this model (tools.plan); the grammar is compiled."""
        return chat_args.tool_plan(self, tools, tool_choice, parallel_tool_calls, constrained)

    def _turns(self, messages) -> list[Turn]:
        # a list of Turns was normalized already (the server decodes images before queueing)
        if messages and all(isinstance(m, Turn) for m in messages):
            return list(messages)
        return normalize(messages, self.limits)

    # --- ahead of the question ------------------------------------------------
    def prefill(self, messages, *, enable_thinking: bool = False, max_slice_nums: int | None = None,
                max_pixels: int | None = None, tools: list | None = None,
                chat_template_kwargs: dict | None = None) -> PrefillResult:
        """Evaluate `messages` into the KV cache now, before the question exists (prefill_ahead.py): the
        images are encoded and placed, so a later `chat(messages + question)` with the same budget,
        `tools` and `chat_template_kwargs` (they change the rendered prompt: a tool list sits in the
        system turn) evaluates only the question's tokens. `messages` may end with a user message
        holding just the image(s), or with any other message (a system prompt, the last answer)."""
        t0 = time.perf_counter()
        budget = self._budget(max_slice_nums, max_pixels)
        kwargs = chat_args.template_kwargs(self, chat_template_kwargs)
        enable_thinking = kwargs.pop("enable_thinking", enable_thinking)  # as chat() reads it
        tools = chat_args.tool_plan(self, tools, None, None, False).tools  # checked as chat() checks them
        turns = self.expand_videos(self._turns(with_cut(messages)), enable_thinking)
        prompt, bitmaps = self.build_prompt(turns, enable_thinking, tools or None, budget=budget, **kwargs)
        text = prefix_before_cut(prompt)
        bitmaps = bitmaps[:text.count(self.vision.marker)] if self.vision is not None else []
        with self._lock:
            self._ctx.clear_abort()  # a cancel() of an earlier answer must not stop this prefill (as chat)
            before = self.session.counters.images_encoded
            pre = self.session.prefill(text, bitmaps, ahead=True)
            encoded = self.session.counters.images_encoded - before
        return PrefillResult(pre.n_prompt, pre.n_evaluated, encoded, (time.perf_counter() - t0) * 1e3,
                             pre.image_encode_ms)

    def image_cost(self, image, *, max_slice_nums: int | None = None, max_pixels: int | None = None,
                   index: int = 0) -> ImageCost:
        """What `image` (a path, bytes, PIL image, HxWx3 array, or just its (width, height)) costs under
        a budget: the size the slicer gets, encoder runs, slice grid, context tokens. Nothing is encoded.
        The tokens include the `<image_id>N</image_id>` the families write before an image, N = `index`
        (its number among the conversation's images), as the C ABI's mcv_session_image_cost counts them."""
        if self.vision is None:
            raise InputError("this model was loaded without an mmproj; images need one")
        budget = self._budget(max_slice_nums, max_pixels)
        if isinstance(image, tuple) and len(image) == 2 and all(isinstance(x, int) and x > 0 for x in image):
            width, height = image
        else:
            width, height = load_image(image, self.limits).size
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InputError(f"index must be a non-negative integer, got {index!r}")
        w, h = self._fitted(width, height, budget)
        if self.exact_images:
            cost = self.session.planner.cost(w, h, budget.max_slice_nums)
        else:
            n_chunks, n_tokens, rows = self.vision.count_image(w, h)
            cost = ImageCost(w, h, n_chunks, slice_plan(w, h, *self._slice_geometry).grid, n_tokens, rows)
        if self.format.use_image_id:
            cost = replace(cost, n_tokens=cost.n_tokens + len(self.model.tokenize(self.format.facts.image_id(index))))
        return cost

    def token_biases(self, bias) -> tuple[tuple[int, float], ...]:
        """{token id | text: bias} or [[token id | text, bias], ...] -> (token id, bias) pairs (chat_args.py)."""
        return chat_args.token_biases(self.model, bias)

    def check_template_kwargs(self, kwargs) -> dict:
        """chat_template_kwargs with every key a variable of the model's chat template (InputError otherwise)."""
        return chat_args.template_kwargs(self, kwargs)


def _arguments(values: dict) -> dict:
    """chat()'s keyword arguments from its locals() (or a signature binding)."""
    return {k: v for k, v in values.items() if k not in ("self", "messages", "stream")}


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

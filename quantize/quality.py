"""How much a quantized model differs from its reference.

Text: over a fixed corpus shipped with the project (data/corpus.txt: English,
Chinese, code, chat), evaluated in independent chunks of `chunk` tokens with
logits at every position, the KL divergence KL(ref || candidate) of the
next-token distributions per token (mean and max) and the top-1 agreement.
The reference pass is spooled to a temporary file so only one model is loaded
at a time.

Vision: over a fixed, generated image set (gradients, noise, shapes, a
checkerboard; 224² to 896x448 so slicing is exercised), the cosine similarity
of every image embedding row from the reference and the candidate projector
(mean and min), both bound to the same text model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minicpmv_edge.errors import InputError, MismatchError

CORPUS = Path(__file__).with_name("data") / "corpus.txt"


def corpus_text() -> str:
    return CORPUS.read_text(encoding="utf-8")


def image_set(small: bool = False) -> list[tuple[str, np.ndarray]]:
    """Deterministic RGB images (HxWx3 uint8). `small` keeps three of them (tests)."""
    rng = np.random.default_rng(0)

    def grad(h, w):
        y, x = np.mgrid[0:h, 0:w]
        return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (h + w)], -1)

    def shapes(h, w):
        img = np.full((h, w, 3), 240, np.int64)
        y, x = np.mgrid[0:h, 0:w]
        img[(x - w // 3) ** 2 + (y - h // 2) ** 2 < (min(h, w) // 5) ** 2] = (200, 30, 30)
        img[(abs(x - 2 * w // 3) < w // 8) & (abs(y - h // 3) < h // 8)] = (30, 60, 200)
        img[(abs((x - w // 2) - (y - h // 2)) < 4)] = (20, 20, 20)
        return img

    def checker(h, w, k=16):
        y, x = np.mgrid[0:h, 0:w]
        return np.repeat((((x // k + y // k) % 2) * 255)[..., None], 3, -1)

    imgs = [("gradient-448", grad(448, 448)), ("noise-448", rng.integers(0, 256, (448, 448, 3))),
            ("shapes-640x480", shapes(480, 640))]
    if not small:
        imgs += [("checker-224", checker(224, 224)), ("gradient-896x448", grad(448, 896))]
    return [(n, np.ascontiguousarray(a, dtype=np.uint8)) for n, a in imgs]


@dataclass
class TextQuality:
    n_tokens: int
    n_chunks: int
    kl_mean: float
    kl_max: float
    kl_p99: float
    top1: float  # fraction of positions where both models agree on the most likely token


@dataclass
class VisionQuality:
    n_images: int
    n_embeddings: int
    cos_mean: float
    cos_min: float


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _chunks(tokens: list[int], chunk: int) -> list[list[int]]:
    return [tokens[i:i + chunk] for i in range(0, len(tokens), chunk) if len(tokens[i:i + chunk]) >= 2]


def _logits_pass(path: str, chunks: list[list[int]], n_threads: int | None):
    from minicpmv_edge.edge_runtime.engine import Context, Model

    model = Model(path)
    size = max(len(c) for c in chunks)
    ctx = Context(model, n_ctx=max(size, 32), n_batch=size, n_threads=n_threads)
    try:
        for c in chunks:
            ctx.clear()
            yield model, ctx.decode_all_logits(c)
    finally:
        ctx.close()
        model.close()


def _pieces(model) -> list[bytes]:
    return [model.piece(t, special=True) for t in range(model.n_vocab)]


def text_quality(ref: str | os.PathLike[str], cand: str | os.PathLike[str], chunk: int = 128,
                 text: str | None = None, n_threads: int | None = None) -> TextQuality:
    from minicpmv_edge.edge_runtime.engine import Model

    ref, cand = str(ref), str(cand)
    vocab_ref = Model(ref, vocab_only=True)
    tokens = vocab_ref.tokenize(text if text is not None else corpus_text(), add_special=False)
    n_vocab = vocab_ref.n_vocab
    pieces = _pieces(vocab_ref)
    vocab_ref.close()
    vocab_cand = Model(cand, vocab_only=True)
    try:
        if vocab_cand.n_vocab != n_vocab:
            raise MismatchError(f"vocabularies differ ({n_vocab} vs {vocab_cand.n_vocab} tokens); "
                                "compare a model with its own quantization", cand)
        # same size is not the same vocabulary (a 4.0 model is not a quantized 4.5): every token must match
        other = _pieces(vocab_cand)
        diff = next((i for i, (a, b) in enumerate(zip(pieces, other)) if a != b), None)
        if diff is not None:
            raise MismatchError(f"vocabularies differ (token {diff} is {pieces[diff][:20]!r} in the reference, "
                                f"{other[diff][:20]!r} here); compare a model with its own quantization", cand)
    finally:
        vocab_cand.close()
    chunks = _chunks(tokens, chunk)
    if not chunks:
        raise InputError("the text has fewer than 2 tokens")
    n = sum(len(c) for c in chunks)
    with tempfile.TemporaryDirectory(prefix="minicpmv-quality-") as tmp:
        spool = np.lib.format.open_memmap(Path(tmp) / "ref.npy", mode="w+", dtype=np.float32, shape=(n, n_vocab))
        pos = 0
        for _, lg in _logits_pass(ref, chunks, n_threads):
            spool[pos:pos + len(lg)] = lg
            pos += len(lg)
        kls, agree, pos = [], 0, 0
        for _, lg in _logits_pass(cand, chunks, n_threads):
            lp = _log_softmax(np.asarray(spool[pos:pos + len(lg)]))
            lq = _log_softmax(lg)
            kls.append(np.maximum((np.exp(lp) * (lp - lq)).sum(-1), 0.0))
            agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())
            pos += len(lg)
        del spool
    kl = np.concatenate(kls)
    return TextQuality(n, len(chunks), float(kl.mean()), float(kl.max()), float(np.percentile(kl, 99)), agree / n)


def vision_quality(text_model: str | os.PathLike[str], mm_ref: str | os.PathLike[str],
                   mm_cand: str | os.PathLike[str], images: list[tuple[str, np.ndarray]] | None = None,
                   n_threads: int | None = None) -> VisionQuality:
    from minicpmv_edge.edge_runtime.engine import CHUNK_IMAGE, Bitmap, Model, Vision

    images = image_set() if images is None else images
    model = Model(str(text_model))
    va = Vision(str(mm_ref), model, n_threads=n_threads)
    vb = Vision(str(mm_cand), model, n_threads=n_threads)
    cos: list[np.ndarray] = []
    try:
        for _, rgb in images:
            ca = va.tokenize(va.marker, [Bitmap(rgb)])
            cb = vb.tokenize(vb.marker, [Bitmap(rgb)])
            try:
                if len(ca) != len(cb):
                    raise MismatchError("the two projectors split an image differently; they are not variants "
                                        "of one model", mm_cand)
                for i in range(len(ca)):
                    if ca.kind(i) != CHUNK_IMAGE:
                        continue
                    a, b = va.encode_chunk(ca[i]).astype(np.float64), vb.encode_chunk(cb[i]).astype(np.float64)
                    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
                    cos.append((a * b).sum(1) / np.maximum(den, 1e-30))
            finally:
                ca.close()
                cb.close()
    finally:
        va.close()
        vb.close()
        model.close()
    allc = np.concatenate(cos) if cos else np.zeros(0)
    return VisionQuality(len(images), int(allc.size), float(allc.mean()) if allc.size else float("nan"),
                         float(allc.min()) if allc.size else float("nan"))


def as_dict(obj) -> dict:
    return asdict(obj)

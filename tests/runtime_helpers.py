"""Shared helpers for runtime tests: synthetic images and videos, hand-driven llama.cpp."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np


def noise_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def make_video(path: Path, frames: int = 12, fps: int = 6, size=(160, 120), codec="mpeg4") -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            rgb = np.zeros((size[1], size[0], 3), np.uint8)
            rgb[..., 0] = (i * 20) % 256
            rgb[:, (i * 10) % size[0]:, 1] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def greedy_by_hand(text_path: str, mmproj_path: str, prompt: str, rgbs: list[np.ndarray], n: int,
                   n_ctx: int = 2048) -> list[int]:
    """The same prompt driven straight through llama.h / mtmd.h, greedy, no penalties."""
    import llama_cpp as L
    import llama_cpp.mtmd_cpp as M

    from minicpmv_edge.edge_runtime.engine import init_backend, repacking_ok

    init_backend()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = repacking_ok(text_path)
    model = L.llama_model_load_from_file(text_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = n_ctx, 512, 512, 2, 2
    ctx = L.llama_init_from_model(model, cp)
    vp = M.mtmd_context_params_default()
    vp.use_gpu, vp.n_threads, vp.warmup = False, 2, False
    mctx = M.mtmd_init_from_file(mmproj_path.encode(), model, vp)
    vocab = L.llama_model_get_vocab(model)
    bitmaps, keep = [], []
    for rgb in rgbs:
        buf = (ctypes.c_ubyte * rgb.nbytes).from_buffer_copy(np.ascontiguousarray(rgb).tobytes())
        keep.append(buf)
        bitmaps.append(M.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0], buf))
    chunks = M.mtmd_input_chunks_init()
    data = prompt.encode()
    inp = M.mtmd_input_text(data, len(data), False, True)
    arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
    assert M.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), arr, len(bitmaps)) == 0
    n_past = L.llama_pos(0)
    assert M.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
    out = []
    n_vocab = L.llama_vocab_n_tokens(vocab)
    pos = n_past.value
    batch = L.llama_batch_init(1, 0, 1)
    for _ in range(n):
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        tok = int(logits.argmax())
        if L.llama_vocab_is_eog(vocab, tok):
            break
        out.append(tok)
        # as llama-mtmd-cli does: explicit position n_past, one sequence, logits on
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = tok, pos, 1, 1
        batch.seq_id[0][0] = 0
        assert L.llama_decode(ctx, batch) == 0
        pos += 1
    L.llama_batch_free(batch)
    M.mtmd_input_chunks_free(chunks)
    for b in bitmaps:
        M.mtmd_bitmap_free(b)
    M.mtmd_free(mctx)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return out

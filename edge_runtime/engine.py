"""The only module that touches llama.cpp (libllama + libmtmd) through ctypes.

Small classes own one C handle each and free it exactly once (close() or GC).
Everything above this module deals in Python types: token lists, numpy arrays,
RGB bitmaps. Errors reported by llama.cpp become RuntimeFailure; anything we
can check before calling llama.cpp is checked by the callers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from minicpmv_edge.errors import Cancelled, ContextOverflowError, GGUFError, InputError, MediaError, RuntimeFailure
from minicpmv_edge.text_normalize import normalize, normalizer_from_metadata

log = logging.getLogger(__name__)

_lock = threading.Lock()
_backend_ready = False
_LOG_CB = None  # keep the ctypes callback alive
_ROPE_MROPE, _ROPE_IMROPE = 8, 40  # GGML_ROPE_TYPE_MROPE / _IMROPE (ggml.h)
# llama.cpp warnings that are expected and harmless here, logged at debug instead of printed:
# * canvas M-RoPE (4.7) gives a frame's rows one t, so every row after the first is
#   "non-consecutive" (llama-kv-cache.cpp find_slot);
# * "control-looking token": llama.cpp retypes a NORMAL token that looks like a control token at
#   every load (Qwen2's BPE piece '</s>', id 128247, in 2.6/4.5); llama.cpp's own converter writes
#   it NORMAL too, and nothing is degraded.
_EXPECTED_WARNINGS = (b"find_slot: non-consecutive token position", b"load: control-looking token")
# what llama.cpp says when a decode stops because we asked (cancel() sets the abort callback's flag):
# status 1 is GGML_STATUS_ABORTED, llama_decode's 2 is "aborted"; the lines that follow one of these
# (the batch's cells removed, mtmd's "failed to decode image") belong to the same abort. Expected, so
# logged at debug: a Ctrl-C or a client leaving is not an error.
_ABORT_LINES = (b"graph_compute: ggml_backend_sched_graph_compute_async failed with error 1",
                b"process_ubatch: failed to compute graph, compute status: 1",
                b"llama_decode: failed to decode, ret = 2")
_AFTER_ABORT = (b"decode: removing memory module entries", b"failed to decode", b"failed to eval chunk")
_ATTR_CONTROL, _ATTR_USER_DEFINED = 1 << 3, 1 << 4  # llama_token_attr (llama.h)


_MODULES: dict = {}  # imported once: these run per token (piece, is_eog), an import lookup each time costs


def _llama():
    mod = _MODULES.get("llama_cpp")
    if mod is None:
        from minicpmv_edge.extras import need

        mod = _MODULES["llama_cpp"] = need("llama_cpp", "runtime", "running a model")
    return mod


def _mtmd():
    mod = _MODULES.get("mtmd")
    if mod is None:
        from minicpmv_edge.extras import need

        mod = _MODULES["mtmd"] = need("llama_cpp.mtmd_cpp", "runtime", "running a model")
    return mod


def init_backend() -> None:
    """Initialise ggml once per process and route llama.cpp's logs into `logging`."""
    global _backend_ready, _LOG_CB
    with _lock:
        if _backend_ready:
            return
        L = _llama()
        L.llama_backend_init()
        # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line;
        # info (load/offload/buffer lines) shows with -v, as llama.cpp's own tools print it
        level_map = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
        last, aborting = [logging.DEBUG], [False]

        @L.llama_log_callback
        def _cb(level, text, _user):
            lvl = last[0] if int(level) == 5 else level_map.get(int(level), logging.DEBUG)
            if lvl == logging.WARNING and text.startswith(_EXPECTED_WARNINGS):
                lvl = logging.DEBUG
            if int(level) != 5:
                aborting[0] = text.startswith(_ABORT_LINES) or (aborting[0] and text.startswith(_AFTER_ABORT))
                if aborting[0]:
                    lvl = logging.DEBUG
            last[0] = lvl
            if log.isEnabledFor(lvl):
                msg = text.decode("utf-8", "replace").rstrip()
                if msg:
                    log.log(lvl, "%s", msg)

        _LOG_CB = _cb
        L.llama_log_set(_cb, ctypes.c_void_p(0))
        M = _mtmd()
        for setter in ("mtmd_log_set", "mtmd_helper_log_set"):
            if hasattr(M, setter):
                getattr(M, setter)(_cb, ctypes.c_void_p(0))
        _backend_ready = True


def set_fields(struct, **values) -> None:
    """Set fields of a llama.cpp params struct, refusing names it does not have: a ctypes Structure
    accepts any attribute, so a field that an upgrade renamed (use_mmap -> load_mode) would
    otherwise be set on the Python object and silently never reach llama.cpp."""
    known = {name for name, *_ in type(struct)._fields_}
    for name, value in values.items():
        if name not in known:
            raise AttributeError(f"{type(struct).__name__} has no field {name!r} in this llama.cpp")
        setattr(struct, name, value)


def physical_cores() -> int:
    """Default thread count: physical cores (hyper-threads slow llama.cpp's decode)."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return max(1, min(len(cores), os.cpu_count() or 1))
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // (2 if (os.cpu_count() or 1) > 4 else 1))


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_int8" in f.read()
    except OSError:
        return False


def repacking_ok(model_path) -> bool:
    """Whether llama.cpp's weight repacking (incl. its AMX path) may be on for this model here:
    everywhere except a CPU whose AMX path was seen to crash (cpu_features.py probes it once)."""
    from .cpu_features import repacking_safe

    return repacking_safe(model_path)


class Model:
    """A loaded text GGUF (llama_model*).

    `extra_buffers=None` keeps llama.cpp's weight-repacking buffer types on, except on a CPU whose AMX
    path crashes llama_decode (the Sapphire Rapids VM of our CI; cpu_features.py probes it once per
    machine): there they are off.
    """

    def __init__(self, path: str, n_gpu_layers: int = 0, use_mmap: bool = True, vocab_only: bool = False,
                 extra_buffers: bool | None = None):
        init_backend()
        L = _llama()
        params = L.llama_model_default_params()
        # llama.cpp 0c1e570 has no use_mmap field: load_mode says how weights are read (llama.h:206-213);
        # AUTO mmaps where the device allows it, NONE reads them into memory
        set_fields(params, n_gpu_layers=int(n_gpu_layers), vocab_only=bool(vocab_only),
                   load_mode=L.LLAMA_LOAD_MODE_AUTO if use_mmap else L.LLAMA_LOAD_MODE_NONE,
                   use_extra_bufts=repacking_ok(path) if extra_buffers is None else bool(extra_buffers))
        self.params = params  # what llama.cpp was given (tests and --verbose read it)
        self._L = L
        self.path = str(path)
        self.ptr = L.llama_model_load_from_file(self.path.encode(), params)
        if not self.ptr:
            raise GGUFError("llama.cpp could not load this model (see log with -v)", path)
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.n_embd = L.llama_model_n_embd(self.ptr)
        self.n_ctx_train = L.llama_model_n_ctx_train(self.ptr)
        # recurrent state (Qwen3.5's linear attention) cannot be cut back to a position
        self.can_truncate = not (L.llama_model_is_recurrent(self.ptr) or L.llama_model_is_hybrid(self.ptr))
        # M-RoPE text models take 4 position components per embedding (llama-batch.cpp: n_pos_per_embd)
        self.n_pos_per_embd = 4 if L.llama_model_rope_type(self.ptr) in (_ROPE_MROPE, _ROPE_IMROPE) else 1
        # the source tokenizer's Unicode normalization, which llama.cpp does not apply
        self.normalizer = normalizer_from_metadata(self.meta)

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        L = _llama()
        data = normalize(text, self.normalizer).encode("utf-8")
        n_max = len(data) + 16
        buf = (L.llama_token * n_max)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            buf = (L.llama_token * -n)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = True) -> bytes:
        L = _llama()
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def special_tokens(self) -> dict[str, str]:
        """bos/eos/unk/pad token texts, as transformers hands them to chat templates."""
        L = _llama()
        out = {}
        for name, fn in (("bos_token", L.llama_vocab_bos), ("eos_token", L.llama_vocab_eos),
                         ("pad_token", L.llama_vocab_pad)):
            tok = int(fn(self.vocab))
            if 0 <= tok < self.n_vocab:
                out[name] = self.piece(tok).decode("utf-8", "replace")
        return out

    def is_eog(self, token: int) -> bool:
        return bool(_llama().llama_vocab_is_eog(self.vocab, token))

    def is_special(self, token: int) -> bool:
        """A control or user-defined (added) token: the tokenizer never merges text across one."""
        return bool(_llama().llama_vocab_get_attr(self.vocab, token) & (_ATTR_CONTROL | _ATTR_USER_DEFINED))

    def meta(self, key: str) -> str | None:
        L = _llama()
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._L.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


SNAPSHOT_SEQ = 1  # the spare sequence that holds a snapshot of sequence 0 (recurrent models only)


class Context:
    """A llama_context on sequence 0; tracks how many positions are filled.

    Models whose memory cannot be cut back to a position (4.6's Qwen3.5: recurrent linear-attention
    layers beside the KV cache) get a second sequence that holds one snapshot of sequence 0
    (`snapshot`/`restore`). llama.cpp copies nothing to take it: `llama_memory_seq_cp` tags the
    shared KV cells with both sequences (kv_unified: one stream, so no buffer copy) and lets both
    point at the same recurrent cell, which is copied once, inside the next decode graph, when
    sequence 0 moves on (llama-memory-recurrent.cpp find_slot). A full `llama_state_seq_get_data`
    serialises the whole KV cache instead (21 MB and ~1 s per turn at 4.6's real size)."""

    def __init__(self, model: Model, n_ctx: int = 4096, n_batch: int = 512, n_threads: int | None = None):
        L = _llama()
        self._L = L
        self.model = model
        params = L.llama_context_default_params()
        threads = n_threads or physical_cores()
        set_fields(params, n_ctx=int(n_ctx), n_batch=int(n_batch), n_ubatch=int(n_batch), n_threads=threads,
                   n_threads_batch=threads, no_perf=False)
        self.can_snapshot = not model.can_truncate
        if self.can_snapshot:
            # kv_unified: both sequences in one KV stream, so a snapshot shares cells instead of
            # copying them, and n_ctx is not split between the sequences
            set_fields(params, n_seq_max=2, kv_unified=True)
        self._snapshot_n_past: int | None = None
        self.n_snapshots = 0  # snapshot() calls (cheap sequence copies)
        self.n_restores = 0  # restore() calls
        self.n_state_saves = 0  # full state serialisations (save_state); the session takes none
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeFailure("llama.cpp could not create a context (out of memory?)", model.path)
        self.n_ctx = L.llama_n_ctx(self.ptr)
        self.n_batch = int(n_batch)
        self.n_threads = threads
        self.n_past = 0
        # the llama.cpp sequence this object drives, and the spare one its snapshot lives in (a
        # parallel pool's slots share one llama_context, each on its own pair: edge_runtime/slots.py)
        self.seq = 0
        self.snap_seq = SNAPSHOT_SEQ
        self._abort = threading.Event()
        self._abort_cb = L.ggml_abort_callback(lambda _u: bool(self._abort.is_set()))
        L.llama_set_abort_callback(self.ptr, self._abort_cb, ctypes.c_void_p(0))

    def clear(self) -> None:
        L = _llama()
        L.llama_memory_clear(L.llama_get_memory(self.ptr), True)
        self.n_past = 0
        self._snapshot_n_past = None

    def snapshot(self) -> None:
        """Keep sequence 0 as it is now in the spare sequence (replacing an older snapshot)."""
        if not self.can_snapshot:
            raise RuntimeFailure("this context has no spare sequence for snapshots")
        L = self._L
        mem = L.llama_get_memory(self.ptr)
        L.llama_memory_seq_rm(mem, self.snap_seq, -1, -1)
        L.llama_memory_seq_cp(mem, self.seq, self.snap_seq, -1, -1)
        self._snapshot_n_past = self.n_past
        self.n_snapshots += 1

    @property
    def snapshot_n_past(self) -> int | None:
        return self._snapshot_n_past

    def restore(self) -> bool:
        """Make sequence 0 what it was at the last snapshot (which stays for later restores).
        False when there is none."""
        if self._snapshot_n_past is None:
            return False
        L = self._L
        mem = L.llama_get_memory(self.ptr)
        L.llama_memory_seq_rm(mem, self.seq, -1, -1)
        L.llama_memory_seq_cp(mem, self.snap_seq, self.seq, -1, -1)
        self.n_past = self._snapshot_n_past
        self.n_restores += 1
        return True

    def save_state(self) -> bytes:
        """Full serialisation of sequence 0 (KV and recurrent state) at the current position:
        for persisting a conversation; within a process `snapshot` costs nothing."""
        L = self._L
        self.n_state_saves += 1
        size = L.llama_state_seq_get_size(self.ptr, self.seq)
        buf = (ctypes.c_uint8 * size)()
        n = L.llama_state_seq_get_data(self.ptr, buf, size, self.seq)
        return bytes(buf[:n])

    def load_state(self, data: bytes, n_past: int) -> None:
        L = self._L
        self.clear()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if L.llama_state_seq_set_data(self.ptr, buf, len(data), self.seq) != len(data):
            self.clear()
            raise RuntimeFailure("could not restore a saved sequence state")
        self.n_past = n_past

    def pos_max(self) -> int:
        """The last position llama.cpp's memory holds for sequence 0 (-1: empty): the truth the
        session's record is checked against."""
        L = self._L
        return int(L.llama_memory_seq_pos_max(L.llama_get_memory(self.ptr), self.seq))

    def cut(self, pos: int) -> bool:
        """Remove positions >= pos; False when the memory cannot (recurrent state), nothing changed then."""
        L = self._L
        if not L.llama_memory_seq_rm(L.llama_get_memory(self.ptr), self.seq, int(pos), -1):
            return False
        self.n_past = int(pos)
        return True

    def _check_rc(self, rc: int, what: str) -> None:
        # llama_decode: 2 = aborted by the abort callback (llama-context.cpp:1917); the failed
        # ubatch's positions are gone again, earlier ubatches of the call stay (the session resyncs)
        if rc == 2 or (rc != 0 and self._abort.is_set()):
            raise Cancelled(f"{what} was cancelled")
        if rc != 0:
            raise RuntimeFailure(f"{what} failed with code {rc}")

    def truncate(self, n_keep: int) -> None:
        """Drop positions >= n_keep (keeps the shared prefix for multi-turn reuse)."""
        L = _llama()
        if n_keep < self.n_past:
            ok = L.llama_memory_seq_rm(L.llama_get_memory(self.ptr), self.seq, n_keep, -1)
            if not ok:  # recurrent memory (qwen35) cannot cut in the middle
                self.clear()
                return
            self.n_past = n_keep

    def decode(self, tokens: list[int], logits_last: bool = True) -> None:
        """Evaluate `tokens` after the current position, in n_batch pieces."""
        self._check_room(len(tokens))
        for i in range(0, len(tokens), self.n_batch):
            part = tokens[i:i + self.n_batch]
            last = logits_last and i + len(part) == len(tokens)
            self._decode_batch(part, lambda j: last and j == len(part) - 1)

    def decode_all_logits(self, tokens: list[int]) -> np.ndarray:
        """Evaluate `tokens` (at most n_batch) after the current position with logits for every
        position; returns float32 [len(tokens), n_vocab] (quality reports compare whole distributions)."""
        if len(tokens) > self.n_batch:
            raise ContextOverflowError(f"{len(tokens)} tokens exceed the batch size {self.n_batch}")
        self._check_room(len(tokens))
        self._decode_batch(tokens, lambda j: True)
        ptr = self._L.llama_get_logits(self.ptr)
        return np.ctypeslib.as_array(ptr, shape=(len(tokens) * self.model.n_vocab,)).reshape(len(tokens), -1).copy()

    def _check_room(self, n: int) -> None:
        if self.n_past + n > self.n_ctx:
            raise ContextOverflowError(f"prompt needs {self.n_past + n} tokens but the context holds {self.n_ctx}")

    def _decode_batch(self, tokens: list[int], want_logits) -> None:
        """One llama_decode of `tokens` at positions n_past.. on this object's sequence."""
        L = self._L
        batch = L.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for j, t in enumerate(tokens):
                batch.token[j] = t
                batch.pos[j] = self.n_past + j
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = self.seq
                batch.logits[j] = 1 if want_logits(j) else 0
            rc = L.llama_decode(self.ptr, batch)
        finally:
            L.llama_batch_free(batch)
        self._check_rc(rc, "llama_decode")
        self.n_past += len(tokens)

    def decode_embeddings(self, embd: np.ndarray, pos: np.ndarray, index_causal: bool = False,
                          logits_last: bool = False) -> None:
        """Evaluate embedding rows [n, n_embd] at explicit positions [3, n] (t, h, w).

        `index_causal`: every row sees exactly the rows before it. llama.cpp's M-RoPE mask orders
        cells that share t by (h, w) instead (llama-kv-cache.cpp, is_2d_gt), which is not what
        a canvas frame needs (one t, overlapping crops); so each row goes alone with the causal
        mask off: it then sees every cell already in the cache plus itself."""
        L = self._L
        n = int(embd.shape[0])
        if pos.shape != (3, n):
            raise ValueError(f"positions must be [3, {n}], got {list(pos.shape)}")
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        step = 1 if index_causal else self.n_batch
        for a in range(0, n, step):
            b = min(n, a + step)
            p = np.zeros((self.model.n_pos_per_embd, b - a), np.int32)
            k = min(3, len(p))
            p[:k] = pos[:k, a:b]  # the 4th component stays 0, as mtmd writes it
            self._decode_rows(np.ascontiguousarray(embd[a:b]), p, index_causal, logits_last and b == n)
        self.n_past = max(self.n_past, int(pos.max()) + 1)

    def _decode_rows(self, rows: np.ndarray, p: np.ndarray, index_causal: bool, want_logits: bool) -> None:
        """One llama_decode of embedding rows at positions `p` [n_pos_per_embd, m] on this sequence."""
        L = self._L
        m = int(rows.shape[0])
        seq = (ctypes.c_int32 * 1)(self.seq)
        n_seq = np.ones(m, np.int32)
        seq_ids = (ctypes.POINTER(ctypes.c_int32) * (m + 1))(*([ctypes.cast(seq, ctypes.POINTER(ctypes.c_int32))] * m))
        out = np.zeros(m, np.int8)
        out[-1] = 1 if want_logits else 0
        batch = L.llama_batch()
        batch.n_tokens = m
        batch.token = None
        batch.embd = rows.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        batch.pos = p.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.n_seq_id = n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = seq_ids
        batch.logits = out.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        if index_causal:
            L.llama_set_causal_attn(self.ptr, False)
        try:
            rc = L.llama_decode(self.ptr, batch)
        finally:
            if index_causal:
                L.llama_set_causal_attn(self.ptr, True)
        self._check_rc(rc, "llama_decode of image embeddings")

    def logits(self) -> np.ndarray:
        return self.logits_view().copy()

    # the sampler reads llama.cpp's own logits buffer (llama_sampler_sample) where it may; a pool slot
    # hands it a copy of its row instead (several slots sample from one batch: edge_runtime/slots.py)
    direct_sampling = True

    def logits_view(self) -> np.ndarray:
        """The last output's logits in llama.cpp's buffer (valid until the next decode)."""
        ptr = self._L.llama_get_logits_ith(self.ptr, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def request_abort(self) -> None:
        self._abort.set()

    def clear_abort(self) -> None:
        self._abort.clear()

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._L.llama_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


@dataclass
class Bitmap:
    """An RGB image as mtmd wants it (HxWx3 uint8)."""

    rgb: np.ndarray
    id: str | None = None  # content hash, lets mtmd/our cache recognise repeats
    # embeddings made elsewhere (4.5's packed video groups, video_packed.py): mtmd only lays out the
    # chunk of an unsliced image for this bitmap, and the session feeds these instead of encoding it
    embed: "Callable[[], np.ndarray] | None" = None
    max_slices: int | None = None  # this image's slice cap (processor-exact families); None: the model's


class Vision:
    """An mtmd context: the vision projector bound to a text model."""

    def __init__(self, mmproj_path: str, model: Model, n_threads: int | None = None, use_gpu: bool = False,
                 image_max_tokens: int = -1, warmup: bool = False, flash_attn: int = -1):
        """`flash_attn`: llama_flash_attn_type for the vision graph (-1 auto, 0 off, 1 on)."""
        init_backend()
        M = _mtmd()
        self._M = M
        params = M.mtmd_context_params_default()
        set_fields(params, use_gpu=bool(use_gpu), n_threads=int(n_threads or physical_cores()), print_timings=False,
                   warmup=bool(warmup), flash_attn_type=int(flash_attn))
        if image_max_tokens > 0:
            set_fields(params, image_max_tokens=int(image_max_tokens))
        self.params = params
        self.path = str(mmproj_path)
        self.marker = M.mtmd_default_marker().decode()
        self.model = model
        self.ptr = M.mtmd_init_from_file(str(mmproj_path).encode(), model.ptr, params)
        if not self.ptr:
            raise GGUFError("mtmd could not load this projector (see log with -v)", mmproj_path)
        self.use_mrope = bool(M.mtmd_decode_use_mrope(self.ptr))
        # one mtmd context: the pool's scheduler and a plain chat() may both use it (edge_runtime/slots.py)
        self._lock = threading.RLock()

    def tokenize(self, text: str, bitmaps: list[Bitmap], add_special: bool = False, placeholders: bool = False):
        """Split prompt text + images into chunks; returns an owning Chunks object.

        `placeholders`: pass each image's size only (mtmd.h: a bitmap without data counts tokens):
        the same chunks, ids and positions without mtmd's resizing and normalising (~0.1-0.2 s for a
        1344x1344 photo on 2 cores); such chunks can be decoded from embeddings but not encoded."""
        n_markers = text.count(self.marker)
        if n_markers != len(bitmaps):  # mtmd would throw and report "could not preprocess" (code 2)
            raise InputError(f"the text contains the media marker {self.marker} ({n_markers} markers for "
                             f"{len(bitmaps)} images); the marker is reserved for images")
        M = _mtmd()
        handles = []
        keep = []
        try:
            for bm in bitmaps:
                rgb = np.ascontiguousarray(bm.rgb, dtype=np.uint8)
                h, w = rgb.shape[:2]
                buf = None
                if not placeholders:
                    buf = (ctypes.c_ubyte * rgb.nbytes).from_buffer_copy(rgb.tobytes())
                    keep.append(buf)
                handle = M.mtmd_bitmap_init(w, h, buf)
                if not handle:
                    raise MediaError(f"mtmd could not take a {w}x{h} bitmap")
                if bm.id:
                    M.mtmd_bitmap_set_id(handle, bm.id.encode())
                handles.append(handle)
            chunks = Chunks(M.mtmd_input_chunks_init())
            data = normalize(text, self.model.normalizer).encode("utf-8")
            inp = M.mtmd_input_text(data, len(data), add_special, True)
            arr = (M.mtmd_bitmap_p_ctypes * max(1, len(handles)))(*handles)
            with self._lock:
                rc = M.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), arr, len(handles))
            if rc != 0:
                chunks.close()
                raise MediaError(f"mtmd_tokenize failed (code {rc}): markers and images disagree"
                                 if rc == 1 else f"mtmd could not preprocess an image (code {rc})")
            return chunks
        finally:
            for h in handles:
                M.mtmd_bitmap_free(h)

    def count_image(self, width: int, height: int) -> tuple[int, int, int]:
        """(image chunks, context tokens with the <image>/<slice> markers, embedding rows) that mtmd makes
        of a width x height image; tokenized on a placeholder bitmap (mtmd.h: data == NULL), nothing is
        decoded or encoded."""
        M = _mtmd()
        handle = M.mtmd_bitmap_init(int(width), int(height), None)
        if not handle:
            raise MediaError(f"mtmd could not take a {width}x{height} placeholder bitmap")
        chunks = Chunks(M.mtmd_input_chunks_init())
        try:
            data = self.marker.encode()
            inp = M.mtmd_input_text(data, len(data), False, True)
            arr = (M.mtmd_bitmap_p_ctypes * 1)(handle)
            rc = M.mtmd_tokenize(self.ptr, chunks.ptr, ctypes.byref(inp), arr, 1)
            if rc != 0:
                raise MediaError(f"mtmd could not plan a {width}x{height} image (code {rc})")
            n_img = tokens = rows = 0
            for i in range(len(chunks)):
                n = chunks.n_tokens(i)
                tokens += n
                if chunks.kind(i) == CHUNK_IMAGE:
                    n_img += 1
                    rows += n
            return n_img, tokens, rows
        finally:
            chunks.close()
            M.mtmd_bitmap_free(handle)

    def encode_chunk(self, chunk) -> np.ndarray:
        """Run the vision encoder on one image chunk; returns [n_tokens, n_embd] float32."""
        M = _mtmd()
        with self._lock:  # the output buffer is the context's: read it before another encode
            rc = M.mtmd_encode_chunk(self.ptr, chunk)
            if rc != 0:
                raise RuntimeFailure(f"mtmd_encode_chunk failed with code {rc}")
            n_tok = M.mtmd_input_chunk_get_n_tokens(chunk)
            ptr = M.mtmd_get_output_embd(self.ptr)
            return np.ctypeslib.as_array(ptr, shape=(n_tok * self.model.n_embd,)).reshape(n_tok, -1).copy()

    def n_pos(self, chunk) -> int:
        return int(_mtmd().mtmd_input_chunk_get_n_pos(chunk))

    def decode_image_chunk(self, ctx: Context, chunk, embd: np.ndarray) -> None:
        """Feed precomputed embeddings of one image chunk into the context."""
        M = _mtmd()
        L = _llama()
        embd = np.ascontiguousarray(embd, dtype=np.float32)
        n_pos = M.mtmd_input_chunk_get_n_pos(chunk)
        if ctx.n_past + n_pos > ctx.n_ctx:
            raise ContextOverflowError(f"image needs {n_pos} positions; context is full at {ctx.n_past}/{ctx.n_ctx}")
        new_n_past = L.llama_pos(0)
        rc = M.mtmd_helper_decode_image_chunk(
            self.ptr, ctx.ptr, chunk, embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            ctx.n_past, ctx.seq, ctx.n_batch, ctypes.byref(new_n_past),
            ctypes.cast(None, M.mtmd_helper_post_decode_callback), ctypes.c_void_p(0))
        ctx._check_rc(rc, "decoding image embeddings")
        ctx.n_past = int(new_n_past.value)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._M.mtmd_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()


CHUNK_TEXT, CHUNK_IMAGE = 0, 1


class Chunks:
    """Owning wrapper over mtmd_input_chunks*."""

    def __init__(self, ptr):
        self._M = _mtmd()
        self.ptr = ptr

    def __len__(self) -> int:
        return _mtmd().mtmd_input_chunks_size(self.ptr)

    def __getitem__(self, i: int):
        return _mtmd().mtmd_input_chunks_get(self.ptr, i)

    def kind(self, i: int) -> int:
        return _mtmd().mtmd_input_chunk_get_type(self[i])

    def text_tokens(self, i: int) -> list[int]:
        M = _mtmd()
        n = ctypes.c_size_t(0)
        ptr = M.mtmd_input_chunk_get_tokens_text(self[i], ctypes.byref(n))
        return [ptr[k] for k in range(n.value)]

    def n_tokens(self, i: int) -> int:
        return _mtmd().mtmd_input_chunk_get_n_tokens(self[i])

    def image_id(self, i: int) -> str | None:
        v = _mtmd().mtmd_input_chunk_get_id(self[i])
        return v.decode() if v else None

    def close(self) -> None:
        if getattr(self, "ptr", None):
            self._M.mtmd_input_chunks_free(self.ptr)
            self.ptr = None

    def __del__(self):
        self.close()

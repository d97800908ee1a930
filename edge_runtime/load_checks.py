"""LoadOptions checked against the model and the machine before llama.cpp allocates anything.

llama.cpp takes `n_ctx = 1e9` and spends tens of seconds allocating ~20 GB of KV cache
before failing, segfaults on absurd thread counts, and silently ignores `n_gpu_layers`
on a build without a GPU backend. Each of these is refused here with one line naming the
option (`-c` / `n_ctx`, ...), and `n_ctx = 0` means the model's training context, as in
llama.cpp.
"""

from __future__ import annotations

import logging
import os

from minicpmv_edge.errors import InputError

log = logging.getLogger(__name__)

MAX_THREADS = 512  # GGML_MAX_N_THREADS (ggml.h:225)
MIN_CTX = 64
KV_BYTES_PER_VALUE = 2  # llama.cpp's default cache type is F16 (type_k / type_v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def resolve_n_ctx(opts, info) -> int:
    """Validate `opts` (LoadOptions) for the text model `info` (GGUFInfo); returns the context size to use."""
    if not _int(opts.n_ctx) or opts.n_ctx < 0:
        raise InputError(f"n_ctx (-c) must be 0 (the model's training context) or a token count, got {opts.n_ctx!r}")
    if opts.n_threads is not None and (not _int(opts.n_threads) or not 1 <= opts.n_threads <= MAX_THREADS):
        raise InputError(f"n_threads (-t) must be between 1 and {MAX_THREADS}, got {opts.n_threads!r}")
    if not _int(opts.n_batch) or not 1 <= opts.n_batch <= 1 << 16:
        raise InputError(f"n_batch must be between 1 and 65536, got {opts.n_batch!r}")
    if not _int(opts.n_gpu_layers) or opts.n_gpu_layers < -1:
        raise InputError(f"n_gpu_layers (-ngl) must be -1 (all) or a layer count, got {opts.n_gpu_layers!r}")
    if opts.max_slices is not None and (not _int(opts.max_slices) or not 1 <= opts.max_slices <= 9):
        raise InputError(f"max_slices must be between 1 and 9, got {opts.max_slices!r}")
    if not _int(opts.image_max_pixels) or opts.image_max_pixels < 1:
        raise InputError(f"image_max_pixels must be a positive pixel count, got {opts.image_max_pixels!r}")
    for name in ("mmproj_gpu", "use_mmap"):
        if not isinstance(getattr(opts, name), bool):
            raise InputError(f"{name} must be True or False, got {getattr(opts, name)!r}")
    _check_gpu(opts)
    train = int(info.get(f"{info.arch}.context_length") or 0)
    n_ctx = opts.n_ctx or train
    if n_ctx < MIN_CTX:
        raise InputError(f"n_ctx (-c) must be at least {MIN_CTX}, got {n_ctx}"
                         + (" (the model declares no training context)" if not opts.n_ctx else ""))
    if train and n_ctx > train:
        log.warning("n_ctx %d is larger than the model's training context %d; quality may drop past it", n_ctx, train)
    if opts.n_gpu_layers == 0:  # the cache lives in host memory: it must fit there
        need, have = kv_cache_bytes(info, n_ctx), available_memory()
        if need and have and need > have:
            raise InputError(f"n_ctx (-c) {n_ctx} needs about {need / 2**30:.1f} GiB of KV cache but this machine "
                             f"has {have / 2**30:.1f} GiB available; use a smaller -c")
    return n_ctx


def _check_gpu(opts) -> None:
    if opts.n_gpu_layers == 0 and not opts.mmproj_gpu:
        return
    from .engine import _llama, init_backend

    init_backend()
    if not _llama().llama_supports_gpu_offload():
        flag = "n_gpu_layers (-ngl)" if opts.n_gpu_layers else "mmproj_gpu (--mmproj-gpu)"
        raise InputError(f"{flag} needs llama.cpp built with a GPU backend (Metal, CUDA, Vulkan); this "
                         "llama-cpp-python is CPU-only, so nothing would be offloaded")


def kv_cache_bytes(info, n_ctx: int) -> int:
    """Bytes of F16 K and V for `n_ctx` positions over the layers that keep a KV cache (0 if unknown)."""
    arch, kv = info.arch, info.kv
    n_layer = kv.get(f"{arch}.block_count")
    n_embd = kv.get(f"{arch}.embedding_length")
    n_head = kv.get(f"{arch}.attention.head_count")
    if not all(_int(x) and x > 0 for x in (n_layer, n_embd)) or n_head is None:
        return 0
    heads = n_head if isinstance(n_head, list) else [n_head] * n_layer
    heads_kv = kv.get(f"{arch}.attention.head_count_kv", n_head)
    heads_kv = heads_kv if isinstance(heads_kv, list) else [heads_kv] * n_layer
    recurrent = kv.get(f"{arch}.attention.recurrent_layers")  # hybrid models: these layers have no KV
    interval = kv.get(f"{arch}.full_attention_interval")
    total = 0
    for i in range(n_layer):
        if isinstance(recurrent, list) and i < len(recurrent) and recurrent[i]:
            continue
        if recurrent is None and _int(interval) and interval > 1 and (i + 1) % interval:
            continue
        h, hkv = heads[i] if i < len(heads) else heads[-1], heads_kv[i] if i < len(heads_kv) else heads_kv[-1]
        if not h or not hkv:
            continue
        k_len = kv.get(f"{arch}.attention.key_length") or n_embd // h
        v_len = kv.get(f"{arch}.attention.value_length") or n_embd // h
        total += hkv * (k_len + v_len)
    return total * n_ctx * KV_BYTES_PER_VALUE


def available_memory() -> int:
    """Bytes the OS could give us now: MemAvailable on Linux, physical memory elsewhere (0 if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0

"""Build the bridge on Linux and drive it through ctypes (tests, bench, scripting).

build(variant) configures mobile_bridge/CMakeLists.txt against llama-cpp-python's
installed libs (mode a) into a cache folder and returns the build folder; cmake's
incremental build makes repeated calls cheap. Headers come from the llama-cpp-python
sdist of the installed version: $MCV_SDIST_DIR, the cache, or `pip download` into the cache.
`python mcv_bridge.py sdist` prints that folder (CMakeLists.txt asks it when MCV_SDIST_DIR is unset).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BRIDGE_DIR = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MINICPMV_EDGE_CACHE") or os.environ.get("MCV_CACHE_DIR")
             or Path.home() / ".cache" / "minicpmv-edge")


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def llama_lib_dir() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def sdist_dir() -> Path:
    """The llama-cpp-python sdist of the installed version (its vendor/llama.cpp has the headers)."""
    ver = llama_cpp_version()
    for cand in (os.environ.get("MCV_SDIST_DIR"), str(CACHE / f"llama_cpp_python-{ver}")):
        if cand and (Path(cand) / "vendor/llama.cpp/include/llama.h").exists():
            return Path(cand)
    CACHE.mkdir(parents=True, exist_ok=True)
    dl = CACHE / "sdist-download"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={ver}", "-d", str(dl)], capture_output=True, text=True)
    tgz = dl / f"llama_cpp_python-{ver}.tar.gz"
    if r.returncode != 0 or not tgz.exists():
        raise RuntimeError(f"could not download the llama-cpp-python {ver} sdist (set MCV_SDIST_DIR to an "
                           f"unpacked copy): {r.stderr.strip()[-500:]}")
    tmp = CACHE / f".sdist-{os.getpid()}"
    with tarfile.open(tgz) as tf:
        tf.extractall(tmp, filter="data")
    try:
        (tmp / f"llama_cpp_python-{ver}").rename(CACHE / f"llama_cpp_python-{ver}")  # atomic: no half trees
    except OSError:  # another process finished first
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return CACHE / f"llama_cpp_python-{ver}"


def napi_headers() -> Path:
    """Node-API headers from npm (node-api-headers), installed once into the cache."""
    d = CACHE / "napi"
    inc = d / "node_modules/node-api-headers/include"
    if not (inc / "node_api.h").exists():
        d.mkdir(parents=True, exist_ok=True)
        _run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(d), "node-api-headers@1"])
    return inc


OHOS_TYPESCRIPT = "ohos-typescript@4.9.5-r9"  # OpenHarmony's TypeScript fork (tsc + ArkTS linter)


def ohos_typescript() -> Path:
    """The ohos-typescript package from npm, installed once into the cache; returns its folder."""
    d = CACHE / "ohos-typescript"
    pkg = d / "node_modules" / "ohos-typescript"
    if not (pkg / "lib" / "typescript.js").exists():
        d.mkdir(parents=True, exist_ok=True)
        _run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(d), OHOS_TYPESCRIPT])
    return pkg


def build(variant: str = "plain", jni: bool = False, napi: bool = False) -> Path:
    """variant: 'plain' (RelWithDebInfo) or 'asan' (-fsanitize=address,undefined)."""
    # one build dir per checkout and interpreter: CMake refuses a cache made from another source path
    key = hashlib.sha256(f"{BRIDGE_DIR.resolve()}|{sys.executable}".encode()).hexdigest()[:10]
    out = CACHE / f"bridge-{variant}-{key}"
    sd = sdist_dir()
    args = ["cmake", "-S", str(BRIDGE_DIR), "-B", str(out), f"-DMCV_PYTHON={sys.executable}",
            f"-DMCV_SDIST_DIR={sd}", f"-DMCV_LLAMA_SRC_DIR={sd / 'vendor/llama.cpp'}",
            f"-DMCV_LLAMA_LIB_DIR={llama_lib_dir()}",
            "-DCMAKE_BUILD_TYPE=" + ("Debug" if variant == "asan" else "RelWithDebInfo"),
            "-DMCV_SANITIZE=" + ("ON" if variant == "asan" else "OFF"),
            "-DMCV_BUILD_JNI=" + ("ON" if jni else "OFF"), "-DMCV_BUILD_NAPI=" + ("ON" if napi else "OFF")]
    if napi:
        args.append(f"-DMCV_NAPI_INCLUDE={napi_headers()}")
    _run(args)  # re-configuring is cheap and picks up changed options
    _run(["cmake", "--build", str(out), "-j", str(os.cpu_count() or 2)])
    return out


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


# --- ctypes binding ---------------------------------------------------------------

OK, DONE = 0, 1
ROLE = {"system": 0, "user": 1, "assistant": 2}
TOKEN_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


class ModelParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("n_ctx", ctypes.c_int32), ("n_batch", ctypes.c_int32),
                ("n_threads", ctypes.c_int32), ("n_gpu_layers", ctypes.c_int32), ("mmproj_use_gpu", ctypes.c_int32),
                ("max_slices", ctypes.c_int32), ("image_max_pixels", ctypes.c_int64)]


class GenParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_tokens", ctypes.c_int32), ("temperature", ctypes.c_float),
                ("top_k", ctypes.c_int32), ("top_p", ctypes.c_float), ("seed", ctypes.c_uint32)]


class Stats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("image_encode_ms", ctypes.c_double),
                ("prefill_ms", ctypes.c_double), ("prefill_tok_per_s", ctypes.c_double),
                ("decode_tok_per_s", ctypes.c_double), ("ttft_ms", ctypes.c_double),
                ("n_prefill_tokens", ctypes.c_int32), ("n_decode_tokens", ctypes.c_int32),
                ("n_ctx_used", ctypes.c_int32), ("n_ctx", ctypes.c_int32), ("n_images", ctypes.c_int32),
                ("finish_reason", ctypes.c_int32),
                # since 0.3
                ("decode_ms", ctypes.c_double), ("last_image_encode_ms", ctypes.c_double),
                ("last_image_ms", ctypes.c_double), ("last_image_n_tokens", ctypes.c_int32),
                ("last_image_n_chunks", ctypes.c_int32), ("n_encoded_chunks", ctypes.c_int32),
                ("n_video_frames", ctypes.c_int32)]


class ImageParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("max_slices", ctypes.c_int32), ("max_pixels", ctypes.c_int64),
                ("video_frame", ctypes.c_int32)]


class ImageCost(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [(n, ctypes.c_int32) for n in (
        "width", "height", "n_chunks", "grid_cols", "grid_rows", "n_tokens", "n_embd_rows")]


class SliceInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t)] + [(n, ctypes.c_int32) for n in (
        "image_index", "chunk_index", "n_chunks", "width", "height", "patch_size", "n_tokens", "n_embd",
        "grid_cols", "grid_rows", "slice_x", "slice_y", "refined_width", "refined_height", "image_width",
        "image_height")] + [("image_rgb", ctypes.POINTER(ctypes.c_uint8))]


ENCODE_USE_DEFAULT = 1
ENCODE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(SliceInfo),
                             ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float), ctypes.c_size_t)


class BridgeError(RuntimeError):
    def __init__(self, code: int, msg: str):
        super().__init__(f"{code}: {msg}")
        self.code = code


def load_library(path: str | os.PathLike) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    P, I, S = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    sigs = {
        "mcv_version": (S, []), "mcv_abi_version": (ctypes.c_int32, []), "mcv_last_error": (S, []),
        "mcv_status_string": (S, [I]),
        "mcv_model_params_init": (None, [ctypes.POINTER(ModelParams)]),
        "mcv_gen_params_init": (None, [ctypes.POINTER(GenParams)]),
        "mcv_model_load": (I, [S, S, ctypes.POINTER(ModelParams), ctypes.POINTER(P)]),
        "mcv_model_free": (I, [P]), "mcv_model_errmsg": (S, [P]),
        "mcv_model_meta": (ctypes.c_int32, [P, S, ctypes.c_char_p, ctypes.c_size_t]),
        "mcv_session_create": (I, [P, ctypes.POINTER(P)]), "mcv_session_free": (I, [P]),
        "mcv_session_reset": (I, [P]), "mcv_session_errmsg": (S, [P]),
        "mcv_session_add_text": (I, [P, I, S]), "mcv_session_end_turn": (I, [P]),
        "mcv_session_add_image_file": (I, [P, S]),
        "mcv_session_add_image_bytes": (I, [P, ctypes.c_char_p, ctypes.c_size_t]),
        "mcv_session_add_image_rgb": (I, [P, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32]),
        "mcv_session_set_thinking": (I, [P, ctypes.c_int32]),
        "mcv_session_generate": (I, [P, ctypes.POINTER(GenParams), TOKEN_CB, P]),
        "mcv_session_begin": (I, [P, ctypes.POINTER(GenParams)]),
        "mcv_session_next": (I, [P, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
        "mcv_session_next_alloc": (I, [P, ctypes.POINTER(P)]),
        "mcv_session_cancel": (None, [P]), "mcv_string_free": (None, [P]),
        "mcv_session_stats": (I, [P, ctypes.POINTER(Stats)]),
        "mcv_session_prompt_text": (I, [P, ctypes.c_int32, ctypes.POINTER(P)]),
        "mcv_set_log_callback": (None, [P, P]),
        "mcv_version_number": (ctypes.c_int32, []),
        "mcv_session_set_encoder": (I, [P, ENCODE_FN, P]),
        # since 0.3
        "mcv_image_params_init": (None, [ctypes.POINTER(ImageParams)]),
        "mcv_session_prefill_text": (I, [P, I, S]),
        "mcv_session_prefill_image": (I, [P, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ImageParams)]),
        "mcv_session_prefill_image_file": (I, [P, S, ctypes.POINTER(ImageParams)]),
        "mcv_session_prefill_image_rgb": (I, [P, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                              ctypes.POINTER(ImageParams)]),
        "mcv_session_prefill_video_frame": (I, [P, ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32]),
        "mcv_session_image_cost": (I, [P, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(ImageParams),
                                       ctypes.POINTER(ImageCost)]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class Bridge:
    """Thin object wrapper: raises BridgeError with the library's message on failure."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def check(self, rc: int, handle=None, session: bool = True) -> int:
        if rc < 0:
            msg = (self.lib.mcv_session_errmsg(handle) if session else self.lib.mcv_model_errmsg(handle)) \
                if handle else self.lib.mcv_last_error()
            raise BridgeError(rc, (msg or b"").decode())
        return rc

    def load(self, text: str, mmproj: str | None, **kw) -> ctypes.c_void_p:
        p = ModelParams()
        self.lib.mcv_model_params_init(ctypes.byref(p))
        for k, v in kw.items():
            setattr(p, k, v)
        m = ctypes.c_void_p()
        self.check(self.lib.mcv_model_load(text.encode(), mmproj.encode() if mmproj else None, ctypes.byref(p),
                                           ctypes.byref(m)))
        return m

    def session(self, model) -> ctypes.c_void_p:
        s = ctypes.c_void_p()
        self.check(self.lib.mcv_session_create(model, ctypes.byref(s)))
        return s

    def take_string(self, ptr: ctypes.c_void_p) -> str:
        try:
            return ctypes.string_at(ptr).decode("utf-8", "surrogateescape")
        finally:
            self.lib.mcv_string_free(ptr)

    def prompt_text(self, s, with_prefix: bool = True) -> str:
        out = ctypes.c_void_p()
        self.check(self.lib.mcv_session_prompt_text(s, int(with_prefix), ctypes.byref(out)), s)
        return self.take_string(out)

    def generate(self, s, max_tokens: int = 16, on_piece=None) -> tuple[int, str]:
        gp = GenParams()
        self.lib.mcv_gen_params_init(ctypes.byref(gp))
        gp.max_tokens = max_tokens
        pieces: list[bytes] = []

        def cb(ptr, n, _user):
            pieces.append(ctypes.string_at(ptr, n))
            return int(bool(on_piece and on_piece(pieces[-1])))

        c_cb = TOKEN_CB(cb)
        rc = self.lib.mcv_session_generate(s, ctypes.byref(gp), c_cb, None)
        return rc, b"".join(pieces).decode("utf-8", "surrogateescape")

    def image_params(self, max_slices: int = 0, max_pixels: int = 0, video_frame: int = 0) -> ImageParams:
        """video_frame: 0 image, 1 a frame (continues the video), 2 a frame that starts a new video."""
        p = ImageParams()
        self.lib.mcv_image_params_init(ctypes.byref(p))
        p.max_slices, p.max_pixels, p.video_frame = max_slices, max_pixels, int(video_frame)
        return p

    def image_cost(self, s, width: int, height: int, **params) -> ImageCost:
        c = ImageCost()
        c.struct_size = ctypes.sizeof(ImageCost)
        ip = self.image_params(**params)
        self.check(self.lib.mcv_session_image_cost(s, width, height, ctypes.byref(ip), ctypes.byref(c)), s)
        return c

    def stats(self, s) -> Stats:
        st = Stats()
        st.struct_size = ctypes.sizeof(Stats)
        self.check(self.lib.mcv_session_stats(s, ctypes.byref(st)), s)
        return st


if __name__ == "__main__":  # `python mcv_bridge.py sdist`: for CMakeLists.txt (MCV_SDIST_DIR unset)
    if sys.argv[1:] != ["sdist"]:
        sys.exit("usage: mcv_bridge.py sdist")
    try:
        print(sdist_dir())
    except Exception as e:  # one line for cmake's FATAL_ERROR
        sys.exit(f"mcv_bridge: {e}")

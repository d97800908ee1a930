"""Build llama.cpp's own CLI tools from the source of the installed llama-cpp-python.

The anchors of our benchmarks (llama-mtmd-cli, llama-bench, llama-quantize,
llama-server) must come from the very llama.cpp our runtime links, so the source
is the llama-cpp-python sdist of the installed version: an unpacked copy named by
MINICPMV_EDGE_LLAMA_SRC, or one downloaded with pip into the cache. Builds are
cached per version under ~/.cache/minicpmv-edge/; only the asked-for targets build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("MINICPMV_EDGE_CACHE", Path.home() / ".cache" / "minicpmv-edge"))


def installed_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def llama_source() -> Path:
    """The llama.cpp tree inside the llama-cpp-python sdist of the installed version."""
    env = os.environ.get("MINICPMV_EDGE_LLAMA_SRC")
    if env:
        return Path(env)
    ver = installed_version()
    for base in (Path("/work/sdist"), CACHE / "sdist"):
        cand = base / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
        if (cand / "CMakeLists.txt").exists():
            return cand
    dl = CACHE / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"llama-cpp-python=={ver}", "-d", str(dl)], check=True)
    with tarfile.open(next(dl.glob(f"llama_cpp_python-{ver}.tar.gz"))) as tf:
        tf.extractall(dl, filter="data")
    return dl / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"


def build(targets: list[str], jobs: int | None = None, log=print) -> dict[str, Path]:
    """cmake-configure once, build `targets`; returns {target: binary path}."""
    src = llama_source()
    build_dir = CACHE / f"llama-tools-{installed_version()}"
    jobs = jobs or os.cpu_count() or 2
    if not (build_dir / "CMakeCache.txt").exists():
        log(f"configuring llama.cpp tools in {build_dir}")
        subprocess.run(["cmake", "-S", str(src), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                        "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"],
                       check=True, stdout=subprocess.DEVNULL)
    out = {}
    for t in targets:
        binary = build_dir / "bin" / t
        if not binary.exists():
            log(f"building {t} (first time only; minutes on 2 cores)")
            subprocess.run(["cmake", "--build", str(build_dir), "--target", t, "-j", str(jobs)], check=True,
                           stdout=subprocess.DEVNULL)
        out[t] = binary
    return out

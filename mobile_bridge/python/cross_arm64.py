"""Cross-compile the bridge for 64-bit ARM Linux and run its C test under qemu-aarch64.

    python mobile_bridge/python/cross_arm64.py llama            # static llama.cpp + mtmd (cached by commit)
    python mobile_bridge/python/cross_arm64.py bridge           # + libminicpmv_edge_bridge.a, bridge_test
    python mobile_bridge/python/cross_arm64.py ctest FIXTURE_DIR  # ctest: bridge_test under qemu-aarch64

llama.cpp is the Python wheel's own source (vendor/llama.cpp of the llama-cpp-python sdist of the
installed version, mcv_bridge.sdist_dir), so the arm64 bridge runs the same commit as the x86-64
one. Only ggml, llama and mtmd are built (no tools, tests, common, curl or OpenSSL), with the
phone flags (PHONE_FLAGS: armv8.2-a + dotprod + fp16, no OpenMP, static), once per llama.cpp
commit and flag set under ~/.cache/minicpmv-edge/llama-aarch64-*; a fresh clone reuses it. The
bridge itself is rebuilt per checkout (cmake is incremental). Everything links statically, so
qemu-aarch64 needs no ARM sysroot at run time. ctest runs `bridge_test --quick` there (each image chunk
costs seconds under emulation): the checks and greedy replies that are compared with x86-64.

Needs Debian's gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu and qemu-user (scripts/_system_deps.sh).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mcv_bridge  # noqa: E402

TOOLCHAIN = mcv_bridge.BRIDGE_DIR / "cross" / "aarch64-linux-gnu.cmake"
ARM_ARCH = "armv8.2-a+dotprod+fp16"  # every arm64 phone since 2018 (Cortex-A55/A75 and newer)
# The flags the phone builds share (mobile_bridge/README.md lists the NDK equivalents).
PHONE_FLAGS = [
    "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={ARM_ARCH}", "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF",
]
# Library-only llama.cpp: what the bridge links and nothing else.
LLAMA_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_MTMD=ON", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DMTMD_VIDEO=OFF", "-DGGML_BACKEND_DL=OFF",
]
TOOLS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "qemu-aarch64")


class CrossError(RuntimeError):
    pass


def check_tools() -> None:
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        raise CrossError(f"missing {', '.join(missing)}: install Debian's gcc-aarch64-linux-gnu "
                         "g++-aarch64-linux-gnu qemu-user (scripts/_system_deps.sh does)")


def llama_commit(sdist: Path) -> str:
    """The llama.cpp commit of this llama-cpp-python release, from its CHANGELOG section."""
    ver = mcv_bridge.llama_cpp_version()
    text = (sdist / "CHANGELOG.md").read_text(encoding="utf-8")
    m = re.search(rf"^## \[{re.escape(ver)}\](.*?)(?=^## \[)", text, re.S | re.M)
    hit = re.search(r"llama\.cpp@([0-9a-f]{7,40})", m.group(1)) if m else None
    if not hit:
        raise CrossError(f"{sdist / 'CHANGELOG.md'}: no 'llama.cpp@<commit>' line for {ver}")
    return hit.group(1)[:9]


def _run(cmd: list, log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(map(str, cmd)) + "\n")
        f.flush()
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise CrossError(f"{cmd[0]} {cmd[1]} failed (log {log}):\n{tail}")


def _jobs() -> str:
    return str(os.cpu_count() or 2)


def llama_build() -> Path:
    """Static libllama/libmtmd/libggml* for aarch64; returns the folder holding the archives."""
    check_tools()
    sdist = mcv_bridge.sdist_dir()
    src = sdist / "vendor" / "llama.cpp"
    flags = PHONE_FLAGS + LLAMA_FLAGS
    key = hashlib.sha256("|".join([str(src.resolve()), TOOLCHAIN.read_text(), *flags]).encode()).hexdigest()[:10]
    out = mcv_bridge.CACHE / f"llama-aarch64-{llama_commit(sdist)}-{key}"
    lib, stamp = out / "lib", out / "lib" / "BUILT"
    if stamp.exists():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    log, build = out / "build.log", out / "build"
    t0 = time.time()
    _run(["cmake", "-S", src, "-B", build, "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
          f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}", *flags], log)
    _run(["nice", "-n", "10", "cmake", "--build", build, "--target", "mtmd", "llama", "ggml", "-j", _jobs()], log)
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir()
    for a in build.rglob("*.a"):  # mtmd's vendored helpers (stb, miniaudio, ...) are archives too
        shutil.copy2(a, lib / a.name)
    stamp.write_text(f"llama.cpp {llama_commit(sdist)} from {src}\nflags {' '.join(flags)}\n"
                     f"built in {time.time() - t0:.0f} s\n")
    return lib


def bridge_build(fixtures: Path | None = None) -> Path:
    """The bridge + bridge_test for aarch64 (static executables), one build folder per checkout."""
    lib = llama_build()
    sdist = mcv_bridge.sdist_dir()
    key = hashlib.sha256(f"{mcv_bridge.BRIDGE_DIR.resolve()}|{lib}".encode()).hexdigest()[:10]
    out = mcv_bridge.CACHE / f"bridge-aarch64-{key}"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text("")
    args = ["cmake", "-S", mcv_bridge.BRIDGE_DIR, "-B", out, f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAIN}",
            "-DCMAKE_BUILD_TYPE=Release", f"-DMCV_LLAMA_LIB_DIR={lib}",
            f"-DMCV_LLAMA_SRC_DIR={sdist / 'vendor' / 'llama.cpp'}", f"-DMCV_PYTHON={sys.executable}",
            "-DMCV_STATIC=ON", "-DMCV_STATIC_EXE=ON", "-DMCV_TEST_QUICK=ON", f"-DCMAKE_C_FLAGS=-march={ARM_ARCH}",
            f"-DCMAKE_CXX_FLAGS=-march={ARM_ARCH}"]
    if fixtures is not None:
        args.append(f"-DMCV_TEST_FIXTURES={fixtures}")
    _run(args, log)
    _run(["nice", "-n", "10", "cmake", "--build", out, "-j", _jobs()], log)
    return out


def ctest(build: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Runs the registered C test (bridge_test under qemu-aarch64, via CMAKE_CROSSCOMPILING_EMULATOR)."""
    return subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure", "-V", "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 60)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("llama", "bridge", "ctest"):
        print(__doc__.strip().splitlines()[2:5] and __doc__, file=sys.stderr)
        return 2
    try:
        t0 = time.time()
        if argv[0] == "llama":
            print(llama_build())
        elif argv[0] == "bridge":
            print(bridge_build())
        else:
            if len(argv) != 2:
                print("usage: cross_arm64.py ctest FIXTURE_DIR", file=sys.stderr)
                return 2
            r = ctest(bridge_build(Path(argv[1]).resolve()))
            print(r.stdout[-6000:], r.stderr[-2000:])
            return r.returncode
        print(f"{time.time() - t0:.0f} s", file=sys.stderr)
    except CrossError as e:
        print(f"cross_arm64: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

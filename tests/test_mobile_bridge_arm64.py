"""The bridge built for phones' CPU (aarch64, NEON + dotprod + fp16) and its C test run under qemu.

mobile_bridge/python/cross_arm64.py cross-compiles llama.cpp (the Python wheel's commit, cached
under ~/.cache/minicpmv-edge by commit) and the bridge with Debian's aarch64 gcc, statically; ctest
runs bridge_test through qemu-aarch64 (CMAKE_CROSSCOMPILING_EMULATOR) on the tiny 4.5 pair. The
greedy replies it prints must be byte-identical to the x86-64 build's on the same files.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import cross_arm64  # noqa: E402
import mcv_bridge  # noqa: E402

EM_AARCH64, PT_INTERP = 183, 3


def elf_machine_and_static(path: Path) -> tuple[int, bool]:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not a 64-bit ELF file"
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return machine, PT_INTERP not in types


def greedy_lines(out: str) -> list[str]:
    """The `greedy-<case> <hex>` lines bridge_test prints (ctest -V prefixes them with `N: `)."""
    return re.findall(r"^(?:\d+: )?(greedy-\S+ [0-9a-f]*)$", out, re.M)


@pytest.fixture(scope="module")
def fixtures(store, tmp_path_factory) -> Path:
    """The C test's inputs (CMakeLists.txt MCV_TEST_FIXTURES): the session's converted 4.5 pair."""
    d = tmp_path_factory.mktemp("arm64-fixtures")
    r45, r26 = store.converted("minicpmv-4.5"), store.converted("minicpmv-2.6")
    for name, src in (("text.gguf", r45.text_path), ("mmproj.gguf", r45.mmproj_path),
                      ("other-mmproj.gguf", r26.mmproj_path)):
        os.symlink(src, d / name)
    subprocess.run([sys.executable, str(ROOT / "mobile_bridge/python/make_test_fixtures.py"), str(d)], check=True,
                   capture_output=True)  # writes image.png only: the GGUFs are there
    return d


def test_llama_commit_is_the_wheels():
    sdist = mcv_bridge.sdist_dir()
    assert cross_arm64.llama_commit(sdist) == "0c1e57098"  # CHANGELOG of llama-cpp-python 0.3.36
    assert (sdist / "vendor/llama.cpp/tools/mtmd/mtmd.h").exists()


def test_arm64_c_test_under_qemu_matches_x86(fixtures):
    build = cross_arm64.bridge_build(fixtures)
    exe = build / "bridge_test"
    machine, static = elf_machine_and_static(exe)
    assert machine == EM_AARCH64 and static, (machine, static)
    assert "BUILT" in [p.name for p in cross_arm64.llama_build().iterdir()]
    r = cross_arm64.ctest(build)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    assert "100% tests passed, 0 tests failed out of 2" in r.stdout, log[-3000:]
    assert "minicpmv-4.5: 0 failure(s)" in r.stdout, log[-3000:]
    assert "qemu-aarch64" in r.stdout  # ctest ran it through the emulator
    arm = greedy_lines(r.stdout)

    x86_build = mcv_bridge.build("plain", jni=True, napi=True)
    x = subprocess.run([str(x86_build / "bridge_test"), *(str(fixtures / n) for n in (
        "text.gguf", "mmproj.gguf", "other-mmproj.gguf", "image.png"))], capture_output=True, text=True, timeout=900)
    assert x.returncode == 0, x.stdout + x.stderr[-3000:]
    x86 = greedy_lines(x.stdout)
    assert len(x86) >= 2 and all(len(line.split()[1]) > 0 for line in x86), x.stdout
    assert arm == x86, (arm, x86)

"""Unicode normalization before llama.cpp tokenizes: Python (minicpmv_edge.text_normalize,
called by edge_runtime/engine.py) and C (mobile_bridge/src/normalize.cpp, called by the
bridge's session.cpp), both equal to unicodedata.normalize, both wired where text is tokenized.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from minicpmv_edge import schema
from minicpmv_edge.text_normalize import normalize, normalizer_from_metadata

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "mobile_bridge"
S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7


def corpus(n_random: int = 4000, seed: int = 0) -> list[str]:
    """Strings that exercise every part of NFC/NFD, plus random mixtures."""
    rng = random.Random(seed)
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    decomposable = [cp for cp in cps if unicodedata.decomposition(chr(cp)) and
                    not unicodedata.decomposition(chr(cp)).startswith("<")]
    marks = [cp for cp in range(0x300, 0x20000) if unicodedata.combining(chr(cp))]
    out: list[str] = []
    # every character with a canonical decomposition, composed and decomposed
    out += [chr(cp) for cp in decomposable]
    out += [unicodedata.normalize("NFD", chr(cp)) for cp in decomposable]
    # singletons (Ohm, Angstrom, Kelvin), composition exclusions, non-starter decompositions
    out += ["\u2126", "\u212b", "\u212a", "\u0958\u0959", "\u0344", "\u0f73\u0f75\u0f81", "\u2adc", "\U0001d15e"]
    # Hangul: LV, LVT, LV + T, L + V + T, invalid jamo combinations, compatibility jamo
    for _ in range(300):
        s = rng.randrange(11172)
        syl = chr(S_BASE + s)
        out += [syl, unicodedata.normalize("NFD", syl), chr(S_BASE + s - s % 28) + chr(T_BASE + 1 + rng.randrange(27))]
    out += ["\u1100\u1161\u11a7", "\u1100\u11a8", "\u11a8\u1161", "\u3131\u314f", "\ud55c\uad6d\uc5b4 \u1112\u1161\u11ab"]
    # combining sequences in every order: blocking, reordering, several marks of one class
    bases = "aAeEoOuUiInNcCsSzZ\u03b1\u03c9\u0438\u05d0\u0627\u0915\u0e01\u1100\u3042"
    for _ in range(1500):
        seq = rng.choice(bases) + "".join(chr(rng.choice(marks)) for _ in range(rng.randint(1, 4)))
        out.append(seq)
    out += ["\u0301e", "e\u0301\u0301", "e\u0327\u0301", "e\u0301\u0327", "a\u0323\u0302", "a\u0302\u0323",
            "\u1e0b\u0323", "q\u0307\u0323", "\u00c5\u0301", "e\u0360\u0301"]
    # random text: ASCII, CJK, emoji, marks, decomposables, whitespace
    pools = [range(0x20, 0x7f), range(0x4e00, 0x4f00), range(0x1f600, 0x1f650), marks[:200], decomposable[:800],
             range(0x3040, 0x30ff), [0x0a, 0x09, 0x3000, 0x200d, 0xfe0f]]
    for _ in range(n_random):
        out.append("".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randint(1, 24))))
    return out


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    assert cxx, "a C++ compiler is needed to test mobile_bridge/src/normalize.cpp"
    exe = tmp_path_factory.mktemp("nfc") / "normalize_driver"
    subprocess.run([cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-o", str(exe), str(BRIDGE / "tests" / "normalize_driver.cpp"),
                    str(BRIDGE / "src" / "normalize.cpp")], check=True)
    return exe


def run_driver(exe: Path, lines: list[str]) -> list[str]:
    r = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split("\n")[:len(lines)]


def hexes(s: str) -> str:
    return " ".join(f"{ord(c):X}" for c in s)


def test_tables_are_current_and_match_this_python():
    header = (BRIDGE / "src" / "normalize_tables.h").read_text()
    version = re.search(r'kUnicodeVersion = "([^"]+)"', header).group(1)
    assert version == unicodedata.unidata_version, (
        f"normalize_tables.h is Unicode {version}, this Python {unicodedata.unidata_version}: "
        "rerun mobile_bridge/tools/gen_normalize_tables.py")
    r = subprocess.run([sys.executable, str(BRIDGE / "tools" / "gen_normalize_tables.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_c_normalization_equals_unicodedata(driver, form):
    strings = corpus()
    assert len(strings) >= 5000
    got = run_driver(driver, [f"{form[-1]} {hexes(s)}" for s in strings])
    bad = [(s, g) for s, g in zip(strings, got) if g != hexes(unicodedata.normalize(form, s))]
    assert not bad, f"{len(bad)} of {len(strings)} differ, e.g. {hexes(bad[0][0])!r} -> {bad[0][1]!r}"
    for s in strings[:2000]:  # Python's module too
        assert normalize(s, form) == unicodedata.normalize(form, s)


def test_c_passes_invalid_utf8_and_ascii_through(driver):
    cases = {"65 CC 81 FF": "65 CC 81 FF",  # invalid byte: unchanged
             "C3 A9": "C3 A9", "65 CC 81": "C3 A9",  # valid: composed
             "ED A0 80": "ED A0 80",  # an encoded surrogate is not UTF-8
             "C0 AF": "C0 AF",  # overlong
             "41 42 0A": "41 42 A"}
    got = run_driver(driver, [f"B {k}" for k in cases])
    assert got == list(cases.values())


def test_form_from_metadata():
    meta = {schema.EDGE_TOKENIZER_NORMALIZER: "NFC", "tokenizer.ggml.pre": "llama-bpe"}
    assert normalizer_from_metadata(meta.get) == "NFC"  # our key wins
    assert normalizer_from_metadata({schema.EDGE_TOKENIZER_NORMALIZER: ""}.get) == ""
    for pre, form in (("qwen2", "NFC"), ("qwen35", "NFC"), ("llama-bpe", ""), (None, "")):
        assert normalizer_from_metadata({"tokenizer.ggml.pre": pre}.get) == form, pre
    assert normalize("cafe\u0301", "NFC") == "caf\u00e9" and normalize("cafe\u0301", "") == "cafe\u0301"


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_runtime_and_bridge_tokenize_normalized_text(store, family):
    """The Python engine and the C bridge both tokenize decomposed text like the source
    tokenizer (NFC): same tokens as the composed text, unlike bare llama.cpp."""
    import llama_cpp as L

    from minicpmv_edge.edge_runtime.engine import Model

    res = store.converted(family)
    composed, decomposed = "caf\u00e9 na\u00efve \ud55c\uad6d", unicodedata.normalize("NFD", "caf\u00e9 na\u00efve \ud55c\uad6d")
    model = Model(str(res.text_path), vocab_only=True)
    assert model.normalizer == "NFC"
    want = model.tokenize(composed)
    assert model.tokenize(decomposed) == want
    raw = decomposed.encode()
    buf = (L.llama_token * 64)()
    n = L.llama_tokenize(model.vocab, raw, len(raw), buf, 64, False, True)
    assert list(buf[:n]) != want  # llama.cpp alone does not normalize
    model.close()

    bridge = _bridge()
    m = bridge.load(str(res.text_path), None, n_ctx=256, n_threads=2)
    used = []
    for text in (composed, decomposed):
        s = bridge.session(m)
        bridge.check(bridge.lib.mcv_session_add_text(s, 1, text.encode()), s)
        rc, _ = bridge.generate(s, max_tokens=1)
        assert rc == 0
        used.append(bridge.stats(s).n_prefill_tokens)
        bridge.lib.mcv_session_free(s)
    bridge.lib.mcv_model_free(m)
    assert used[0] == used[1] > len(want)


def _bridge():
    sys.path.insert(0, str(BRIDGE / "python"))
    import mcv_bridge

    lib = mcv_bridge.load_library(mcv_bridge.build("plain") / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    return mcv_bridge.Bridge(lib)

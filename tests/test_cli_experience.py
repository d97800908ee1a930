"""What a person at a terminal sees: the interactive chat (commands, /image encoded at once,
Ctrl-C stops an answer and keeps the conversation, the prompt on stderr when stdout is piped),
progress bars, llama.cpp's load lines with -v, `inspect`'s table, and llama.cpp params that
really reach llama.cpp."""

from __future__ import annotations

import ast
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.runtime_helpers import noise_image

ROOT = Path(__file__).resolve().parents[1]


def _env(**kw):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **kw}


@pytest.fixture(scope="module")
def folder(store):
    return store.converted("minicpmv-4.5").text_path.parent


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "photo.png"
    Image.fromarray(noise_image(640, 480, seed=5)).save(p)
    return p


def test_interactive_commands_with_piped_stdout(folder, photo):
    script = f"/help\n/image /no/such.png\n/image {photo}\nWhat is it?\n/bogus\n/clear\nHello\n/exit\n"
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "run", folder, "-n", "6", "--temp", "0", "-t", "2"],
                       input=script, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr
    assert "> " not in r.stdout  # stdout is not a terminal: prompts go to stderr, stdout has only answers
    assert len([ln for ln in r.stdout.splitlines() if ln.strip()]) <= 2
    err = r.stderr
    assert "/image PATH" in err and "/clear" in err and "Ctrl-C" in err  # /help
    assert "error: /no/such.png: image file does not exist" in err  # checked at once, the chat goes on
    assert re.search(r"\(image photo\.png: 640x480, \d+ encoder run\(s\)", err)  # its cost, before encoding
    encoded = re.search(r"\(encoded (\d+) chunk\(s\) and prefilled", err)
    assert encoded and int(encoded.group(1)) >= 2  # encoded right away, before the question
    timings = re.findall(r"\[load .*?image encode ([\d+]+) ms", err)
    assert timings[0] == "0"  # the question found the image's embeddings in the cache
    assert "unknown command /bogus" in err and "(conversation cleared)" in err
    assert len(timings) == 2


def test_ctrl_c_stops_the_answer_and_keeps_the_conversation(folder):
    proc = subprocess.Popen([sys.executable, "-m", "minicpmv_edge", "run", folder, "-n", "100000", "--ignore-eos",
                             "--temp", "0", "-t", "1", "-c", "512"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.extend(iter(lambda: proc.stdout.read(1), b"")), daemon=True)
    reader.start()
    proc.stdin.write(b"Tell me a very long story.\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 300
    while len(out) < 20 and time.monotonic() < deadline:  # the answer is streaming
        time.sleep(0.05)
    assert len(out) >= 20, "no answer started"
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    proc.stdin.write(b"Hello again.\n/exit\n")  # the same session goes on
    proc.stdin.flush()
    proc.stdin.close()
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert rc == 0, err
    assert "(stopped; the conversation continues)" in err
    tokens = [int(n) for n in re.findall(r"decode [\d.]+ tok/s \((\d+) tok\)", err)]
    assert len(tokens) == 2 and tokens[0] < 100000, err  # the first answer was cut, a second one followed
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_verbose_shows_llama_cpp_load_lines(folder):
    base = [sys.executable, "-m", "minicpmv_edge", "run", folder, "-p", "hi", "-n", "1", "-t", "1"]
    quiet = subprocess.run(base, capture_output=True, text=True, timeout=300, env=_env())
    loud = subprocess.run(base + ["-v"], capture_output=True, text=True, timeout=300, env=_env())  # -v after it
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stderr
    for line in ("load_tensors: loading model tensors", "CPU_Mapped model buffer size", "KV buffer size"):
        assert line in loud.stderr and line not in quiet.stderr, line


def test_progress_bars(store, tmp_path):
    ckpt = store.checkpoint("minicpmv-4.5")
    cmd = [sys.executable, "-m", "minicpmv_edge", "convert", ckpt, "-o", tmp_path / "o", "--quant", "Q8_0",
           "--keep-intermediate"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(MINICPMV_EDGE_PROGRESS="1"))
    assert r.returncode == 0, r.stderr
    bars = r.stderr.replace("\r", "\n")
    assert re.search(r"converting minicpmv-4\.5: 100%.*\d[\d.]*[kMG]?B/s", bars), bars
    assert re.search(r"quantizing to Q8_0: 100%", bars), bars
    mm = next((tmp_path / "o").glob("*mmproj*.gguf"))
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "quantize", mm, tmp_path / "mq.gguf", "Q8_0"],
                       capture_output=True, text=True, timeout=600, env=_env(MINICPMV_EDGE_PROGRESS="1"))
    assert r.returncode == 0 and "quantizing projector to Q8_0: 100%" in r.stderr.replace("\r", "\n"), r.stderr
    # not a terminal and not asked for: no bars (logs and pipes stay clean)
    r = subprocess.run(cmd[:5] + ["-o", tmp_path / "o2"], capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in _env().items() if k != "MINICPMV_EDGE_PROGRESS"})
    assert r.returncode == 0 and "%|" not in r.stderr, r.stderr


def test_progress_while_encoding_many_slices(store):
    from minicpmv_edge import progress
    from minicpmv_edge.edge_runtime import MiniCPMV

    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=2)
    from PIL import Image

    seen = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.desc, self.n = total, desc, 0
            seen.append(self)

        def update(self, n=1):
            self.n += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    real = progress.bar
    progress.bar = lambda total, desc, unit="B": Bar(total, desc, unit) if total else real(total, desc, unit)
    try:
        m.chat([{"role": "user", "content": [Image.fromarray(noise_image(1344, 896, 7)), "?"]}], max_tokens=1)
    finally:
        progress.bar = real
        m.close()
    slices = [b for b in seen if b.desc == "encoding image slices"]
    assert slices and slices[0].total >= 5 and slices[0].n == slices[0].total


def test_inspect_prints_a_clean_table(folder):
    r = subprocess.run([sys.executable, "-m", "minicpmv_edge", "inspect", folder], capture_output=True, text=True,
                       timeout=120, env=_env())
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "{" not in out and "'" not in out  # no Python reprs
    assert re.search(r"\n  size\s+\d+\.\d\d (KiB|MiB|GiB)\n", out)
    assert re.search(r"training context \(tokens\)\s+40,960", out)
    assert re.search(r"tensors\s+\d+ \(F16 \d+, F32 \d+\)", out)
    assert "pair: OK" in out


def test_quality_refuses_a_foreign_vocabulary(store, tmp_path):
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from minicpmv_edge.errors import MismatchError
    from minicpmv_edge.quantize.quality import text_quality

    src = store.converted("minicpmv-4.5").text_path
    other = tmp_path / "other-vocab.gguf"  # the same model with one token renamed: same size, not the same vocabulary
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(other, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        value = f.contents()
        if f.name == "tokenizer.ggml.tokens":
            value = list(value)
            value[300] = "renamed-token"
        vtype = f.types[0]
        w.add_key_value(f.name, value, vtype, sub_type=f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(MismatchError, match="vocabularies differ \\(token 300 is"):
        text_quality(src, other, chunk=32)
    with pytest.raises(MismatchError, match="vocabularies differ"):
        text_quality(src, store.converted("minicpmv-4.6").text_path, chunk=32)


def test_use_mmap_reaches_llama_cpp(store, caplog):
    """LoadOptions.use_mmap maps onto llama_model_params.load_mode (this llama.cpp has no use_mmap)."""
    from minicpmv_edge.edge_runtime.engine import Model

    path = str(store.converted("minicpmv-4.5").text_path)
    for use_mmap, mode in ((False, "none"), (True, "mmap")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="minicpmv_edge.edge_runtime.engine"):
            m = Model(path, use_mmap=use_mmap)
            m.close()
        assert f"(load_mode = {mode})" in caplog.text, caplog.text[-2000:]


def test_set_fields_refuses_a_field_llama_cpp_lacks():
    import llama_cpp as L

    from minicpmv_edge.edge_runtime.engine import set_fields

    p = L.llama_model_default_params()
    with pytest.raises(AttributeError, match="has no field 'use_mmap'"):
        set_fields(p, use_mmap=True)
    set_fields(p, load_mode=L.LLAMA_LOAD_MODE_NONE)
    assert p.load_mode == 0


# every params struct our code fills, by the call that makes its defaults
_STRUCTS = {"llama_model_default_params": "llama_model_params", "llama_context_default_params": "llama_context_params",
            "mtmd_context_params_default": "mtmd_context_params",
            "llama_model_quantize_default_params": "llama_model_quantize_params",
            "llama_sampler_chain_default_params": "llama_sampler_chain_params"}


def test_every_params_field_we_set_exists_in_llama_cpp():
    """Static check over edge_runtime/, quantize/ and the tests' own helpers: each attribute set on a
    llama.cpp params struct (directly, or through set_fields) is a field of that ctypes structure."""
    import llama_cpp as L
    import llama_cpp.mtmd_cpp as M

    fields = {s: {f[0] for f in getattr(L, s, getattr(M, s, None))._fields_} for s in _STRUCTS.values()}
    checked = 0
    for path in [*ROOT.glob("edge_runtime/*.py"), *ROOT.glob("quantize/*.py"), *ROOT.glob("tests/*helpers*.py")]:
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            kinds: dict[str, str] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    call = node.value.func
                    name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", "")
                    for tgt in node.targets:
                        if isinstance(tgt, ast.Name) and name in _STRUCTS:
                            kinds[tgt.id] = _STRUCTS[name]
            for node in ast.walk(fn):
                targets = []
                if isinstance(node, (ast.Assign, ast.AugAssign)):
                    tgts = node.targets if isinstance(node, ast.Assign) else [node.target]
                    targets = [(t.value.id, t.attr) for t in tgts
                               if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)]
                elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "set_fields" and node.args \
                        and isinstance(node.args[0], ast.Name):
                    targets = [(node.args[0].id, k.arg) for k in node.keywords if k.arg]
                for var, attr in targets:
                    if var in kinds:
                        checked += 1
                        assert attr in fields[kinds[var]], f"{path.name}: {kinds[var]} has no field {attr!r}"
    assert checked >= 15  # the engine's model/context/mtmd params, the quantizer's, the tests' helpers


class _Live:
    """A running CLI with both output streams collected as they come."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=_env())
        self.out, self.err = bytearray(), bytearray()
        for stream, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, b=buf: [b.extend(c) for c in iter(lambda: s.read1(4096), b"")],
                             daemon=True).start()

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_for(self, buf: bytearray, needle: bytes, timeout: float = 300, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while bytes(buf).count(needle) < count:
            assert time.monotonic() < deadline and self.proc.poll() is None, (needle, bytes(self.err)[-3000:])
            time.sleep(0.02)


def test_image_after_a_stopped_answer_and_ctrl_c_while_encoding(folder, tmp_path):
    """/image prefills at once even after Ctrl-C stopped an answer (a stale cancel must not stop it);
    Ctrl-C while an image encodes drops that image and keeps the conversation; the question that
    follows evaluates only its own tokens."""
    from PIL import Image

    small, big = tmp_path / "small.png", tmp_path / "big.png"
    Image.fromarray(noise_image(200, 150, seed=1)).save(small)
    Image.fromarray(noise_image(1344, 896, seed=2)).save(big)
    live = _Live([sys.executable, "-m", "minicpmv_edge", "run", folder, "-n", "100000", "--ignore-eos", "--temp", "0",
                  "-t", "1", "-c", "1024"])
    try:
        live.send("Tell me a very long story.\n")
        deadline = time.monotonic() + 300
        while len(live.out) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        live.proc.send_signal(signal.SIGINT)
        live.wait_for(live.err, b"(stopped; the conversation continues)")
        live.send(f"/clear\n/image {small}\n")
        live.wait_for(live.err, b"prefilled")  # not stopped by the earlier Ctrl-C
        live.send(f"/image {big}\n")
        live.wait_for(live.err, b"big.png: 1344x896")
        live.proc.send_signal(signal.SIGINT)
        live.wait_for(live.err, b"(stopped; no image attached, the conversation continues)")
        live.send("What is it?\n/exit\n")
        live.proc.stdin.close()
        rc = live.proc.wait(timeout=300)
    finally:
        if live.proc.poll() is None:
            live.proc.kill()
    err = bytes(live.err).decode()
    assert rc == 0, err
    assert "Traceback" not in err and "error:" not in err and "ERROR" not in err, err  # an abort is not an error
    last = re.findall(r"\[load .*?image encode ([\d+]+) ms .*?\((\d+)/(\d+) tok\)", err)[-1]
    assert last[0] == "0", last  # the small image was encoded by /image, the big one never reached the turn
    assert int(last[1]) <= 32 and int(last[2]) >= 64, last  # the prefilled image is not evaluated again

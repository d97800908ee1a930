"""The mobile bridge's C ABI, end to end on the tiny fixtures.

Builds mobile_bridge/ with cmake (cached under ~/.cache/minicpmv-edge, incremental),
then: the C test program (plain and under ASan+UBSan), ctypes, the JVM test (JNI)
and the Node test (NAPI); prompt bytes of prefilled conversations (videos included) vs the chat
template's jinja rendering; the add_* path's: test_bridge_prompt.py.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "mobile_bridge" / "python"))
import mcv_bridge  # noqa: E402


OTHER = {"minicpmv-2.6": "minicpmv-4.5", "minicpmv-4.0": "minicpmv-2.6", "minicpmv-4.5": "minicpmv-2.6",
         "minicpmv-4.6": "minicpmv-4.5"}




@pytest.fixture(scope="session")
def plain_build() -> Path:
    return mcv_bridge.build("plain", jni=True, napi=True)  # scripts/test installs the JDK, kotlinc and node


@pytest.fixture(scope="session")
def bridge(plain_build):
    lib = mcv_bridge.load_library(plain_build / "libminicpmv_edge_bridge.so")
    lib.mcv_set_log_callback(None, None)
    return mcv_bridge.Bridge(lib)


@pytest.fixture(scope="session")
def image_png(tmp_path_factory) -> Path:
    import numpy as np
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "img.png"
    rgb = (np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8")
    Image.fromarray(rgb).save(p)
    return p


def pair(store, family):
    r = store.converted(family)
    return str(r.text_path), str(r.mmproj_path)


def fixture_dir(store, family, root: Path) -> Path:
    """The C test's inputs as CMakeLists.txt's MCV_TEST_FIXTURES expects them (links to the store's files)."""
    d = root / f"fixtures-{family}"
    d.mkdir(exist_ok=True)
    text, mm = pair(store, family)
    for name, src in (("text.gguf", text), ("mmproj.gguf", mm), ("other-mmproj.gguf", pair(store, OTHER[family])[1])):
        if not (d / name).exists():
            os.symlink(src, d / name)
    return d


def run_ctest(build: Path, fixtures: Path, env=None, timeout=900) -> subprocess.CompletedProcess:
    """Points the build's registered C test at `fixtures` and runs it the way a developer would: ctest."""
    subprocess.run(["cmake", "-S", str(ROOT / "mobile_bridge"), "-B", str(build), f"-DMCV_TEST_FIXTURES={fixtures}"],
                   check=True, capture_output=True)
    return subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure", "-V"], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"])
def test_c_program(store, plain_build, tmp_path_factory, family):
    fx = fixture_dir(store, family, tmp_path_factory.getbasetemp())
    r = run_ctest(plain_build, fx)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "100% tests passed, 0 tests failed out of 2" in r.stdout  # the fixture step + bridge_test
    assert f"{family}: 0 failure(s)" in r.stdout, r.stdout[-3000:]
    assert (fx / "image.png").exists()  # made by the fixture step (python/make_test_fixtures.py)


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_c_program_asan_ubsan(store, tmp_path_factory, family):
    build = mcv_bridge.build("asan")
    fx = fixture_dir(store, family, tmp_path_factory.getbasetemp())
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    r = run_ctest(build, fx, env=env, timeout=1200)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert f"{family}: 0 failure(s)" in r.stdout, out[-3000:]
    assert "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-4000:]


def test_ctypes_end_to_end(store, bridge, image_png):
    lib = bridge.lib
    assert lib.mcv_abi_version() == 1 and lib.mcv_version().decode().count(".") == 2
    text, mm = pair(store, "minicpmv-4.5")
    model = bridge.load(text, mm, n_ctx=2048, n_threads=2)
    s = bridge.session(model)
    bridge.check(lib.mcv_session_add_image_bytes(s, image_png.read_bytes(), image_png.stat().st_size), s)
    bridge.check(lib.mcv_session_add_text(s, 1, "What is this?".encode()), s)
    rc, reply = bridge.generate(s, max_tokens=8)
    assert rc == 0 and isinstance(reply, str)
    st = bridge.stats(s)
    assert st.n_images == 1 and 1 <= st.n_decode_tokens <= 8 and st.image_encode_ms > 0 and st.ttft_ms > 0

    # cancel from another thread once a few pieces arrived
    bridge.check(lib.mcv_session_add_text(s, 1, b"Go on."), s)
    got = threading.Event()
    seen = []

    def on_piece(piece):
        seen.append(piece)
        if len(seen) == 3:
            got.set()
            threading.Event().wait(0.05)  # give the canceller time to set the flag
        return False

    t = threading.Thread(target=lambda: (got.wait(30), lib.mcv_session_cancel(s)))
    t.start()
    rc, _ = bridge.generate(s, max_tokens=0, on_piece=on_piece)
    t.join()
    assert rc == -9 and bridge.stats(s).finish_reason == 5  # MCV_ERR_CANCELLED, MCV_FINISH_CANCELLED

    # pull style, library-owned strings
    bridge.check(lib.mcv_session_add_text(s, 1, b"Once more."), s)
    gp = mcv_bridge.GenParams()
    lib.mcv_gen_params_init(ctypes.byref(gp))
    gp.max_tokens = 4
    bridge.check(lib.mcv_session_begin(s, ctypes.byref(gp)), s)
    pieces = []
    while True:
        out = ctypes.c_void_p()
        rc = lib.mcv_session_next_alloc(s, ctypes.byref(out))
        if rc == mcv_bridge.DONE:
            break
        bridge.check(rc, s)
        pieces.append(bridge.take_string(out))
    assert 1 <= len(pieces) <= 4

    # reset, then a second session beside the first
    bridge.check(lib.mcv_session_reset(s), s)
    assert bridge.prompt_text(s, with_prefix=False) == "" and bridge.stats(s).n_ctx_used == 0
    s2 = bridge.session(model)
    bridge.check(lib.mcv_session_add_image_file(s2, str(image_png).encode()), s2)
    assert bridge.generate(s2, max_tokens=3)[0] == 0
    assert lib.mcv_model_free(model) == -14  # sessions alive: MCV_ERR_STATE
    assert lib.mcv_session_free(s2) == 0 and lib.mcv_session_free(s) == 0
    assert lib.mcv_model_free(model) == 0


def test_ctypes_bad_input(store, bridge, image_png):
    lib = bridge.lib
    text, mm = pair(store, "minicpmv-4.5")
    _, mm26 = pair(store, "minicpmv-2.6")
    cases = [((text, mm26), -5, "minicpmv-2.6"), (("/no/such.gguf", mm), -2, "cannot open"),
             ((text, str(image_png)), -4, "projector"), ((mm, None), -3, "text model")]
    for (t, m), code, words in cases:
        with pytest.raises(mcv_bridge.BridgeError) as e:
            bridge.load(t, m)
        assert e.value.code == code and words in str(e.value), (t, m, str(e.value))
    p = mcv_bridge.ModelParams()
    lib.mcv_model_params_init(ctypes.byref(p))
    p.struct_size = 4
    out = ctypes.c_void_p()
    assert lib.mcv_model_load(text.encode(), mm.encode(), ctypes.byref(p), ctypes.byref(out)) == -1
    assert b"struct_size" in lib.mcv_last_error() and not out.value
    assert lib.mcv_session_add_text(None, 1, b"x") == -1
    model = bridge.load(text, mm)
    s = bridge.session(model)
    junk = os.urandom(64)
    for data, code in ((b"\xff\xd8\xff" + junk, -7), (junk, -7), (b"", -1)):
        assert lib.mcv_session_add_image_bytes(s, data, len(data)) == code
        assert lib.mcv_session_errmsg(s)
    assert lib.mcv_session_add_image_rgb(s, b"\0" * 12, 2, 2, 5) == -1  # stride < 3*w
    assert lib.mcv_session_set_thinking(s, 1) == 0
    assert bridge.prompt_text(s, with_prefix=False) == ""
    lib.mcv_session_free(s)
    lib.mcv_model_free(model)
    # a model without thinking refuses to enable it
    model = bridge.load(*pair(store, "minicpmv-2.6"))
    s = bridge.session(model)
    assert lib.mcv_session_set_thinking(s, 1) == -13
    lib.mcv_session_free(s)
    lib.mcv_model_free(model)


VIDEO = ("video", 2)  # a video part of two frames
SP = "\u3000\u2028\x1c\xa0"  # whitespace Python's str.strip() removes beyond ASCII
# (role, parts); None: an image. Whitespace and answers given as text exercise what prefill must
# hold back until the turn closes (|trim, the history form of an answer).
PREFILL_CONVERSATIONS = [
    [("system", ["You are terse."]), ("user", ["Hi", None, "and", None]), ("assistant", ["Two images."]),
     ("user", ["Which is brighter? 图片 🦊"])],
    [("system", ["  sys \n"]), ("user", ["  padded ", None, " after\t"]), ("assistant", [" spaced \n\n"]),
     ("user", [SP + "next" + SP])],
    [("user", ["Q1"]), ("assistant", ["<think>\nstep\n</think>\n\nA1"]), ("user", ["Q2 ", " "]),
     ("assistant", ["\n<think>r</think>A2 "]), ("user", [None, "Q3"])],
    [("user", ["Describe the clip.", VIDEO, "Be brief."]), ("assistant", ["A fox."]),
     ("user", [None, "And this photo?", VIDEO])],
    [("user", [VIDEO, VIDEO, "Which clip is longer?"])],  # two videos back to back: video_frame = 2
]


@pytest.mark.parametrize("family", ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"])
def test_prefill_prompt_matches_python(store, bridge, image_png, family):
    """Prefilled part by part (prefill_text / prefill_image / prefill_video_frame, each evaluated as it
    comes), the conversation's bytes equal the jinja rendering of the model's own template (the Python
    runtime's build_prompt), videos included; what closing a turn may rewrite is held back."""
    from minicpmv_edge.edge_runtime.api import MiniCPMV
    from minicpmv_edge.edge_runtime.media import load_image
    from minicpmv_edge.edge_runtime.messages import Turn, Video

    res = store.converted(family)  # the fixtures carry the real chat templates
    text, mm = str(res.text_path), str(res.mmproj_path)
    py = MiniCPMV(text, mm, n_ctx=512)
    img = load_image(image_png)
    h, w = img.rgb.shape[:2]
    rgb = img.rgb.tobytes()

    def python_part(p):
        return img if p is None else Video([img] * p[1]) if isinstance(p, tuple) else p

    model = bridge.load(text, mm, n_ctx=4096)
    s = bridge.session(model)
    lib = bridge.lib
    try:
        for k, conv in enumerate(PREFILL_CONVERSATIONS):
            thinking = py.format.thinking_supported and k % 2 == 1
            bridge.check(lib.mcv_session_reset(s), s)
            bridge.check(lib.mcv_session_set_thinking(s, int(thinking)), s)
            for role, parts in conv:
                if role != "user":
                    bridge.check(lib.mcv_session_end_turn(s), s)
                for p in parts:
                    if isinstance(p, tuple):  # a video: its first frame starts it (2), then frames
                        ip = bridge.image_params(video_frame=2)
                        bridge.check(lib.mcv_session_prefill_image_rgb(s, rgb, w, h, w * 3, ctypes.byref(ip)), s)
                        for _ in range(p[1] - 1):
                            bridge.check(lib.mcv_session_prefill_video_frame(s, rgb, w, h, w * 3), s)
                    elif p is None:
                        bridge.check(lib.mcv_session_prefill_image_file(s, str(image_png).encode(), None), s)
                    else:
                        bridge.check(lib.mcv_session_prefill_text(s, mcv_bridge.ROLE[role], p.encode()), s)
            turns = [Turn(role, [python_part(p) for p in parts]) for role, parts in conv]
            want = py.build_prompt(turns, thinking)[0]
            assert bridge.prompt_text(s) == want, (family, conv)
            # all but held-back whitespace is in the KV cache: the reply evaluates little more than
            # the turn's end and the assistant prefix
            rc, _ = bridge.generate(s, max_tokens=1)
            st = bridge.stats(s)
            n_media = sum(1 if p is None else p[1] for _, parts in conv for p in parts if not isinstance(p, str))
            assert rc == 0 and st.n_encoded_chunks >= n_media and 2 <= st.n_prefill_tokens <= 24, (conv, st.n_prefill_tokens)
    finally:
        lib.mcv_session_free(s)
        lib.mcv_model_free(model)
        py.close()


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_prefill_ahead_costs_only_the_question(store, bridge, image_png, family):
    """Prefill ahead (issue 14 item 3, C side): after mcv_session_prefill_image the question's reply
    evaluates exactly the tokens of the text added after it, encodes nothing, and starts in a small
    fraction of the cold path's time (image picked -> first token); the image's cost was known exactly
    before encoding; the reply is the cold path's."""
    import time

    from minicpmv_edge.edge_runtime.engine import Model

    lib = bridge.lib
    text, mm = pair(store, family)
    model = bridge.load(text, mm, n_ctx=4096, n_threads=2)
    question = "What is in this picture? Answer in one word."
    rgb_img = (np.random.RandomState(3).rand(500, 700, 3) * 255).astype("uint8")  # sliced: overview + 2
    h, w = rgb_img.shape[:2]
    first = {}

    def on_piece(_):
        first.setdefault("t", time.perf_counter())
        return False

    try:
        # cold: photo and question together, timed from the start to the first token
        cold = bridge.session(model)
        t0 = time.perf_counter()
        bridge.check(lib.mcv_session_add_image_rgb(cold, rgb_img.tobytes(), w, h, w * 3), cold)
        bridge.check(lib.mcv_session_add_text(cold, 1, question.encode()), cold)
        rc, cold_reply = bridge.generate(cold, max_tokens=6, on_piece=on_piece)
        cold_ttft = first.pop("t") - t0
        assert rc == 0

        s = bridge.session(model)
        cost = bridge.image_cost(s, w, h)
        assert cost.n_chunks > 1 and cost.grid_cols * cost.grid_rows == cost.n_chunks - 1
        bridge.check(lib.mcv_session_prefill_image_rgb(s, rgb_img.tobytes(), w, h, w * 3, None), s)
        pre = bridge.stats(s)
        assert (pre.last_image_n_tokens, pre.last_image_n_chunks, pre.n_encoded_chunks) == \
            (cost.n_tokens, cost.n_chunks, cost.n_chunks)
        before = bridge.prompt_text(s, with_prefix=False)
        bridge.check(lib.mcv_session_add_text(s, 1, question.encode()), s)
        new_text = bridge.prompt_text(s, with_prefix=True)[len(before):]  # what generate will evaluate
        t0 = time.perf_counter()
        rc, reply = bridge.generate(s, max_tokens=6, on_piece=on_piece)
        ahead_ttft = first.pop("t") - t0
        post = bridge.stats(s)
        assert rc == 0 and reply == cold_reply
        # exactly the new text's tokens (tokenized alone, as the bridge evaluates it) were prefilled
        assert new_text.startswith(question) or question in new_text[:len(question) + 8]
        tok = Model(text)
        try:
            want = len(tok.tokenize(new_text, add_special=False, parse_special=True))
        finally:
            tok.close()
        assert post.n_prefill_tokens == want, (post.n_prefill_tokens, want, new_text)
        assert post.n_encoded_chunks == pre.n_encoded_chunks and post.image_encode_ms == pre.image_encode_ms
        assert ahead_ttft < 0.25 * cold_ttft, (ahead_ttft, cold_ttft)
        print(f"{family}: cold TTFT {cold_ttft * 1e3:.0f} ms, after prefill {ahead_ttft * 1e3:.0f} ms "
              f"({ahead_ttft / cold_ttft:.3f}); question {post.n_prefill_tokens} tokens, image {cost.n_tokens}")
        lib.mcv_session_free(cold)
        lib.mcv_session_free(s)
    finally:
        lib.mcv_model_free(model)


def test_max_slices_shrinks_images(store, bridge):
    """max_slices is enforced by downscaling (mtmd has no runtime setter): fewer image positions."""
    lib = bridge.lib
    text, mm = pair(store, "minicpmv-4.5")
    rgb = bytes(1344 * 896 * 3)
    used = {}
    for cap in (0, 4, 1):
        model = bridge.load(text, mm, n_ctx=2048, max_slices=cap)
        s = bridge.session(model)
        bridge.check(lib.mcv_session_add_image_rgb(s, rgb, 1344, 896, 1344 * 3), s)
        used[cap] = bridge.stats(s).n_ctx_used
        lib.mcv_session_free(s)
        lib.mcv_model_free(model)
    assert used[0] > used[4] > used[1], used


def _jvm_args(store, image_png, family="minicpmv-4.5"):
    text, mm = pair(store, family)
    return [text, mm, pair(store, OTHER[family])[1], str(image_png)]


def test_jvm_java(store, plain_build, image_png, tmp_path):
    android = ROOT / "mobile_bridge" / "android"
    srcs = [str(p) for p in (android / "src/main/java/org/minicpmv/edge").glob("*.java")]
    subprocess.run(["javac", "-d", str(tmp_path), *srcs, str(android / "test/BridgeTest.java")], check=True,
                   capture_output=True, text=True)
    r = subprocess.run(["java", f"-Djava.library.path={plain_build}", "-cp", str(tmp_path), "BridgeTest",
                        *_jvm_args(store, image_png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "java: 0 failure(s)" in r.stdout, r.stdout + r.stderr[-3000:]


def test_jvm_kotlin(store, plain_build, image_png, tmp_path):
    android = ROOT / "mobile_bridge" / "android"
    jcls, kcls = tmp_path / "j", tmp_path / "k"
    srcs = [str(p) for p in (android / "src/main/java/org/minicpmv/edge").glob("*.java")]
    subprocess.run(["javac", "-d", str(jcls), *srcs], check=True, capture_output=True, text=True)
    subprocess.run(["kotlinc", "-nowarn", "-cp", str(jcls), str(android / "src/main/kotlin/org/minicpmv/edge/MiniCpmvEngine.kt"),
                    str(android / "test/BridgeTestMain.kt"), "-d", str(kcls)], check=True, capture_output=True, text=True)
    r = subprocess.run(["kotlin", f"-Djava.library.path={plain_build}", "-cp", f"{jcls}:{kcls}", "BridgeTestMainKt",
                        *_jvm_args(store, image_png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "kotlin: 0 failure(s)" in r.stdout, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_node_napi(store, plain_build, image_png, tmp_path, family):
    out = tmp_path / "node.log"  # a file, not a pipe: node writes files synchronously
    with open(out, "w") as f:
        r = subprocess.run(["node", str(ROOT / "mobile_bridge/harmonyos/test/bridge_test.js"),
                            str(plain_build / "minicpmv_edge_napi.node"), *_jvm_args(store, image_png, family)],
                           stdout=f, stderr=subprocess.DEVNULL, timeout=300)
    log = out.read_text()
    assert r.returncode == 0 and "node: 0 failure(s)" in log, log


@pytest.mark.parametrize("family", ["minicpmv-4.5", "minicpmv-4.6"])
def test_external_encoder_hook(store, bridge, family):
    """mcv_session_set_encoder: mtmd's own embeddings (computed in Python with edge_runtime.engine on
    the same image) handed back through the hook give the default path's greedy reply; the geometry
    the bridge reports is external_encoder.slice_plan's; failures leave the conversation unchanged."""
    import numpy as np
    from gguf import GGUFReader

    from minicpmv_edge.edge_runtime.engine import CHUNK_IMAGE, Bitmap, Model, Vision
    from minicpmv_edge.edge_runtime.external_encoder import slice_plan

    lib = bridge.lib
    assert lib.mcv_version_number() >= 2000 and lib.mcv_abi_version() == 1
    text, mm = pair(store, family)
    rgb = (np.random.RandomState(1).rand(700, 1000, 3) * 255).astype("uint8")  # sliced (3 x 2 or so)
    h, w = rgb.shape[:2]

    # mtmd's embeddings of each chunk, overview first
    pm = Model(text)
    vis = Vision(mm, pm, n_threads=2)
    chunks = vis.tokenize(vis.marker, [Bitmap(rgb)])
    want = [vis.encode_chunk(chunks[i]) for i in range(len(chunks)) if chunks.kind(i) == CHUNK_IMAGE]
    chunks.close()
    vis.close()
    pm.close()
    fields = {f.name: f for f in GGUFReader(mm).fields.values()}
    sf = fields.get("clip.vision.projector.scale_factor")
    n_merge = int(sf.parts[sf.data[0]][0]) if sf is not None and family == "minicpmv-4.6" else 1
    plan = slice_plan(w, h, 448, 14, n_merge, keep_small_whole=n_merge == 2)
    assert len(want) == 1 + len(plan.slices) > 1

    model = bridge.load(text, mm, n_ctx=2048, n_threads=2)
    seen, mode = [], {"v": "mtmd"}

    def encode(_user, info_p, pixels, out, n):
        info = info_p.contents
        seen.append((info.image_index, info.chunk_index, info.n_chunks, info.width, info.height, info.n_tokens,
                     info.n_embd, info.grid_cols, info.grid_rows, info.refined_width, info.refined_height,
                     info.slice_x, info.slice_y, info.patch_size, bool(pixels)))
        assert info.struct_size == ctypes.sizeof(mcv_bridge.SliceInfo)
        assert (info.image_width, info.image_height) == (w, h)
        assert ctypes.string_at(info.image_rgb, w * h * 3) == rgb.tobytes()
        if mode["v"] == "default":
            return mcv_bridge.ENCODE_USE_DEFAULT
        if mode["v"] == "fail":
            return -42 if info.chunk_index == 1 else 0 * ctypes.memmove(out, want[info.chunk_index].ctypes.data, n * 4)
        if mode["v"] == "unwritten":
            return 0
        e = np.ascontiguousarray(want[info.chunk_index], np.float32)
        assert n == e.size == info.n_tokens * info.n_embd
        ctypes.memmove(out, e.ctypes.data, e.nbytes)
        return 0

    c_encode = mcv_bridge.ENCODE_FN(encode)

    def run(hook):
        s = bridge.session(model)
        try:
            if hook:
                bridge.check(lib.mcv_session_set_encoder(s, c_encode, None), s)
            bridge.check(lib.mcv_session_add_image_rgb(s, rgb.tobytes(), w, h, w * 3), s)
            bridge.check(lib.mcv_session_add_text(s, 1, b"Describe the image."), s)
            rc, reply = bridge.generate(s, max_tokens=12)
            assert rc == 0
            return reply, bridge.stats(s).n_ctx_used
        finally:
            lib.mcv_session_free(s)

    base = run(False)
    assert run(True) == base  # mtmd's embeddings through the hook: same greedy reply, same positions
    sizes = [(r[3], r[4]) for r in seen]
    assert sizes == plan.sizes() and [r[1] for r in seen] == list(range(len(want)))
    assert all(r[0] == 0 and r[2] == len(want) and not r[-1] and r[13] == 14 for r in seen)
    assert [r[5] for r in seen] == [e.shape[0] for e in want] and {r[6] for r in seen} == {want[0].shape[1]}
    assert seen[1][7:13] == (plan.grid[0], plan.grid[1], *plan.refined, *plan.slices[0][:2])
    assert [r[11:13] for r in seen[1:]] == [sl[:2] for sl in plan.slices]
    mode["v"] = "default"
    assert run(True) == base  # every chunk handed back to mtmd

    # the C++ slice geometry equals external_encoder.slice_plan (and mtmd's chunk count) across shapes
    s = bridge.session(model)
    bridge.check(lib.mcv_session_set_encoder(s, c_encode, None), s)
    for gw, gh in ((449, 100), (100, 1000), (1344, 896), (2000, 300), (800, 800), (300, 200), (1000, 999)):
        seen.clear()
        rgb = np.zeros((gh, gw, 3), np.uint8)
        w, h = gw, gh
        bridge.check(lib.mcv_session_reset(s), s)
        bridge.check(lib.mcv_session_add_image_rgb(s, rgb.tobytes(), gw, gh, gw * 3), s)
        p = slice_plan(gw, gh, 448, 14, n_merge, keep_small_whole=n_merge == 2)
        assert [(r[3], r[4]) for r in seen] == p.sizes(), (gw, gh)
        assert [r[11:13] for r in seen[1:]] == [sl[:2] for sl in p.slices]
    lib.mcv_session_free(s)
    rgb = (np.random.RandomState(1).rand(700, 1000, 3) * 255).astype("uint8")
    h, w = rgb.shape[:2]

    # failures: a callback error / unwritten output -> MCV_ERR_DECODE, conversation unchanged
    s = bridge.session(model)
    bridge.check(lib.mcv_session_set_encoder(s, c_encode, None), s)
    for m, words in (("fail", "chunk 1 of"), ("unwritten", "not finite")):
        mode["v"] = m
        assert lib.mcv_session_add_image_rgb(s, rgb.tobytes(), w, h, w * 3) == -10
        assert words in lib.mcv_session_errmsg(s).decode(), lib.mcv_session_errmsg(s)
        assert bridge.prompt_text(s, with_prefix=False) == "" and bridge.stats(s).n_ctx_used == 0
        assert bridge.stats(s).n_images == 0
    # removing the hook restores mtmd's encoder
    bridge.check(lib.mcv_session_set_encoder(s, mcv_bridge.ENCODE_FN(), None), s)
    bridge.check(lib.mcv_session_add_image_rgb(s, rgb.tobytes(), w, h, w * 3), s)
    assert bridge.stats(s).n_images == 1
    lib.mcv_session_free(s)
    assert lib.mcv_session_set_encoder(None, c_encode, None) == -1 and b"NULL" in lib.mcv_last_error()
    lib.mcv_model_free(model)
    text_only = bridge.load(text, None, n_ctx=512)
    s = bridge.session(text_only)
    assert lib.mcv_session_set_encoder(s, c_encode, None) == -13 and lib.mcv_session_errmsg(s)
    lib.mcv_session_free(s)
    lib.mcv_model_free(text_only)

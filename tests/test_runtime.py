"""The runtime: same tokens as llama.cpp driven by hand, KV and embedding reuse, streaming,
multi-image, few-shot, video, thinking, and the prompt format read from GGUF metadata."""

from __future__ import annotations

import json

import jinja2
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.gguf_info import read_info
from tests.runtime_helpers import greedy_by_hand, make_video, noise_image

FAMILIES = ["minicpmv-2.6", "minicpmv-4.0", "minicpmv-4.5", "minicpmv-4.6"]
GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=20)


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, store):
    res = store.converted(request.param)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=2)
    yield request.param, res, m
    m.close()


# 4.6 is not here: it lays images out as transformers' processor does, not as mtmd does (mtmd
# letterboxes and gives a frame 2-D positions); tests/test_families_e2e.py proves it against
# transformers' forward instead
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "minicpmv-4.6"])
def test_greedy_matches_llama_cpp_by_hand(store, family):
    res = store.converted(family)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=2048, n_threads=2)
    assert not m.exact_images
    rgb = noise_image(640, 480, seed=3)  # sliced: overview + slices
    msgs = [{"role": "user", "content": [Image.fromarray(rgb), "What is in the image?"]}]
    r = m.chat(msgs, **GREEDY)
    prompt, bitmaps = m.build_prompt(normalize(msgs, m.limits),
                                     False)
    want = greedy_by_hand(str(res.text_path), str(res.mmproj_path), prompt, [b.rgb for b in bitmaps], 20)
    want_text = b"".join(m.model.piece(t) for t in want).decode("utf-8", "ignore")
    assert r.raw == want_text, family
    assert r.usage["completion_tokens"] >= len(want)
    m.close()


def test_follow_up_evaluates_only_new_tokens(loaded):
    family, res, m = loaded
    m.reset()
    img = Image.fromarray(noise_image(448, 448, seed=4))
    msgs = [{"role": "user", "content": [img, "Describe the picture."]}]
    r1 = m.chat(msgs, **GREEDY)
    before = m.counters.snapshot()
    msgs += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "What colour dominates?"}]
    r2 = m.chat(msgs, **GREEDY)
    after = m.counters
    assert after.images_encoded == before.images_encoded and after.image_cache_hits == before.image_cache_hits
    evaluated = after.tokens_evaluated - before.tokens_evaluated
    new_prompt = r2.timings.prompt_tokens_evaluated
    decoded = r2.usage["completion_tokens"] - (1 if r2.finish_reason == "stop" else 0)  # a stop token is not fed back
    assert evaluated == new_prompt + decoded
    # only the tail of the conversation is new: far fewer tokens than the prompt
    assert new_prompt < r2.usage["prompt_tokens"] - 64
    # the whole first prompt is reused except the generation prefix (4.6: from its state checkpoint)
    assert after.prompt_tokens_reused - before.prompt_tokens_reused >= r1.usage["prompt_tokens"] - 8


def test_image_embedding_cache_across_conversations(loaded):
    family, res, m = loaded
    m.reset()
    img = Image.fromarray(noise_image(448, 448, seed=5))
    m.chat([{"role": "user", "content": [img, "first"]}], **GREEDY)
    enc = m.counters.images_encoded
    m.reset()
    m.chat([{"role": "user", "content": ["other words", img, "second"]}], **GREEDY)
    assert m.counters.images_encoded == enc and m.counters.image_cache_hits >= 1


def test_streaming_equals_non_streaming(loaded):
    family, res, m = loaded
    msgs = [{"role": "user", "content": [Image.fromarray(noise_image(300, 200, 6)), "Hi"]}]
    m.reset()
    full = m.chat(msgs, **GREEDY)
    m.reset()
    streamed = "".join(p.text for p in m.chat(msgs, stream=True, **GREEDY))
    assert streamed == full.text


def test_multi_image_few_shot_and_video(loaded, tmp_path):
    family, res, m = loaded
    a, b, c = (Image.fromarray(noise_image(320, 240, s)) for s in (7, 8, 9))
    few_shot = [
        {"role": "user", "content": [a, "What is this?"]},
        {"role": "assistant", "content": "A noise pattern."},
        {"role": "user", "content": [b, c, "And these two?"]},
    ]
    m.reset()
    prompt, bitmaps = m.build_prompt(normalize(few_shot, m.limits),
                                     False)
    assert len(bitmaps) == 3 and prompt.count(m.vision.marker) == 3
    if m.format.use_image_id:
        assert "<image_id>0</image_id>" in prompt and "<image_id>2</image_id>" in prompt
    r = m.chat(few_shot, **GREEDY)
    assert r.usage["prompt_tokens"] > 3 * 64
    video = make_video(tmp_path / "clip.mp4", frames=12, fps=6)
    msgs = [{"role": "user", "content": [{"type": "video", "video": str(video), "fps": 2, "max_frames": 4},
                                         "Describe the video."]}]
    prompt, bitmaps = m.build_prompt(m.expand_videos(normalize(msgs, m.limits)), False)
    assert len(bitmaps) == 4
    # video.use_image_id is off (the model cards' video calls); 4.6-style frames go back to back
    assert "<image_id>" not in prompt
    if m.exact_images:
        assert m.vision.marker * 4 in prompt
    r = m.chat(msgs, **GREEDY)
    # one 448 slice per frame, no slicing: 4 x tokens_per_slice image positions at most
    assert r.usage["prompt_tokens"] <= 4 * (m.format.tokens_per_slice + 4) + 40


def _template_prompt(res, messages, thinking):
    info = read_info(res.text_path)
    tmpl = jinja2.Environment().from_string(info.get("tokenizer.chat_template"))
    kw = {} if thinking is None else {"enable_thinking": thinking}
    return tmpl.render(messages=messages, add_generation_prompt=True, **kw)


@pytest.mark.parametrize("thinking", [False, True])
def test_prompt_matches_the_checkpoint_chat_template(loaded, thinking):
    family, res, m = loaded
    if thinking and not m.format.thinking_supported:
        with pytest.raises(Exception, match="no thinking mode"):
            m.build_prompt(normalize(
                [{"role": "user", "content": "hi"}], m.limits), True)
        return
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "Tell me more."}]
    ours, _ = m.build_prompt(normalize(msgs, m.limits), thinking)
    assert ours == _template_prompt(res, msgs, thinking if m.format.thinking_supported else None)


def test_thinking_is_separated(store):
    res = store.converted("minicpmv-4.5")
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=1024, n_threads=2)
    msgs = [{"role": "user", "content": "Think about it."}]
    r = m.chat(msgs, enable_thinking=True, **GREEDY)
    assert r.raw.startswith(r.reasoning) or not r.reasoning
    pieces = list(m.chat(msgs, stream=True, enable_thinking=True, **GREEDY))
    assert "".join(p.text for p in pieces if p.reasoning) == m.last_result.reasoning.strip() or \
        "".join(p.text for p in pieces if p.reasoning).strip() == m.last_result.reasoning
    off, _ = m.build_prompt(normalize(msgs, m.limits), False)
    on, _ = m.build_prompt(normalize(msgs, m.limits), True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") and on.endswith("assistant\n<think>\n")
    m.close()


def test_cli_run_json_is_reproducible(store):
    import subprocess
    import sys

    res = store.converted("minicpmv-4.5")
    img = res.text_path.parent / "img.png"
    Image.fromarray(noise_image(200, 150, 11)).save(img)
    cmd = [sys.executable, "-m", "minicpmv_edge", "run", str(res.text_path.parent), "--image", str(img),
           "-p", "What is it?", "--temp", "0", "--seed", "3", "-n", "12", "--json", "-t", "2"]
    outs = [json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) for _ in range(2)]
    assert outs[0]["text"] == outs[1]["text"]
    t = outs[0]["timings"]
    assert t["image_encode_ms"] and t["prefill_tok_s"] > 0 and t["peak_rss_mb"] > 0 and t["load_ms"] > 0


def test_offload_flags_reach_llama_cpp(store):
    """Metal/CUDA cannot run here, and on a CPU-only build MiniCPMV refuses -ngl / --mmproj-gpu
    (test_hostile_runtime.py); the engine still puts them into llama.cpp's param structs, in
    fields those structs really have (engine.set_fields)."""
    import llama_cpp as L

    from minicpmv_edge.edge_runtime.engine import Context, Model, Vision

    res = store.converted("minicpmv-2.6")
    model = Model(str(res.text_path), n_gpu_layers=99, use_mmap=True)
    assert model.params.n_gpu_layers == 99 and model.params.load_mode == L.LLAMA_LOAD_MODE_AUTO
    vision = Vision(str(res.mmproj_path), model, n_threads=2, use_gpu=True)
    assert vision.params.use_gpu is True and vision.params.n_threads == 2
    ctx = Context(model, n_ctx=256, n_threads=2)
    assert ctx.n_threads == 2
    for h in (ctx, vision, model):
        h.close()
    from minicpmv_edge.edge_runtime.engine import physical_cores

    assert 1 <= physical_cores() <= (__import__("os").cpu_count() or 1)

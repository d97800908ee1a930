"""MiniCPM-V 4.5 video: the model card's frame grouping and the 3D resampler, against the real code.

- sampling: our `video_sampling.packed` vs the model card's own `encode_video` (its text, executed
  with a stand-in for decord's VideoReader that records which frames are read) on many clips;
- frames: our 4.5 frame preparation vs the checkpoint's image processor with temporal_ids;
- tower: llama.cpp's vision-tower features (vit_features.py) vs transformers' SigLIP, cos >= 0.999;
- resampler: our numpy 3D resampler vs the checkpoint's resampler.py on the same features,
  groups of 1..6 frames, both of its attention paths, cos >= 0.999 per token;
- end to end: the runtime's next-token logits for a video prompt vs the reference forward (SigLIP
  -> real resampler.py per group -> Qwen3), <= 1% of the logit range and the same argmax, with the
  token sequence equal to the checkpoint processor's.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from minicpmv_edge.edge_runtime import video_sampling
from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.edge_runtime.resampler3d import Resampler3D
from minicpmv_edge.edge_runtime.video_packed import PackedEncoder, prepare_frame
from minicpmv_edge.edge_runtime.video_source import VideoSource
from tests.logit_checks import assert_logits_match
from tests.reference.remote_45 import VideoReference, model_card, remote
from tests.runtime_helpers import make_video

FAMILY = "minicpmv-4.5"


def _card_encode_video():
    """The model card's encode_video (and its helpers), executed from the card's own text."""
    text = model_card()
    start = text.index("MAX_NUM_FRAMES=180")
    code = text[start:text.index('video_path="video_test.mp4"')]
    reads: list = []

    class VideoReader:  # decord's: len(), get_avg_fps(), get_batch(idx).asnumpy()
        def __init__(self, clip, ctx=None):
            self.n, self.fps = clip

        def __len__(self):
            return self.n

        def get_avg_fps(self):
            return self.fps

        def get_batch(self, idx):
            reads.append([int(i) for i in idx])
            return SimpleNamespace(asnumpy=lambda: np.zeros((len(idx), 2, 2, 3), np.uint8))

    from scipy.spatial import cKDTree

    ns = {"VideoReader": VideoReader, "cpu": lambda i: None, "np": np, "math": __import__("math"),
          "Image": Image, "cKDTree": cKDTree, "print": lambda *a, **k: None}
    exec(compile(code, "model-card:encode_video", "exec"), ns)
    return ns, reads


CLIPS = [(n, fps) for n, fps in [(90, 30.0), (901, 29.97), (240, 24.0), (61, 20.0), (300, 60.0), (7, 25.0),
                                 (1800, 30.0), (4500, 25.0), (48, 12.0), (150, 7.5), (3, 30.0)]]


@pytest.mark.parametrize("n,fps", CLIPS)
def test_sampling_matches_the_model_card(n, fps):
    ns, reads = _card_encode_video()
    for choose_fps in (1, 3, 5, 10):
        for max_frames, max_packing in ((180, 3), (64, 6), (20, 2)):
            for force in (None, 2, 6):
                ns["MAX_NUM_FRAMES"], ns["MAX_NUM_PACKING"] = max_frames, max_packing
                reads.clear()
                ours = video_sampling.packed(n, fps, choose_fps, max_frames, max_packing, force, 0.1)
                what = (n, fps, choose_fps, max_frames, max_packing, force)
                try:
                    _, groups = ns["encode_video"]((n, fps), choose_fps, force_packing=force)
                except ZeroDivisionError:  # the card has no frame for a clip shorter than one step: we keep one
                    assert ours.n_frames == 1, what
                    continue
                assert ours.indices == reads[0], what
                assert ours.groups == [[int(t) for t in g] for g in groups], what


@pytest.fixture(scope="module")
def converted(store):
    return store.converted(FAMILY)


@pytest.fixture(scope="module")
def reference(converted):
    return VideoReference(converted.manifest.source)


def _clip(tmp_path, frames=36, fps=12, size=(200, 120)):
    return make_video(tmp_path / "clip.mp4", frames=frames, fps=fps, size=size)


def test_frames_match_the_checkpoint_processor(reference, tmp_path):
    src = VideoSource(_clip(tmp_path))
    plan = video_sampling.packed(src.info.n_frames, src.info.fps, 3, 180, 3, 3)
    rgbs = src.frames(plan.indices)
    inputs = reference.processor.image_processor.preprocess([Image.fromarray(f) for f in rgbs], max_slice_nums=1,
                                                             temporal_ids=plan.groups, return_tensors="pt")
    enc = PackedEncoder("unused.gguf", {})
    for rgb, p, (h, w) in zip(rgbs, inputs["pixel_values"][0], inputs["tgt_sizes"][0].tolist()):
        ours = prepare_frame(rgb)
        assert ours.shape[:2] == (h * 14, w * 14)
        want = reference.unpatch(torch.as_tensor(p), h, w).permute(1, 2, 0).numpy()
        np.testing.assert_allclose(enc.normalise(ours), want, atol=1e-6)
    assert [[int(t) for t in g] for g in inputs["temporal_ids"][0]] == plan.groups


def test_tower_features_match_siglip(converted, reference):
    from minicpmv_edge.edge_runtime.vit_features import VitFeatures

    rng = np.random.default_rng(0)
    rgb = prepare_frame(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    enc = PackedEncoder(str(converted.mmproj_path), {"clip.vision.embedding_length": 64})
    x = enc.normalise(rgb)
    vit = VitFeatures(converted.mmproj_path, n_threads=1, width=64)
    got = vit.features(x)
    h, w = rgb.shape[0] // 14, rgb.shape[1] // 14
    want = reference.tower(torch.from_numpy(x).permute(2, 0, 1), h, w).numpy()
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == want.shape == (h * w, 64)
    assert cos.min() >= 0.999, f"worst patch cosine {cos.min():.5f}"
    vit.close()


@pytest.mark.parametrize("batch_infer", [True, False])
def test_3d_resampler_matches_resampler_py(converted, reference, batch_infer):
    ours = Resampler3D.from_mmproj(converted.mmproj_path)
    ref = reference.resampler
    ref.batch_infer = batch_infer
    rng = np.random.default_rng(1)
    grids = [(24, 43)] * 6 + [(28, 37)] * 3 + [(30, 30)]
    groups = [[0, 3, 7, 10, 13, 17], [40, 44, 49], [-1]]
    feats = [rng.normal(size=(h * w, 64)).astype(np.float32) for h, w in grids]
    x = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(f) for f in feats], batch_first=True)
    with torch.no_grad():
        want = ref(x, torch.tensor(grids, dtype=torch.int32), groups).numpy()
    k = 0
    for g, w in zip(groups, want):
        got = ours(feats[k:k + len(g)], grids[k:k + len(g)], g)
        k += len(g)
        cos = (got * w).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(w, axis=1))
        assert got.shape == w.shape == (64, 128)
        assert cos.min() >= 0.999, f"group {g}: worst token cosine {cos.min():.5f}"
    ref.batch_infer = True


@pytest.fixture(scope="module")
def model(converted):
    m = MiniCPMV(converted.text_path, converted.mmproj_path, n_ctx=4096, n_threads=1)
    yield m
    m.close()


def _our_ids(m) -> list[int]:
    """The session's prompt as token ids, 64 <unk> per image chunk (what the processor writes)."""
    unk = m.model.tokenize("<unk>")[0]
    out = []
    for u in m.session.units:
        out += [u[1]] if u[0] == "tok" else [unk] * u[3]
    return out


@pytest.mark.parametrize("opts", [{"fps": 3, "packing": 3}, {"fps": 2}, {"fps": 6, "packing": 6, "max_packing": 6}])
def test_end_to_end_logits_match_the_reference(model, reference, tmp_path, opts):
    clip = _clip(tmp_path)
    msgs = [{"role": "user", "content": [dict(type="video", video=str(clip), **opts), "What happens?"]}]
    turns = model.expand_videos(normalize(msgs, model.limits))
    groups = turns[0].parts[0].frames
    prompt, bitmaps = model.build_prompt(turns, enable_thinking=False)
    model.reset()
    model.session.prefill(prompt, bitmaps)
    got = model._ctx.logits()
    # the model card's way: every frame a placeholder, joined by "\n"; the processor keeps one per group
    n_frames = sum(len(g.frames) for g in groups)
    text = re.sub("(" + re.escape(model.vision.marker) + "\n?)+", "\n".join(["(<image>./</image>)"] * n_frames) + "\n",
                  prompt, count=1)
    src = VideoSource(clip)
    plan = video_sampling.packed(src.info.n_frames, src.info.fps, opts["fps"], 180, opts.get("max_packing", 3),
                                 opts.get("packing"))
    assert [g.temporal_ids for g in groups] == plan.groups
    frames = [Image.fromarray(f) for f in src.frames(plan.indices)]
    inputs = reference.processor([text], [frames], max_slice_nums=1, use_image_id=False, temporal_ids=plan.groups,
                                 return_tensors="pt")
    assert _our_ids(model) == inputs["input_ids"][0].tolist()
    want = reference.next_token_logits(inputs)
    assert_logits_match(got, want, "packed video")


def test_packing_uses_fewer_tokens_than_frames_as_images(model, tmp_path):
    clip = _clip(tmp_path)
    use = {}
    for mode in ("auto", "images"):
        model.reset()
        r = model.chat([{"role": "user", "content": [{"type": "video", "video": str(clip), "fps": 3, "packing": 3,
                                                      "mode": mode}, "Describe."]}], max_tokens=1, temperature=0)
        use[mode] = r.usage["prompt_tokens"]
    # 9 frames: 3 groups of 64 vs 9 images of 64, plus the same text
    assert use["images"] - use["auto"] == 6 * (64 + 3)

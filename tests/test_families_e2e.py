"""End to end: prompts with images through our runtime vs transformers' forward with its own processor.

For MiniCPM-V 4.6, MiniCPM-V 4.7 (dense and MoE text) and MiniCPM-OCR 1.0 (tiny checkpoints built with their own
transformers classes, converted by us, F16): the runtime builds the prompt, cuts and encodes the
images and feeds llama.cpp with its positions; transformers' processor expands the same prompt and
its model runs the forward. Checked per case:

- the token ids (visual slots aside) are identical, so placeholders, image ids, slice rows and
  newlines line up; for 4.7 the (t, h, w) positions equal the model's own get_rope_index;
- every crop's embeddings: cosine >= 0.999 per token against the model's get_image_features;
- the next-token logits: max |diff| <= 1% of the logit range and the same argmax.

Cases: a sliced non-square photo-sized image (1000x600), two images of different shapes in one
message, and for 4.7 a clip of video frames (time-ordered canvas positions, no image id); 4.7's MoE
text variant and 4.7 in 4x token mode on the sliced image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.edge_runtime.processor_images import layout
from tests.logit_checks import assert_logits_match
from tests.reference.merger_e2e import MergerReference, processor_text
from tests.runtime_helpers import noise_image

FAMILIES = ["minicpmv-4.6", "minicpmv-4.7", "minicpm-ocr-1.0"]


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise, so resizing differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 2 * c)) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)


CASES = {
    "sliced-nonsquare": lambda: ([_photo(1000, 600, 1)], "What is in this photo?"),
    "two-images": lambda: ([_photo(300, 200, 2), noise_image(700, 500, seed=3)], "Compare the two images."),
}


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, store):
    res = store.converted(request.param)
    ref = MergerReference(res.manifest.source)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    yield request.param, m, ref
    m.close()


def _ours(m: MiniCPMV, content):
    turns = normalize([{"role": "user", "content": content}], m.limits)
    prompt, bitmaps = m.build_prompt(turns, enable_thinking=False)
    m.reset()
    m.session.prefill(prompt, bitmaps)
    return prompt, m._ctx.logits()


def _check_ids_and_positions(family, m, ref, inputs):
    planner = m.session.planner
    want = inputs["input_ids"][0].tolist()
    got = list(planner.last_ids)
    pad = {ref.processor.image_token_id, ref.processor.video_token_id}
    assert len(got) == len(want), f"{family}: {len(got)} tokens vs the processor's {len(want)}"
    mism = [i for i, (a, b) in enumerate(zip(got, want)) if a != b and b not in pad]
    assert not mism, f"{family}: token {mism[0]} is {got[mism[0]]}, the processor has {want[mism[0]]}"
    assert sum(b in pad for b in want) == sum(1 for a, b in zip(got, want) if b in pad)
    if family.startswith("minicpmv-4.7"):
        kw = {k: inputs[k] for k in ("target_sizes", "target_sizes_videos") if k in inputs}
        pos, _ = ref.model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                                **kw)
        np.testing.assert_array_equal(planner.last_positions, pos[:, 0].numpy())


def _check_logits(family, got, want, what):
    assert_logits_match(got, want, f"{family} {what}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_images_match_transformers(loaded, case):
    family, m, ref = loaded
    images, question = CASES[case]()
    prompt, got = _ours(m, [Image.fromarray(x) for x in images] + [question])
    inputs = ref.inputs(processor_text(prompt, m.vision.marker), images=[Image.fromarray(x) for x in images])
    _check_ids_and_positions(family, m, ref, inputs)
    _check_logits(family, got, ref.next_token_logits(inputs), case)


@pytest.mark.parametrize("variant", ["minicpmv-4.7-moe", "minicpmv-4.7-4x"])
def test_47_variants_with_a_sliced_image(store, variant):
    """4.7's MoE text model (llama.cpp qwen35moe), and 4.7 in 4x token mode (merge 2: a 2x2-finer
    canvas), under the same canvas pipeline; the rest of their vision side is 4.7's, covered above."""
    res = store.converted(variant)
    ref = MergerReference(res.manifest.source)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    try:
        images, question = CASES["sliced-nonsquare"]()
        prompt, got = _ours(m, [Image.fromarray(x) for x in images] + [question])
        inputs = ref.inputs(processor_text(prompt, m.vision.marker), images=[Image.fromarray(x) for x in images])
        _check_ids_and_positions(variant, m, ref, inputs)
        _check_logits(variant, got, ref.next_token_logits(inputs), "sliced-nonsquare")
    finally:
        m.close()


def test_crop_embeddings_match_transformers(loaded):
    family, m, ref = loaded
    rgb = _photo(1000, 600, 1)
    inputs = ref.inputs("<|image_pad|>", images=[Image.fromarray(rgb)])
    want = ref.image_features(inputs)
    crops = layout(rgb, m.session.planner.image_spec).crops
    assert len(crops) == len(want) > 1, "a 1000x600 image is sliced"
    for k, (crop, w) in enumerate(zip(crops, want)):
        g = m.vision.encode(crop.pixels)
        assert g.shape == w.shape, (family, k, g.shape, w.shape)
        cos = (g * w).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1))
        assert cos.min() >= 0.999, f"{family} crop {k}: worst token cosine {cos.min():.5f}"


def test_video_frames_match_transformers(store):
    """4.7: video frames back to back, one canvas group, time-ordered positions, no image id."""
    res = store.converted("minicpmv-4.7")
    ref = MergerReference(res.manifest.source, video_max_slice_nums=1)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=2)
    try:
        frames = [_photo(320, 240, 10 + i) for i in range(3)]
        from minicpmv_edge.edge_runtime.media import Image as MediaImage
        from minicpmv_edge.edge_runtime.messages import Turn, Video

        clip = Video(frames=[MediaImage(f, f"frame{i}") for i, f in enumerate(frames)])
        turns = [Turn("user", [clip, "What happens in the video?"])]
        prompt, bitmaps = m.build_prompt(turns, enable_thinking=False)
        assert "<image_id>" not in prompt
        m.session.prefill(prompt, bitmaps)
        got = m._ctx.logits()
        inputs = ref.inputs(processor_text(prompt, m.vision.marker, video_frames=[len(frames)]),
                            videos=[[Image.fromarray(f) for f in frames]])
        _check_ids_and_positions("minicpmv-4.7", m, ref, inputs)
        _check_logits("minicpmv-4.7", got, ref.next_token_logits(inputs), "video")
    finally:
        m.close()


def test_ocr_small_images_kept_at_native_size(store, tmp_path):
    """OCR's small_image_upsize "never": small unsliced images keep their size (aligned to the patch
    grid) instead of being upscaled to 448²; ids and logits against OCR's processor with that setting."""
    from pathlib import Path

    from minicpmv_edge import schema
    from tests.test_families_runtime import _with_kv

    res = store.converted("minicpm-ocr-1.0")
    text = _with_kv(Path(res.text_path), tmp_path / "ocr-never.gguf", schema.EDGE_SMALL_IMAGE_UPSIZE, "never")
    ref = MergerReference(res.manifest.source)
    ref.processor.image_processor.small_image_upsize = "never"
    m = MiniCPMV(text, res.mmproj_path, n_ctx=4096, n_threads=2)
    try:
        images = [_photo(300, 200, 5), _photo(90, 120, 6)]
        prompt, got = _ours(m, [Image.fromarray(x) for x in images] + ["Read the text."])
        inputs = ref.inputs(processor_text(prompt, m.vision.marker), images=[Image.fromarray(x) for x in images])
        assert inputs["target_sizes"].tolist() == [[14, 22], [8, 6]]  # native sizes, not 448² (32x32 patches)
        _check_ids_and_positions("minicpm-ocr-1.0", m, ref, inputs)
        _check_logits("minicpm-ocr-1.0", got, ref.next_token_logits(inputs), "never-upsize")
    finally:
        m.close()

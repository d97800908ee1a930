"""MiniCPM-V 4.6 / 4.7 video: frames, stacking, placeholders and positions as transformers' processors.

The reference is transformers' own MiniCPMV4_6VideoProcessor (sampling, sub-frame composites,
sizes, NaViT packing) inside the checkpoint's processor class (placeholders, image ids, 4.7's
mm_token_type_ids), with torchvision's two calls replaced by the torch ops torchvision runs
(tests/reference/video_processor.py). Both sides read the same decoded frames. Checked:

- sampling: `video_sampling.stacked` vs the processor's `sample_frames` on many clips;
- resize: our uint8 bicubic vs torch's on many sizes, bit for bit;
- per clip: every crop's pixels (after resize and normalisation) equal the processor's, our
  token sequence equals the processor's (visual slots aside), 4.7's (t, h, w) positions equal
  the model's get_rope_index, and the next-token logits match the model's forward (<= 1% of the
  logit range, same argmax), with stack_frames 1 and 3 and a clip longer than max_num_frames.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.video_utils import VideoMetadata

from minicpmv_edge.edge_runtime import video_sampling
from minicpmv_edge.edge_runtime.api import MiniCPMV
from minicpmv_edge.edge_runtime.messages import normalize
from minicpmv_edge.edge_runtime.video_frames import layout as video_layout, resize_uint8
from minicpmv_edge.edge_runtime.video_source import VideoSource
from tests.logit_checks import assert_logits_match
from tests.reference.merger_e2e import MergerReference, _classes, processor_text
from tests.reference.video_processor import video_processor
from tests.runtime_helpers import make_video


@pytest.mark.parametrize("n,fps", [(90, 30.0), (301, 29.97), (240, 24.0), (61, 20.0), (7, 25.0), (4500, 25.0),
                                   (50, 10.0), (3, 30.0), (1000, 7.5)])
def test_sampling_matches_the_video_processor(n, fps):
    p = video_processor("minicpmv4_6")
    md = VideoMetadata(total_num_frames=n, fps=fps, duration=n / fps)
    for max_frames in (128, 20, 3):
        for stack in (1, 2, 3, 5):
            want = p.sample_frames(md, max_num_frames=max_frames, stack_frames=stack)
            ours = video_sampling.stacked(n, fps, max_frames, stack)
            assert list(ours.main) + list(ours.sub) == [int(i) for i in want], (n, fps, max_frames, stack)


def test_resize_is_torchs_uint8_bicubic():
    rng = np.random.default_rng(0)
    for (h, w, nh, nw) in [(720, 1280, 336, 616), (120, 160, 448, 560), (726, 2566, 168, 560), (1446, 1280, 448, 392),
                           (33, 47, 112, 56), (480, 640, 392, 504), (64, 64, 448, 448), (300, 200, 200, 300)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        t = torch.from_numpy(a).permute(2, 0, 1)[None]
        want = torch.nn.functional.interpolate(t, size=[nh, nw], mode="bicubic", align_corners=False,
                                               antialias=True)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(resize_uint8(a, nw, nh), want, err_msg=f"{w}x{h} -> {nw}x{nh}")


class Reference(MergerReference):
    """The checkpoint's model and processor class, with transformers' real video processor."""

    def __init__(self, ckpt_dir, model_type: str):
        super().__init__(ckpt_dir)
        base = _classes(model_type)[1]  # the checkpoint's processor class

        class Processor(base):
            def check_argument_for_proper_class(self, argument_name, argument):
                if argument_name == "video_processor":  # our torchvision-free subclass of the real class
                    return type(argument)
                return super().check_argument_for_proper_class(argument_name, argument)

        self.video_processor = video_processor(model_type, downsample_mode=self.downsample_mode)
        self.processor = Processor(image_processor=self.processor.image_processor, video_processor=self.video_processor,
                                   tokenizer=self.processor.tokenizer)


CASES = {  # stack_frames, max_num_frames, clip (frames, fps)
    "main-frames": (1, 128, (36, 12)),
    "stacked-3": (3, 128, (36, 12)),
    "long-clip": (2, 2, (40, 10)),
}


MODEL_TYPES = {"minicpmv-4.6": "minicpmv4_6", "minicpmv-4.7": "minicpmv4_7", "minicpm-ocr-1.0": "minicpm_ocr"}


@pytest.fixture(scope="module", params=sorted(MODEL_TYPES))
def loaded(request, store):
    res = store.converted(request.param)
    model_type = MODEL_TYPES[request.param]
    ref = Reference(res.manifest.source, model_type)
    m = MiniCPMV(res.text_path, res.mmproj_path, n_ctx=4096, n_threads=1)
    yield request.param, m, ref
    m.close()


def _pixels(pv: torch.Tensor, sizes: torch.Tensor, patch: int = 14) -> list[np.ndarray]:
    """pixel_values_videos [1, 3, patch, N] (NaViT-packed) back to one HxWx3 array per crop."""
    out, at = [], 0
    for h, w in sizes.tolist():
        n = h * w * patch
        seg = pv[0, :, :, at:at + n].reshape(3, patch, h * w, patch).permute(0, 2, 1, 3)
        img = seg.reshape(3, h, w, patch, patch).permute(0, 1, 3, 2, 4).reshape(3, h * patch, w * patch)
        out.append(img.permute(1, 2, 0).numpy())
        at += n
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_video_matches_transformers(loaded, tmp_path, case):
    family, m, ref = loaded
    stack, max_frames, (n, fps) = CASES[case]
    clip = make_video(tmp_path / "clip.mp4", frames=n, fps=fps, size=(200, 120))
    msgs = [{"role": "user", "content": [{"type": "video", "video": str(clip), "stack_frames": stack,
                                          "max_frames": max_frames}, "What happens in the video?"]}]
    turns = m.expand_videos(normalize(msgs, m.limits))
    units = turns[0].parts[0].frames
    prompt, bitmaps = m.build_prompt(turns, enable_thinking=False)
    assert "<image_id>" not in prompt  # the 4.6 model card's video call: use_image_id=False
    m.reset()
    m.session.prefill(prompt, bitmaps)
    got = m._ctx.logits()

    src = VideoSource(clip)
    video = np.stack(src.frames(range(src.info.n_frames)))
    md = VideoMetadata(total_num_frames=src.info.n_frames, fps=src.info.fps, duration=src.info.duration)
    inputs = ref.processor(text=[processor_text(prompt, m.vision.marker, video_frames=[len(units)])],
                           videos=[video], video_metadata=[md], do_sample_frames=True, stack_frames=stack,
                           max_num_frames=max_frames, max_slice_nums=1, use_image_id=False, return_tensors="pt")

    # pixels: every crop of every unit, after resize and normalisation
    ours = [c.pixels for u in units for c in video_layout(u.rgb, m.session.planner.video_spec).crops]
    want = _pixels(inputs["pixel_values_videos"], inputs["target_sizes_videos"])
    assert len(ours) == len(want), f"{len(ours)} crops vs the processor's {len(want)}"
    for k, (a, b) in enumerate(zip(ours, want)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"crop {k}")

    # token sequence (visual slots aside) and, for 4.7, positions
    planner = m.session.planner
    ids = inputs["input_ids"][0].tolist()
    pad = {ref.processor.image_token_id, ref.processor.video_token_id}
    assert len(planner.last_ids) == len(ids)
    assert all(a == b or b in pad for a, b in zip(planner.last_ids, ids))
    assert sum(b in pad for b in ids) == sum(1 for a in planner.last_ids if a == planner.vocab.image_pad)
    if family == "minicpmv-4.7":
        pos, _ = ref.model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                                target_sizes_videos=inputs["target_sizes_videos"])
        np.testing.assert_array_equal(planner.last_positions, pos[:, 0].numpy())

    want_logits = ref.next_token_logits(inputs)
    assert_logits_match(got, want_logits, f"{family} {case}")

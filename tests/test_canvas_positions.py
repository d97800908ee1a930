"""Our canvas M-RoPE positions equal transformers' MiniCPMV4_7Model.get_rope_index, token for token.

Layouts are built the way MiniCPMV4_7Processor expands placeholders (thumbnail, slice rows joined
by newlines, image ids between images, video frames back to back, text around), with random
grids, both merge factors and several images/videos per prompt, plus the torch linspace rounding
that the thumbnail spread depends on.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from minicpmv_edge.edge_runtime.canvas_positions import Markers, canvas_positions, spread

MK = Markers(image_start=603, image_end=604, slice_start=613, slice_end=614, newline=198)
IMG, VID, ID_OPEN, ID_CLOSE = 620, 621, 615, 616


def _model(mode: str):
    from transformers import MiniCPMV4_7Config
    from transformers.models.minicpmv4_7.modeling_minicpmv4_7 import MiniCPMV4_7Model

    text = {"model_type": "qwen3_5_text", "vocab_size": 700, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "layer_types": ["full_attention"], "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "linear_num_key_heads": 1, "linear_num_value_heads": 1,
            "linear_key_head_dim": 8, "linear_value_head_dim": 8}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1,
              "image_size": 980, "patch_size": 14}
    cfg = MiniCPMV4_7Config(text_config=text, vision_config=vision, downsample_mode=mode, insert_layer_id=0,
                            image_token_id=IMG, video_token_id=VID, image_start_id=MK.image_start,
                            image_end_id=MK.image_end, slice_start_id=MK.slice_start, slice_end_id=MK.slice_end,
                            newline_id=MK.newline)
    return MiniCPMV4_7Model(cfg).eval()


def _frame(rng, merge, kind, ids, mm, grids, sliced):
    tok, m = (IMG, 1) if kind == "image" else (VID, 2)

    def crop():
        gh, gw = rng.randint(1, 5) * merge, rng.randint(1, 5) * merge
        grids[m].append((gh, gw))
        n = (gh // merge) * (gw // merge)
        ids.extend([tok] * n)
        mm.extend([m] * n)

    ids.append(MK.image_start); mm.append(0)
    crop()
    ids.append(MK.image_end); mm.append(0)
    if sliced:
        rows, cols = rng.randint(1, 3), rng.randint(1, 3)
        first_grid = None
        for r in range(rows):
            for c in range(cols):
                ids.append(MK.slice_start); mm.append(0)
                if first_grid is None:
                    crop()
                    first_grid = grids[m][-1]
                else:  # the processor's slices share one size
                    grids[m].append(first_grid)
                    n = (first_grid[0] // merge) * (first_grid[1] // merge)
                    ids.extend([tok] * n); mm.extend([m] * n)
                ids.append(MK.slice_end); mm.append(0)
            if r < rows - 1:
                ids.append(MK.newline); mm.append(0)


def _layout(rng, merge):
    ids, mm, grids = [], [], {1: [], 2: []}

    def text(k):
        for _ in range(k):
            ids.append(rng.choice([5, 17, 99, MK.newline, 300])); mm.append(0)

    text(rng.randint(0, 6))
    n_img = 0
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["image", "image", "video"])
        if kind == "image":
            if rng.random() < 0.7:
                ids.extend([ID_OPEN, 50 + n_img, ID_CLOSE]); mm.extend([0, 0, 0])
            n_img += 1
            _frame(rng, merge, "image", ids, mm, grids, sliced=rng.random() < 0.6)
        else:
            for _ in range(rng.randint(1, 4)):
                _frame(rng, merge, "video", ids, mm, grids, sliced=rng.random() < 0.3)
        text(rng.randint(0, 4))
    return ids, mm, grids


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_positions_equal_transformers(mode):
    model = _model(mode)
    merge = 4 if mode == "16x" else 2
    rng = random.Random(7 if mode == "16x" else 11)
    checked = 0
    for _ in range(60):
        ids, mm, grids = _layout(rng, merge)
        want, delta = model.get_rope_index(
            torch.tensor([ids]), mm_token_type_ids=torch.tensor([mm]),
            target_sizes=torch.tensor(grids[1]) if grids[1] else None,
            target_sizes_videos=torch.tensor(grids[2]) if grids[2] else None)
        got = canvas_positions(ids, mm, grids, merge, MK)
        np.testing.assert_array_equal(got, want[:, 0].numpy(), err_msg=f"ids={ids}")
        assert int(got.max()) + 1 - len(ids) == int(delta[0, 0])  # where generation continues
        checked += 1
    assert checked == 60


def test_spread_matches_torch_linspace_rounding():
    for extent in range(1, 40):
        for n in range(1, extent + 1):
            want = torch.linspace(0, extent - 1, n).round().long().numpy()
            np.testing.assert_array_equal(spread(extent, n), want, err_msg=f"{extent=} {n=}")

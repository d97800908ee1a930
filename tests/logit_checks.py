"""Next-token logits against a reference: close everywhere, and the same choice where the choice is clear.

Random weights over the real vocabularies (151k-248k tokens) give near-flat logits whose top two often lie
a few hundredths apart, so any rounding difference (another SIMD path, AMX, f16 accumulation) may swap
them. The argmax is therefore required to agree where the reference's top-2 margin is at least
CLEAR_MARGIN (the rule tests/test_encoder_choice.py applies to greedy steps); the element-wise bound holds
everywhere."""

from __future__ import annotations

import numpy as np

CLEAR_MARGIN = 0.05  # nats


def assert_logits_match(got, want, what: str = "", rel: float = 0.01) -> float:
    """max |got - want| <= rel * the reference's logit range; argmax equal where the reference's choice is
    clear. Returns the max difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    span = float(want.max() - want.min())
    err = float(np.abs(got - want).max())
    assert err <= rel * span, f"{what}: max |diff| {err:.4g} > {rel:g} of the logit range {span:.4g}"
    second, first = np.partition(want, -2)[-2:]
    margin = float(first - second)
    if margin >= CLEAR_MARGIN:
        assert int(got.argmax()) == int(want.argmax()), \
            f"{what}: argmax {int(got.argmax())} != {int(want.argmax())} although the reference's top-2 margin is {margin:.3g}"
    return err

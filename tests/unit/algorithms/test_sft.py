"""sft_loss: token-mean cross-entropy over the loss mask."""

import mlx.core as mx
import numpy as np

from lazarus.algorithms.sft import sft_loss

from .reference import assert_close, f32, fixed, log_softmax

TARGETS = np.array([[1, 2, 3, 4, 0], [4, 4, 2, 1, 3]])
LOSS_MASK = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])  # prompt tokens first, padding last


def test_sft_loss_is_the_token_mean_cross_entropy_over_the_mask():
    logits = fixed((2, 5, 6), seed=0, scale=2.0)

    loss, num_tokens = sft_loss(f32(logits), mx.array(TARGETS), mx.array(LOSS_MASK))

    nll = -np.take_along_axis(log_softmax(logits), TARGETS[..., None], axis=-1)[..., 0]
    assert_close(loss, (nll * LOSS_MASK).sum() / LOSS_MASK.sum())
    assert num_tokens.item() == LOSS_MASK.sum()


def test_sft_loss_ignores_logits_at_prompt_and_padding_positions():
    logits = fixed((2, 5, 6), seed=1)
    changed = logits.copy()
    changed[LOSS_MASK == 0] += fixed((int((LOSS_MASK == 0).sum()), 6), seed=2, scale=5.0)

    loss, _ = sft_loss(f32(logits), mx.array(TARGETS), mx.array(LOSS_MASK))
    loss_changed, _ = sft_loss(f32(changed), mx.array(TARGETS), mx.array(LOSS_MASK))

    assert loss.item() == loss_changed.item()

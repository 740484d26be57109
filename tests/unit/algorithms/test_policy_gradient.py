"""policy_gradient_loss (GRPO / DAPO / Dr. GRPO / GSPO) against a numpy reference."""


import mlx.core as mx
import numpy as np
import pytest

from lazarus.algorithms.policy_gradient import policy_gradient_loss

from .reference import assert_close, f32, fixed

B, T = 3, 6
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
LOGPROBS = fixed((B, T), seed=0, scale=0.5, shift=-1.5)
BEHAVIOR_LOGPROBS = LOGPROBS + fixed((B, T), seed=1, scale=0.3)  # ratios from ~0.5 to ~2: some clip
REF_LOGPROBS = LOGPROBS + fixed((B, T), seed=2, scale=0.2)
SEQUENCE_ADVANTAGES = np.array([1.0, -0.5, 0.8])
TOKEN_ADVANTAGES = fixed((B, T), seed=3)


def numpy_policy_gradient_loss(logprobs, behavior, advantages, mask, eps_low, eps_high, loss_type,
                               level, max_completion_length, ref, beta):
    advantages = advantages[:, None] if advantages.ndim == 1 else advantages
    log_ratio = logprobs - behavior
    if level == "sequence":
        ratio = np.exp((log_ratio * mask).sum(1) / mask.sum(1))[:, None] * np.ones_like(logprobs)
    else:
        ratio = np.exp(log_ratio)
    per_token = -np.minimum(ratio * advantages, np.clip(ratio, 1 - eps_low, 1 + eps_high) * advantages)
    if beta:
        per_token += beta * (np.exp(ref - logprobs) - (ref - logprobs) - 1)
    if loss_type == "grpo":
        return np.mean([per_token[i][mask[i] == 1].mean() for i in range(len(mask))])
    if loss_type in ("bnpo", "dapo"):
        return per_token[mask == 1].mean()
    return per_token[mask == 1].sum() / (len(mask) * (max_completion_length or mask.shape[1]))


def run(logprobs=LOGPROBS, behavior=BEHAVIOR_LOGPROBS, advantages=SEQUENCE_ADVANTAGES, mask=MASK, **options):
    return policy_gradient_loss(f32(logprobs), f32(behavior), f32(advantages), mx.array(mask), **options)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("advantages", [SEQUENCE_ADVANTAGES, TOKEN_ADVANTAGES], ids=["per_sequence", "per_token"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_numpy_for_every_loss_type_and_level(loss_type, level, advantages, beta):
    options = {"epsilon_low": 0.2, "epsilon_high": 0.28, "loss_type": loss_type,
               "importance_sampling_level": level,
               "max_completion_length": 8 if loss_type == "dr_grpo" else None}

    loss, _ = run(advantages=advantages, ref_logprobs=f32(REF_LOGPROBS), beta=beta, **options)

    expected = numpy_policy_gradient_loss(LOGPROBS, BEHAVIOR_LOGPROBS, advantages, MASK, 0.2, 0.28, loss_type,
                                          level, options["max_completion_length"], REF_LOGPROBS, beta)
    assert_close(loss, expected)


@pytest.mark.parametrize("loss_type, max_completion_length, expected", [
    ("grpo", None, -(1.0 + 2.0) / 2),              # mean over sequences of each token mean
    ("bnpo", None, -(1.0 * 1 + 2.0 * 3) / 4),      # mean over the batch's 4 tokens
    ("dapo", None, -(1.0 * 1 + 2.0 * 3) / 4),
    ("dr_grpo", None, -(1.0 * 1 + 2.0 * 3) / (2 * 4)),  # token sum / (B * T)
    ("dr_grpo", 8, -(1.0 * 1 + 2.0 * 3) / (2 * 8)),     # token sum / (B * max_completion_length)
])
def test_each_loss_type_normalizes_as_its_paper(loss_type, max_completion_length, expected):
    # given ratio 1 everywhere, so each token's loss is -A; one completion of 1 token and one of 3
    logprobs = np.full((2, 4), -1.0)
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 0]])

    loss, _ = run(logprobs, logprobs, np.array([1.0, 2.0]), mask, loss_type=loss_type,
                  max_completion_length=max_completion_length)

    assert loss.item() == pytest.approx(expected, abs=1e-7)


def gradient_wrt_logprobs(logprobs, behavior, advantages, mask, **options):
    def loss_fn(lp):
        return policy_gradient_loss(lp, f32(behavior), f32(advantages), mx.array(mask), **options)[0]
    return np.array(mx.grad(loss_fn)(f32(logprobs)))


RATIOS = np.array([0.5, 0.9, 1.1, 1.25, 1.5])
CLIP_HIGHER = {"epsilon_low": 0.2, "epsilon_high": 0.28}


def test_clip_higher_only_clips_the_upper_side_for_positive_advantages():
    # given ratios below, inside and above [0.8, 1.28], and a positive advantage
    behavior = np.full((1, 5), -1.0)
    logprobs = behavior + np.log(RATIOS)[None]

    gradient = gradient_wrt_logprobs(logprobs, behavior, np.array([1.0]), np.ones((1, 5)), **CLIP_HIGHER)
    _, metrics = run(logprobs, behavior, np.array([1.0]), np.ones((1, 5)), **CLIP_HIGHER)

    # then only the ratio above 1 + eps_high stops getting gradient; 0.5 < 1 - eps_low is not clipped
    assert (gradient[0] != 0).tolist() == [True, True, True, True, False]
    assert metrics["clip_fraction_high"].item() == pytest.approx(1 / 5)
    assert metrics["clip_fraction_low"].item() == 0.0


def test_clip_higher_only_clips_the_lower_side_for_negative_advantages():
    behavior = np.full((1, 5), -1.0)
    logprobs = behavior + np.log(RATIOS)[None]

    gradient = gradient_wrt_logprobs(logprobs, behavior, np.array([-1.0]), np.ones((1, 5)), **CLIP_HIGHER)
    _, metrics = run(logprobs, behavior, np.array([-1.0]), np.ones((1, 5)), **CLIP_HIGHER)

    assert (gradient[0] != 0).tolist() == [False, True, True, True, True]
    assert metrics["clip_fraction_low"].item() == pytest.approx(1 / 5)
    assert metrics["clip_fraction_high"].item() == 0.0
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 5)


def test_a_ratio_of_1_25_is_clipped_by_symmetric_0_2_but_not_by_clip_higher_0_28():
    behavior = np.full((1, 1), -1.0)
    logprobs = behavior + np.log(1.25)

    symmetric = gradient_wrt_logprobs(logprobs, behavior, np.array([1.0]), np.ones((1, 1)))
    higher = gradient_wrt_logprobs(logprobs, behavior, np.array([1.0]), np.ones((1, 1)), **CLIP_HIGHER)

    assert symmetric[0, 0] == 0.0
    assert higher[0, 0] == pytest.approx(-1.25, rel=1e-6)  # d(-ratio * A)/d logprob = -ratio * A


def test_gspo_uses_one_length_normalized_ratio_per_sequence_with_the_gspo_gradient():
    # given sequence 0 with mean log-ratio 0.1 (clipped at eps_high=0.05 for A > 0) and sequence 1 inside
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    behavior = np.full((2, 4), -2.0)
    logprobs = behavior + np.array([[0.3, -0.2, 0.2, 9.0], [0.01, -0.03, 5.0, 5.0]])
    advantages = np.array([1.0, 0.7])
    options = {"epsilon_low": 0.05, "epsilon_high": 0.05, "importance_sampling_level": "sequence"}

    loss, metrics = run(logprobs, behavior, advantages, mask, **options)
    gradient = gradient_wrt_logprobs(logprobs, behavior, advantages, mask, **options)

    s = np.exp([0.1, -0.01])
    assert metrics["ratio_max"].item() == pytest.approx(s[0], rel=1e-6)
    assert_close(metrics["ratio_mean"], (3 * s[0] + 2 * s[1]) / 5)
    assert_close(loss, -(1.05 * 1.0 + s[1] * 0.7) / 2)
    # GSPO: d(-s_i A_i)/d logprob_t = -A_i s_i / |y_i|, averaged over the B sequences; clipped -> 0
    expected = np.zeros((2, 4))
    expected[1, :2] = -0.7 * s[1] / 2 / 2
    assert_close(mx.array(gradient), expected)


def test_the_ratio_is_taken_against_behavior_logprobs_and_the_reference_only_enters_through_beta():
    loss, metrics = run()
    loss_with_ref, metrics_with_ref = run(ref_logprobs=f32(REF_LOGPROBS + 3.0))

    assert loss.item() == loss_with_ref.item()
    assert_close(metrics["ratio_mean"], np.exp(LOGPROBS - BEHAVIOR_LOGPROBS)[MASK == 1].mean())
    assert metrics["kl"].item() == 0.0
    assert metrics_with_ref["kl"].item() > 0.0


def test_kl_metric_is_the_masked_mean_of_the_chosen_estimator():
    for estimator, kl in [("k1", LOGPROBS - REF_LOGPROBS),
                          ("k3", np.exp(REF_LOGPROBS - LOGPROBS) - (REF_LOGPROBS - LOGPROBS) - 1)]:
        _, metrics = run(ref_logprobs=f32(REF_LOGPROBS), beta=0.1, kl_estimator=estimator)

        assert_close(metrics["kl"], kl[MASK == 1].mean())


def test_beta_without_reference_logprobs_is_rejected():
    with pytest.raises(ValueError, match="ref_logprobs"):
        run(beta=0.04)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_gradients_are_finite_and_zero_at_masked_tokens_whatever_padding_holds(level):
    # given padding positions holding -inf / huge logprobs and NaN advantages
    logprobs = np.where(MASK == 1, LOGPROBS, -np.inf)
    behavior = np.where(MASK == 1, BEHAVIOR_LOGPROBS, 1e30)
    ref = np.where(MASK == 1, REF_LOGPROBS, -1e30)
    advantages = np.where(MASK == 1, TOKEN_ADVANTAGES, np.nan)
    options = {"importance_sampling_level": level, "ref_logprobs": f32(ref), "beta": 0.04, "epsilon_high": 0.28}

    loss, metrics = run(logprobs, behavior, advantages, **options)
    gradient = gradient_wrt_logprobs(logprobs, behavior, advantages, MASK, **options)

    assert np.isfinite(loss.item()) and all(np.isfinite(v.item()) for v in metrics.values())
    assert np.isfinite(gradient).all()
    assert (gradient[MASK == 0] == 0).all()
    assert (gradient[MASK == 1] != 0).sum() >= 8


@pytest.mark.parametrize("options", [
    {},
    {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.04, "kl_estimator": "k2"},
    {"loss_type": "dr_grpo", "importance_sampling_level": "sequence", "max_completion_length": 16},
], ids=["grpo", "dapo_kl", "dr_grpo_gspo"])
def test_compiled_loss_and_gradient_equal_eager(options):
    def loss_and_metrics(lp, behavior, advantages, mask, ref):
        return policy_gradient_loss(lp, behavior, advantages, mask, ref_logprobs=ref, **options)

    def loss_only(*args):
        return loss_and_metrics(*args)[0]

    args = (f32(LOGPROBS), f32(BEHAVIOR_LOGPROBS), f32(TOKEN_ADVANTAGES), mx.array(MASK), f32(REF_LOGPROBS))

    eager_loss, eager_metrics = loss_and_metrics(*args)
    compiled_loss, compiled_metrics = mx.compile(loss_and_metrics)(*args)
    eager_gradient = mx.grad(loss_only)(*args)
    compiled_gradient = mx.compile(mx.grad(loss_only))(*args)

    assert_close(compiled_loss, np.array(eager_loss))
    for name, value in eager_metrics.items():
        assert_close(compiled_metrics[name], np.array(value))
    assert_close(compiled_gradient, np.array(eager_gradient))
    assert np.abs(np.array(eager_gradient)).max() > 0


@pytest.mark.parametrize("options, field", [
    ({"loss_type": "ppo"}, "loss_type"),
    ({"importance_sampling_level": "segment"}, "importance_sampling_level"),
    ({"kl_estimator": "k4"}, "kl_estimator"),
    ({"epsilon_low": 1.0}, "epsilon_low"),
    ({"behavior": BEHAVIOR_LOGPROBS[:, :4]}, "behavior_logprobs"),
    ({"mask": MASK[:2]}, "mask"),
    ({"advantages": SEQUENCE_ADVANTAGES[:2]}, "advantages"),
])
def test_bad_arguments_are_rejected_naming_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        run(**options)

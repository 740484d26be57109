"""The PPO value head: per-token values on the policy's last hidden states, for every family and LazyFox."""

import mlx.core as mx
import pytest
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache

from lazarus.models.load import load
from lazarus.models.tiny import ARCHITECTURES, init_model
from lazarus.models.value_head import (
    PolicyWithValue,
    ValueHead,
    ValueHeadError,
    hidden_states,
    load_value_head,
    logits_from_hidden,
    save_value_head,
    values,
)

TOKENS = mx.array([[5, 17, 42, 99, 7, 3], [11, 12, 13, 14, 15, 16]])


@pytest.fixture(scope="module", params=["llama", "lazyfox"])
def policy(request, tmp_path_factory):
    model_dir = init_model(request.param, "micro", tmp_path_factory.mktemp("models") / request.param, seed=0)
    model, _ = load(model_dir)
    return model


def test_values_are_one_scalar_per_token_and_start_near_zero(policy):
    # given a fresh head on a policy
    head = ValueHead(policy.args.hidden_size)
    # when values are computed for a batch
    v = values(policy, head, TOKENS)
    # then there is one float32 value per token, small at initialisation
    assert v.shape == TOKENS.shape and v.dtype == mx.float32
    assert mx.abs(v).max().item() < 1.0


def test_hidden_states_are_the_input_of_the_lm_head(policy):
    # the policy's own logits are its LM head applied to hidden_states: nothing after them is skipped
    hidden = hidden_states(policy, TOKENS)
    assert hidden.shape == (*TOKENS.shape, policy.args.hidden_size)
    assert mx.allclose(logits_from_hidden(policy, hidden), policy(TOKENS), atol=1e-5).item()


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a not in ("llama", "lazyfox")])
def test_hidden_states_and_head_reproduce_the_logits_of_every_family(arch, tmp_path):
    model, _ = load(init_model(arch, "micro", tmp_path / arch, seed=0))
    assert mx.allclose(logits_from_hidden(model, hidden_states(model, TOKENS)), model(TOKENS), atol=1e-4).item()


def test_values_with_a_kv_cache_equal_values_of_the_full_sequence(policy):
    # given values of a whole sequence
    head = ValueHead(policy.args.hidden_size)
    full = values(policy, head, TOKENS)
    # when the same sequence goes through in two chunks with a KV cache (as during a rollout)
    cache = make_prompt_cache(policy)
    first = values(policy, head, TOKENS[:, :4], cache=cache)
    rest = values(policy, head, TOKENS[:, 4:], cache=cache)
    # then each token gets the same value
    assert mx.allclose(mx.concatenate([first, rest], axis=1), full, atol=1e-5).item()


def test_policy_with_value_gives_logits_and_values_in_one_pass(policy):
    critic = PolicyWithValue(policy)
    logits, v = critic(TOKENS)
    assert mx.allclose(logits, policy(TOKENS), atol=1e-5).item()
    assert mx.allclose(v, values(policy, critic.value_head, TOKENS)).item()


def value_loss(critic, tokens, returns):
    _, v = critic(tokens)
    return mx.mean((v - returns) ** 2)


def test_gradient_reaches_only_the_head_when_the_policy_is_frozen(policy):
    # given a policy with a value head, and the policy frozen
    critic = PolicyWithValue(policy)
    returns = mx.ones(TOKENS.shape)
    policy.freeze()
    try:
        # when the value loss is differentiated
        _, grads = nn.value_and_grad(critic, value_loss)(critic, TOKENS, returns)
    finally:
        policy.unfreeze()
    # then only the head's weight and bias have gradients, and they are non-zero
    flat = dict(tree_flatten(grads))
    assert set(flat) == {"value_head.weight", "value_head.bias"}
    assert all(mx.any(g != 0).item() for g in flat.values())


def test_gradient_reaches_the_policy_too_when_it_is_trainable(policy):
    critic = PolicyWithValue(policy)
    _, grads = nn.value_and_grad(critic, value_loss)(critic, TOKENS, mx.ones(TOKENS.shape))
    flat = dict(tree_flatten(grads))
    assert any(k.startswith("policy.") and mx.any(g != 0).item() for k, g in flat.items())


def test_value_head_round_trips_through_a_file(policy, tmp_path):
    # given a trained-looking head
    head = ValueHead(policy.args.hidden_size, init_std=0.5)
    head.bias = mx.array([0.25])
    # when saved and loaded
    loaded = load_value_head(save_value_head(head, tmp_path / "value_head.safetensors"))
    # then it computes the same values
    assert mx.array_equal(values(policy, loaded, TOKENS), values(policy, head, TOKENS)).item()
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temp name, nothing left behind


def test_loading_a_head_of_the_wrong_shape_names_the_file_and_tensor(tmp_path):
    path = tmp_path / "bad.safetensors"
    mx.save_safetensors(str(path), {"weight": mx.zeros((2, 8)), "bias": mx.zeros((1,))})
    with pytest.raises(ValueHeadError, match=r"bad\.safetensors: tensor 'weight'"):
        load_value_head(path)


def test_head_of_another_hidden_size_is_refused(policy):
    with pytest.raises(ValueError, match="hidden_size"):
        PolicyWithValue(policy, ValueHead(policy.args.hidden_size + 1))

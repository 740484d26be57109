"""Experts on disk: save -> load gives the same actions, the registry versions names, bad files are named."""

import json

import mlx.core as mx
import numpy as np
import pytest

from lazarus.errors import LazarusError
from lazarus.experts.config import preset
from lazarus.experts.episodes import run_expert
from lazarus.experts.policy import ExpertPolicy, RolloutPolicy
from lazarus.experts.ppo import policy_spec
from lazarus.experts.registry import (
    ExpertFileError,
    ExpertNotFoundError,
    list_experts,
    load_expert,
    register,
    resolve,
    save_expert,
)


@pytest.fixture
def registry(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    monkeypatch.setenv("LAZARUS_EXPERTS_DIR", str(root))
    return root


def random_expert(env, arch, seed=0):
    mx.random.seed(seed)
    policy = ExpertPolicy(policy_spec(preset(env, arch=arch)))
    mx.eval(policy.parameters())
    return policy


def actions_over_an_episode(policy, obs_seed=0, steps=40):
    """The stored actions and log-probs the numpy twin picks (sampled with a fixed rng) over given inputs."""
    rollout, rng = RolloutPolicy(policy), np.random.default_rng(obs_seed)
    obs = rng.normal(size=(steps, 3, policy.spec.obs_dim)).astype(np.float32)
    state, starts, picked = rollout.initial_state(3), np.ones(3, np.float32), []
    sampler = np.random.default_rng(123)
    for t in range(steps):
        head, _, state = rollout.step(obs[t], starts, state)
        actions, env_actions, logprobs = rollout.act(head, rollout.draw_noise(sampler, 3))
        picked.append((actions, env_actions, logprobs))
        starts = np.zeros(3, np.float32)
    return picked


@pytest.mark.parametrize("env, arch", [("CartPole-v1", "gru"), ("Pendulum-v1", "lstm"), ("Projectile-v0", "mlp")])
def test_save_then_load_gives_the_same_actions(tmp_path, env, arch):
    # given: a random-init expert saved to a directory
    policy = random_expert(env, arch)
    save_expert(policy, tmp_path / "expert", {"eval_return": 1.5})
    # when: it is loaded back
    loaded, meta = load_expert(tmp_path / "expert")
    # then: same spec, same meta, and the same actions and log-probs step by step
    assert loaded.spec == policy.spec and meta == {"eval_return": 1.5}
    for before, after in zip(actions_over_an_episode(policy), actions_over_an_episode(loaded)):
        for x, y in zip(before, after):
            np.testing.assert_array_equal(x, y)


def test_register_adds_versions_and_a_bare_name_resolves_to_the_newest(tmp_path, registry):
    first, second = random_expert("CartPole-v1", "gru", seed=0), random_expert("CartPole-v1", "gru", seed=1)
    save_expert(first, tmp_path / "a", {"eval_return": 100.0})
    save_expert(second, tmp_path / "b", {"eval_return": 500.0})
    # when
    v1, v2 = register(tmp_path / "a", "cartpole"), register(tmp_path / "b", "cartpole")
    # then
    assert (v1.name, v2.name) == ("v1", "v2")
    assert resolve("cartpole") == v2 and resolve("cartpole@v1") == v1
    [row] = list_experts()
    assert row["name"] == "cartpole" and row["versions"] == ["v1", "v2"] and row["eval_return"] == 500.0
    loaded, _ = load_expert("cartpole@v1")
    np.testing.assert_array_equal(np.array(loaded.encoder.weight), np.array(first.encoder.weight))


def test_unknown_names_and_versions_are_lazarus_errors_that_say_what_was_looked_for(tmp_path, registry):
    save_expert(random_expert("CartPole-v1", "gru"), tmp_path / "a")
    register(tmp_path / "a", "cartpole")
    with pytest.raises(ExpertNotFoundError, match="no version 'v7'; it has v1"):
        resolve("cartpole@v7")
    with pytest.raises(ExpertNotFoundError, match="nowhere"):
        load_expert(tmp_path / "nowhere")
    assert issubclass(ExpertNotFoundError, LazarusError)


def test_a_config_that_does_not_match_the_weights_is_refused_naming_the_file(tmp_path):
    save_expert(random_expert("CartPole-v1", "gru"), tmp_path / "e")
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    config["spec"]["hidden_size"] = 32
    (tmp_path / "e" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExpertFileError, match="weights.safetensors"):
        load_expert(tmp_path / "e")


def test_a_non_finite_policy_is_never_saved(tmp_path):
    policy = random_expert("CartPole-v1", "gru")
    policy.update({"value_head": {"bias": mx.array([float("nan")])}})
    with pytest.raises(ExpertFileError, match="value_head.bias"):
        save_expert(policy, tmp_path / "e")
    assert not (tmp_path / "e" / "config.json").exists()


def test_run_expert_runs_one_episode_on_the_given_projectile_task(tmp_path):
    save_expert(random_expert("Projectile-v0", "gru"), tmp_path / "aim")
    result = run_expert(str(tmp_path / "aim"), {"target_distance": 37.0, "wind": -2.0})
    assert result["task"] == {"target_distance": 37.0, "wind": -2.0}
    assert 1 <= result["steps"] <= 3 and len(result["trace"]) == result["steps"]
    outcome = result["outcome"]
    assert set(outcome) == {"launch_angle_deg", "landing_distance", "miss", "hit"}
    assert outcome["miss"] == pytest.approx(outcome["landing_distance"] - 37.0)
    json.dumps(result)  # JSON-ready, as a tool result must be


def test_projectile_tasks_outside_the_schema_are_refused_naming_the_field(tmp_path):
    from lazarus.experts.envs import task_schema
    from lazarus.experts.projectile import ProjectileTaskError

    save_expert(random_expert("Projectile-v0", "gru"), tmp_path / "aim")
    assert task_schema("Projectile-v0")["required"] == ["target_distance", "wind"]
    with pytest.raises(ProjectileTaskError, match="wind=9.0 is outside"):
        run_expert(str(tmp_path / "aim"), {"target_distance": 30.0, "wind": 9.0})
    with pytest.raises(ProjectileTaskError, match="unknown field"):
        run_expert(str(tmp_path / "aim"), {"target": 30.0})

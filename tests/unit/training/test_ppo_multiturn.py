"""PPO on multi-turn episodes: each env step's reward reaches the token that earned it and each episode end
reaches GAE as a done, through the trajectory; checked against a numpy GAE on real rollouts of a micro model."""

import json

import numpy as np
import pytest

from lazarus.runtime.build import build_learner, read_rl_prompts
from lazarus.runtime.coordinator import TaskSource
from lazarus.runtime.local import run_training
from lazarus.runtime.roles import RolloutActor, SharedWeights
from lazarus.training.ppo import episode_layout
from lazarus.training.rl import TrajectoryBatchError, collate

from multiturn_envs import STEP_REWARDS

#: a random-init model's turns end at one of these within a few tokens, so episodes reach their later turns
STOPS = ["e", "a", " ", "o", "i"]
MULTI_TURN = ["lora.enabled=true", "env.name=multiturn_envs:rounds", "env.max_turns=4", "env.max_total_tokens=400",
              f"generation.stop={json.dumps(STOPS)}", "rl.gamma=0.9", "rl.lam=0.8", "training.batch_size=4"]


def numpy_gae(rewards, values, mask, dones, gamma, lam):
    """GAE over each row's valid tokens, restarting (next value and advantage 0) at every done token."""
    advantages = np.zeros_like(rewards)
    for row in range(rewards.shape[0]):
        next_value = next_advantage = 0.0
        for t in reversed(np.flatnonzero(mask[row])):
            if dones[row, t]:
                next_value = next_advantage = 0.0
            next_advantage = rewards[row, t] + gamma * next_value - values[row, t] + gamma * lam * next_advantage
            advantages[row, t] = next_advantage
            next_value = values[row, t]
    return advantages


def numpy_whiten(x, mask):
    selected = x[mask == 1]
    return np.where(mask == 1, (x - selected.mean()) / np.sqrt(selected.var(ddof=1) + 1e-8), 0.0)


def turn_ends(loss_mask):
    """Completion indices of the last model token of each turn (each run of 1s in the loss mask)."""
    mask = np.append(np.asarray(loss_mask), 0)
    return [i for i in range(len(mask) - 1) if mask[i] == 1 and mask[i + 1] == 0]


@pytest.fixture
def multi_turn(make_config):
    """(learner, trajectories): a PPO learner and one batch of its own multi-turn episodes in the Rounds env."""
    cfg = make_config("ppo", *MULTI_TURN)
    learner = build_learner(cfg)
    records, ids = read_rl_prompts(cfg, learner.tokenizer)
    actor = RolloutActor("a0", learner.model, learner.tokenizer, learner.reward_functions,
                         SharedWeights(lambda: learner.policy_version), stop=STOPS)
    actor.sync_weights()
    trajectories = actor.run_task(TaskSource(cfg, records, ids, "test").next_task(4, learner.policy_version))
    return learner, trajectories


def test_env_step_rewards_and_episode_ends_sit_on_the_last_token_of_their_turn(multi_turn):
    learner, trajectories = multi_turn
    width = collate(trajectories, learner.pad_id).mask.shape[1]

    step_rewards, dones = episode_layout(trajectories, width)

    reached_round_two = 0
    for row, t in enumerate(trajectories):
        start, ends = len(t.prompt_ids) - 1, turn_ends(t.loss_mask)
        scored = t.info["turns"] - (t.finish_reason == "length")  # a turn cut by length never reached the env
        expected_rewards, expected_dones = np.zeros(width), np.zeros(width)
        for k in range(scored):
            expected_rewards[start + ends[k]] = STEP_REWARDS[k]
            if k + 1 in (2, 4):
                expected_dones[start + ends[k]] = 1
        assert step_rewards[row].tolist() == pytest.approx(expected_rewards.tolist())
        assert dones[row].tolist() == expected_dones.tolist()
        # the trajectory's reward still holds every step reward (plus the final score)
        assert t.reward == pytest.approx(sum(STEP_REWARDS[:scored]) + t.reward_components["accuracy"])
        reached_round_two += scored > 2
    assert reached_round_two > 0  # some trajectories hold an episode end before their last token


def test_ppo_advantages_on_multi_turn_episodes_match_a_numpy_gae_with_dones(multi_turn):
    # given real multi-turn trajectories, some with an episode end inside the sequence
    learner, trajectories = multi_turn
    batch = collate(trajectories, learner.pad_id)
    _, old_values = learner.both(batch.inputs)

    # when the learner computes its advantages
    advantages, returns = learner.advantages_and_returns(trajectories, batch, old_values, None)

    # then they are numpy's GAE over the token rewards (final score on the last token, step rewards on their
    # turns), restarted at every episode end, whitened over the batch's tokens
    mask, values = np.array(batch.mask), np.array(old_values)
    step_rewards, dones = episode_layout(trajectories, mask.shape[1])
    rewards = step_rewards.astype(np.float64)
    for row, t in enumerate(trajectories):
        rewards[row, np.flatnonzero(mask[row])[-1]] += t.reward_components["accuracy"]
    raw = numpy_gae(rewards, values, mask, dones, 0.9, 0.8)
    assert np.allclose(np.array(advantages), numpy_whiten(raw, mask), atol=1e-4)
    assert np.allclose(np.array(returns), np.where(mask == 1, raw + values, 0.0), atol=1e-4)
    # and the episode ends changed them: without dones the first round's advantages would differ
    no_dones = numpy_gae(rewards, values, mask, np.zeros_like(dones), 0.9, 0.8)
    assert dones[:, :-1].any() and not np.allclose(raw, no_dones, atol=1e-3)


def test_an_episode_end_on_an_env_token_is_an_error_naming_the_group(multi_turn):
    learner, trajectories = multi_turn
    t = next(t for t in trajectories if 0 in t.loss_mask)
    t.info["episode_ends"] = [int(np.flatnonzero(t.loss_mask == 0)[0])]

    with pytest.raises(TrajectoryBatchError, match=rf"group {t.group_id} .*info.episode_ends entry"):
        episode_layout(trajectories, 512)


def test_ppo_trains_on_a_multi_turn_env_end_to_end(make_config, tmp_path):
    cfg = make_config("ppo", *MULTI_TURN, "training.max_steps=2")

    run_training(cfg)

    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [m for m in steps if "value_loss" in m]
    assert len(trained) == 2 and all(np.isfinite(m["loss"]) for m in trained)
    assert all(m["turns_mean"] > 1 for m in trained)

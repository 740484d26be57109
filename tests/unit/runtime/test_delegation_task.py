"""The delegation demo's parts: its reward scores an answer by where the angle lands, and its SFT data holds
delegations whose tool messages are exactly what the expert tool returns in an episode, each paired with a
direct answer."""

import json

import mlx.core as mx
import pytest

from lazarus.config import load_config
from lazarus.env.build import env_factory, env_settings
from lazarus.experts.config import preset
from lazarus.experts.policy import ExpertPolicy
from lazarus.experts.ppo import policy_spec
from lazarus.experts.projectile import launch_angle_for
from lazarus.experts.registry import save_expert
from lazarus.runtime.demo import demo_config_path
from lazarus.runtime.demo_delegation import hits_target, write_delegation_task


def test_an_answer_scores_when_its_angle_lands_within_a_metre_of_the_target():
    # given: a target at 33.3 m with a 2.1 m/s headwind, and the true low angle for it
    angle = launch_angle_for(33.3, -2.1)
    completions = [f"Answer: {angle:.2f}", f"Answer: {angle + 2:.2f}", "I think 12 degrees.",
                   f'<tool_call>{{}}</tool_call>\nAnswer: 3 then Answer: {angle:.2f}']
    # when: the reward scores them
    scores = hits_target(["?"] * 4, completions, target_distance=[33.3] * 4, wind=[-2.1] * 4)
    # then: the right angle hits, 2 degrees off misses, no `Answer:` scores 0, and the last answer counts
    assert scores == [1.0, 0.0, 0.0, 1.0]


def test_delegating_demonstrations_carry_the_tool_message_an_episode_gets(tmp_path):
    # given: a (random-init) projectile expert named in the demo config's env.tools
    mx.random.seed(0)
    expert = save_expert(ExpertPolicy(policy_spec(preset("Projectile-v0", arch="gru"))), tmp_path / "expert")
    cfg = load_config(demo_config_path("delegation"), [f"env.tools=[{{expert: {expert}}}]"])
    # when: the demo writes its data
    write_delegation_task(tmp_path / "data", cfg, seed=3, delegate_share=0.5, n_train=30, n_eval=10)
    sft = [json.loads(line)["messages"] for line in (tmp_path / "data" / "sft_train.jsonl").read_text().splitlines()]
    rl = [json.loads(line) for line in (tmp_path / "data" / "rl_train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (tmp_path / "data" / "rl_eval.jsonl").read_text().splitlines()]
    # then: held-out prompts are unseen, and every delegation's tool message is what the episode's env answers
    assert len(sft) == 30 and len(rl) == 30 and len(held_out) == 10
    assert not {r["prompt"] for r in held_out} & ({m[0]["content"] for m in sft} | {r["prompt"] for r in rl})
    # and they come in pairs (packed into one SFT row), one delegating and one answering directly
    assert all(sorted(map(len, pair)) == [2, 4] for pair in zip(sft[0::2], sft[1::2]))
    delegations = [m for m in sft if len(m) == 4]
    make_env = env_factory(env_settings(cfg.env.model_dump()))
    for user, call, tool, answer in delegations:
        env = make_env()
        env.reset({"prompt": user["content"]})
        observed = env.step(call["content"]).observation.messages[0]["content"]
        assert tool["content"] == observed
        assert answer["content"] == f"Answer: {json.loads(observed)['outcome']['launch_angle_deg']}"
    # and direct answers state the true angle
    for messages in sft:
        if len(messages) == 2:
            row = messages[0]["content"].split(" at ")[1].split(" m with wind ")
            distance, wind = float(row[0]), float(row[1].split(" m/s")[0])
            assert messages[1]["content"] == f"Answer: {launch_angle_for(distance, wind):.1f}"


@pytest.mark.parametrize("tools", ["[calculator]", "[{expert: a}, {expert: b}]"])
def test_the_demo_needs_exactly_one_expert_among_its_tools(tools):
    from lazarus.config import ConfigError
    from lazarus.runtime.demo_delegation import expert_entry

    cfg = load_config(demo_config_path("delegation"), [f"env.tools={tools}"])
    with pytest.raises(ConfigError, match="exactly one"):
        expert_entry(cfg)

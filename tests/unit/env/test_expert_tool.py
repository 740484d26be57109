"""An RNN expert as a tool (the orchestrator): its task schema is the tool's parameters, a call runs the
expert, and a bad task is an error observation and a counted failure, never a crash."""

import json

import mlx.core as mx

from lazarus.config import EnvConfig
from lazarus.env.build import build_tools
from lazarus.env.tool_env import ToolEnv
from lazarus.env.tools.registry import Toolbox
from lazarus.experts.config import preset
from lazarus.experts.envs import task_schema
from lazarus.experts.policy import ExpertPolicy
from lazarus.experts.ppo import policy_spec
from lazarus.experts.registry import save_expert


def projectile_expert(directory):
    mx.random.seed(0)
    policy = ExpertPolicy(policy_spec(preset("Projectile-v0", arch="gru")))
    mx.eval(policy.parameters())
    return save_expert(policy, directory)


def test_an_expert_in_env_tools_is_called_like_any_tool_and_returns_its_episode_outcome(tmp_path):
    # given a GRU projectile expert on disk, named in env.tools beside the calculator
    expert_dir = projectile_expert(tmp_path / "projectile")
    settings = EnvConfig(name="tools", tools=["calculator", {"expert": str(expert_dir)}])
    tools = [t for i, spec in enumerate(settings.tools) for t in build_tools(spec, settings, f"env.tools.{i}")]
    box = Toolbox(tools)
    expert = next(t for t in tools if t.name.startswith("expert_"))
    assert expert.name == "expert_projectile" and expert.parameters == task_schema("Projectile-v0")
    env = ToolEnv(box)
    env.reset({"prompt": "What launch angle hits a target at 37 m with wind -2?"})
    # when the model delegates to it in the Hermes tool-call form
    call = {"name": "expert_projectile", "arguments": {"target_distance": 37, "wind": -2}}
    result = env.step(f"Let me ask the expert.<tool_call>{json.dumps(call)}</tool_call>")
    # then the observation is the outcome of running the expert: the shot it fired
    message = result.observation.messages[0]
    assert message["role"] == "tool" and message["name"] == "expert_projectile"
    outcome = json.loads(message["content"])["outcome"]
    assert {"launch_angle_deg", "landing_distance", "miss", "hit"} <= set(outcome)
    assert result.info["tool_calls"] == 1 and result.info["failures"] == {} and not result.done


def test_a_task_outside_the_experts_schema_is_an_error_observation_and_a_counted_failure(tmp_path):
    expert_dir = projectile_expert(tmp_path / "projectile")
    settings = EnvConfig(name="tools", tools=[{"expert": str(expert_dir)}])
    env = ToolEnv(Toolbox(build_tools(settings.tools[0], settings, "env.tools.0")))
    env.reset({"prompt": "?"})
    call = {"name": "expert_projectile", "arguments": {"target_distance": 500}}
    result = env.step(f"<tool_call>{json.dumps(call)}</tool_call>")
    assert result.observation.messages[0]["content"].startswith("error:")
    assert result.info["failures"] == {"bad_arguments": 1}

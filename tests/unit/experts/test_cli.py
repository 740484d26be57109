"""`lazarus experts` end to end in real subprocesses: a short training run, eval's line, register/list/run,
and one-line errors (exit 2)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LAZARUS = Path(sys.executable).with_name("lazarus")
MEAN_RETURN = re.compile(r"mean return (-?[0-9.]+) over (\d+) episodes")


def experts(*args: str, registry: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LAZARUS_EXPERTS_DIR": str(registry)}
    return subprocess.run([str(LAZARUS), "experts", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GRU expert trained for 10240 CartPole steps (20 updates) through the CLI."""
    root = tmp_path_factory.mktemp("experts")
    result = experts("train", "--env", "CartPole-v1", "--arch", "gru", "--out", str(root / "gru"),
                     "--total-steps", "10240", registry=root / "registry")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_a_short_training_run_writes_an_expert_metrics_and_plots_and_learns(trained):
    root, result = trained
    out = root / "gru"
    assert (out / "config.json").is_file() and (out / "weights.safetensors").is_file()
    assert (out / "last" / "config.json").is_file() and (out / "plots" / "overview.png").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_steps"] for r in records if "policy_loss" in r]
    assert steps == list(range(1024, 10240 + 1, 1024))
    evals = [r["reward_eval_mean"] for r in records if "reward_eval_mean" in r]
    assert evals, records[-1]
    # an untrained argmax policy holds CartPole up for ~10 steps; 20 PPO updates get far past that
    assert max(evals) > 50, evals
    assert "best eval mean return" in result.stdout


def test_eval_prints_the_mean_return_over_the_requested_episodes(trained):
    root, _ = trained
    result = experts("eval", str(root / "gru"), "--episodes", "5", registry=root / "registry")
    assert result.returncode == 0, result.stderr
    match = MEAN_RETURN.search(result.stdout)
    assert match and match.group(2) == "5", result.stdout
    saved = json.loads((root / "gru" / "config.json").read_text())["meta"]["eval_return"]
    assert float(match.group(1)) > 0 and saved > 0


def test_register_then_list_then_eval_by_name(trained):
    root, _ = trained
    registry = root / "registry"
    assert experts("register", str(root / "gru"), "--name", "cartpole", registry=registry).returncode == 0
    listed = experts("list", registry=registry)
    assert re.search(r"^cartpole@v1\s+env=CartPole-v1\s+arch=gru", listed.stdout, re.MULTILINE), listed.stdout
    by_name = experts("eval", "cartpole@v1", "--episodes", "2", registry=registry)
    assert MEAN_RETURN.search(by_name.stdout), by_name.stderr
    ran = experts("run", "cartpole", "--seed", "3", registry=registry)
    result = json.loads(ran.stdout)
    assert result["env"] == "CartPole-v1" and result["return"] == result["steps"] > 0, ran.stdout


def test_bad_arguments_are_one_line_errors_with_exit_2(trained, tmp_path):
    root, _ = trained
    registry = root / "registry"
    for args, words in [
        (("train", "--env", "Nope-v0", "--out", str(tmp_path / "x")), "unknown env 'Nope-v0'"),
        (("train", "--env", "CartPole-v1", "--arch", "rnn", "--out", str(tmp_path / "y")), "--arch"),
        (("train", "--env", "CartPole-v1", "--out", str(root / "gru")), "not empty"),
        (("eval", "no-such-expert"), "no-such-expert"),
        (("run", str(root / "gru"), "--task", "[1]"), "JSON object"),
    ]:
        result = experts(*args, registry=registry)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_config_file_sets_ppo_fields_and_a_misspelt_field_is_named(tmp_path):
    registry = tmp_path / "registry"
    # given: a YAML of PPOConfig fields
    (tmp_path / "small.yaml").write_text(
        "arch: lstm\nnum_envs: 2\nrollout_steps: 64\nchunk_length: 8\ntotal_steps: 256\nstop_at_return: null\n"
    )
    # when: training with it
    result = experts("train", "--env", "Pendulum-v1", "--out", str(tmp_path / "run"),
                     "--config", str(tmp_path / "small.yaml"), registry=registry)
    # then: its fields were used (2 envs x 64 steps per update, 2 updates)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in records if "policy_loss" in r] == [128, 256]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert (saved["num_envs"], saved["arch"], saved["env"], saved["stop_at_return"]) == (2, "lstm", "Pendulum-v1", None)
    # and a misspelt field is a one-line error naming it
    (tmp_path / "bad.yaml").write_text("learning_rat: 0.1\n")
    bad = experts("train", "--env", "Pendulum-v1", "--out", str(tmp_path / "bad"), "--config",
                  str(tmp_path / "bad.yaml"), registry=registry)
    assert bad.returncode == 2 and "learning_rat" in bad.stderr and not (tmp_path / "bad").exists()


def test_training_with_env_worker_processes_writes_the_same_expert_as_one_process(tmp_path):
    # given: the same short CartPole run (2 updates of 8 envs x 128 steps), in one process and with 2 env workers
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"workers{workers}"
        # when: each trains through the CLI
        result = experts("train", "--env", "CartPole-v1", "--arch", "gru", "--out", str(out), "--total-steps", "2048",
                         "--workers", workers, registry=tmp_path / "registry")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[workers] = out
    # then: the worker run recorded its workers, and both wrote the same weights
    assert json.loads((runs["2"] / "train_config.json").read_text())["workers"] == 2
    assert (runs["0"] / "last" / "weights.safetensors").read_bytes() == \
        (runs["2"] / "last" / "weights.safetensors").read_bytes()


def test_an_address_without_the_ray_launcher_is_a_one_line_error(tmp_path):
    result = experts("train", "--env", "CartPole-v1", "--out", str(tmp_path / "x"), "--workers", "2", "--address",
                     "127.0.0.1:6379", registry=tmp_path / "registry")
    assert result.returncode == 2 and "--address" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_launcher_without_workers_is_a_one_line_error(tmp_path):
    for launcher in ("process", "ray"):
        result = experts("train", "--env", "CartPole-v1", "--out", str(tmp_path / "x"), "--launcher", launcher,
                         registry=tmp_path / "registry")
        assert result.returncode == 2 and "workers" in result.stderr and len(result.stderr.strip().splitlines()) == 1

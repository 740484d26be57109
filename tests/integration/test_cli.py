"""The real `lazarus` CLI as a user runs it: subprocesses, real files, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

LAZARUS = str(Path(sys.executable).parent / "lazarus")


def run(*args, check=True, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([LAZARUS, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lazarus {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_init_model_then_infer_streams_a_completion(tmp_path):
    run("init-model", "--arch", "lazyfox", "--size", "micro", "--out", tmp_path / "m")
    out = run("infer", "--model", tmp_path / "m", "--prompt", "What is 2 + 2?", "--chat", "--max-tokens", "8",
              "--temperature", "0.7", "--seed", "1")
    assert out.stdout.strip()


def test_infer_applies_the_adapter(tmp_path, micro_model_dir):
    # given an adapter whose B matrices are non-zero (so it changes the output)
    import mlx.core as mx

    from lazarus.models.load import load
    from lazarus.models.lora import apply_lora, lora_modules, save_adapter

    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=64)
    for _, m in lora_modules(model):
        m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(0))
    save_adapter(model, tmp_path / "adapter")
    # when inferring greedily with and without it
    args = ["infer", "--model", micro_model_dir, "--prompt", "Hello there", "--max-tokens", "12"]
    plain = run(*args).stdout
    adapted = run(*args, "--adapter", tmp_path / "adapter").stdout
    # then the adapter changed the output, exactly as mlx-lm's own loader with --adapter-path does
    import mlx_lm

    theirs, tok = mlx_lm.load(str(micro_model_dir), adapter_path=str(tmp_path / "adapter"))
    expected = mlx_lm.generate(theirs, tok, "Hello there", max_tokens=12)
    assert plain != adapted
    assert adapted.strip() == ("Hello there" + expected).strip()


def test_bad_model_path_is_one_line_exit_2(tmp_path):
    proc = run("infer", "--model", tmp_path / "missing", "--prompt", "x", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


def test_unknown_config_key_names_file_and_key_and_writes_nothing(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"training:\n  run_dir: {tmp_path / 'run'}\n  max_stepz: 3\n")
    proc = run("train", "sft", "--config", config, check=False)
    assert proc.returncode == 2
    assert f"{config}: training.max_stepz: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_wrong_type_override_names_the_key(tmp_path):
    proc = run("train", "grpo", "--set", "optim.learning_rate=fast", check=False)
    assert proc.returncode == 2 and "optim.learning_rate" in proc.stderr


def test_missing_config_file_is_reported(tmp_path):
    proc = run("train", "sft", "--config", tmp_path / "nope.yaml", check=False)
    assert proc.returncode == 2 and "nope.yaml: config file not found" in proc.stderr


def test_bad_dataset_row_names_file_and_line_and_keeps_the_previous_run(tmp_path, micro_model_dir):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "completion": "2"}\n{"prompt": "x", "completion": 5}\n')
    proc = run("train", "sft", "--set", f"model.path={micro_model_dir}", "--set", f"data.train={data}",
               "--set", f"training.run_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert f"{data}:2" in proc.stderr and "completion" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_train_sft_then_grpo_then_eval_and_plot(tmp_path, micro_model_dir):
    run("data", "math", "--out", tmp_path / "math", "--train", "64", "--eval", "16")
    common = ["--set", "training.progress=false", "--set", "training.batch_size=4", "--set", "training.max_steps=3"]
    run("train", "sft", "--config", "configs/sft_math.yaml", "--set", f"model.path={micro_model_dir}",
        "--set", f"data.train={tmp_path / 'math/sft_train.jsonl'}",
        "--set", f"data.eval={tmp_path / 'math/sft_eval.jsonl'}",
        "--set", f"training.run_dir={tmp_path / 'sft'}", *common)
    assert (tmp_path / "sft" / "model" / "config.json").exists()
    out = run("train", "grpo", "--config", "configs/grpo_math.yaml", "--set", f"model.path={tmp_path / 'sft/model'}",
              "--set", f"data.train={tmp_path / 'math/rl_train.jsonl'}",
              "--set", f"data.eval={tmp_path / 'math/rl_eval.jsonl'}",
              "--set", f"training.run_dir={tmp_path / 'grpo'}", "--set", "generation.num_generations=4",
              "--set", "generation.max_new_tokens=8", "--set", "eval.num_prompts=8", *common)
    assert "eval_accuracy" in out.stdout
    records = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    out = run("eval", "--model", tmp_path / "sft" / "model", "--adapter", tmp_path / "grpo" / "adapter",
              "--data", tmp_path / "math" / "rl_eval.jsonl", "--num-prompts", "8", "--max-new-tokens", "8",
              "--show", "2")
    assert "accuracy:" in out.stdout and "over 8 prompts" in out.stdout
    # --show 2: two completions, each with its prompt, extracted and gold answer and reward; progress on stderr
    assert out.stdout.count("--- extracted ") == 2 and "gold " in out.stdout
    assert "eval: 8/8 prompts" in out.stderr
    run("plot", tmp_path / "grpo")
    assert (tmp_path / "grpo" / "plots" / "overview.png").stat().st_size > 1000


def test_config_show_prints_the_reference():
    out = run("config", "show", "grpo").stdout
    assert "rl.epsilon_high" in out and "DAPO" in out


def test_an_actor_whose_learner_never_comes_up_gives_up_in_one_line_after_its_wait():
    # given no learner on the address
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # when an actor waits for it for 2 seconds
    proc = subprocess.run([str(Path(sys.executable).parent / "lazarus-actor"), "--learner", f"127.0.0.1:{port}",
                           "--wait", "2"], capture_output=True, text=True, timeout=120)
    # then it exits 2 with one line naming the learner and what happened, no traceback
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_model_refuses_to_replace_a_non_empty_directory_without_force(tmp_path):
    # given a directory holding the user's files
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    # when init-model is pointed at it without --force
    proc = run("init-model", "--size", "micro", "--out", out, check=False)
    # then it refuses in one line (exit 2) and the files are untouched
    assert proc.returncode == 2 and "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "notes.txt").read_text() == "precious"
    # and with --force it replaces the directory with a model
    run("init-model", "--size", "micro", "--out", out, "--force")
    assert (out / "config.json").exists() and not (out / "notes.txt").exists()


def test_init_model_refuses_to_replace_a_file_without_force(tmp_path):
    out = tmp_path / "model.bin"
    out.write_bytes(b"precious")
    proc = run("init-model", "--size", "micro", "--out", out, check=False)
    assert proc.returncode == 2 and out.read_bytes() == b"precious"


def test_init_model_writes_into_an_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    run("init-model", "--size", "micro", "--out", tmp_path / "empty")
    assert (tmp_path / "empty" / "config.json").exists()


def test_sigterm_unwinds_like_ctrl_c_with_exit_130():
    # given the real CLI entry point running a command that is busy (a 60 s sleep stands in for training)
    import signal
    import textwrap

    script = textwrap.dedent("""
        import sys, time
        from lazarus.cli import main as cli

        @cli.app.command("nap")
        def nap():
            try:
                print("ready", flush=True)
                time.sleep(60)
            finally:
                print("cleaned up", flush=True)

        sys.argv = ["lazarus", "nap"]
        cli.main()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.readline().strip() == "ready"
    # when it gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    # then it unwinds like Ctrl-C: `finally` blocks run, exit 130 (not -15, killed by the signal)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "cleaned up" in out, err


def test_every_resume_failure_is_one_line_exit_2(tmp_path):
    # given a valid small SFT setup (generated data, random-init micro model)
    settings = [f"model.path={tmp_path}/model", "model.init_arch=llama", "model.init_size=micro",
                f"data.train={tmp_path}/data/sft_train.jsonl", "data.generate_math={train: 16, eval: 4}",
                f"training.run_dir={tmp_path}/run", "training.max_steps=1", "training.batch_size=2",
                "training.progress=false"]
    common = [arg for setting in settings for arg in ("--set", setting)]
    half_deleted = tmp_path / "elsewhere" / "checkpoints" / "step_000001"
    half_deleted.mkdir(parents=True)
    (half_deleted / "trainer_state.json").write_text('{"step": 1, "files": {"model.safetensors": 10}}')
    truncated = tmp_path / "old" / "checkpoints" / "step_000001"  # an old-style checkpoint, weights cut short
    truncated.mkdir(parents=True)
    (truncated / "trainer_state.json").write_text('{"step": 1}')
    (truncated / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (truncated / "optimizer.safetensors").write_bytes(b"")
    for resume in (tmp_path / "missing", tmp_path / "elsewhere", half_deleted, truncated):
        # when a run is resumed from something that is not a complete checkpoint
        proc = run("train", "sft", *common, "--resume", resume, check=False)
        # then it is one line naming it, exit 2
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and str(resume) in proc.stderr


def test_second_train_in_the_same_run_dir_is_refused_naming_the_first_which_sigterm_stops_cleanly(tmp_path):
    # given a long SFT run in progress
    import signal
    import time

    settings = [f"model.path={tmp_path}/model", "model.init_arch=llama", "model.init_size=micro",
                f"data.train={tmp_path}/data/sft_train.jsonl", "data.generate_math={train: 64, eval: 4}",
                f"training.run_dir={tmp_path}/run", "training.max_steps=100000", "training.batch_size=2",
                "training.save_every=5", "training.progress=false"]
    args = [LAZARUS, "train", "sft", *[a for s in settings for a in ("--set", s)]]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "run" / "checkpoints" / "latest").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.5)
        # when a second run starts in the same directory
        second = run("train", "sft", *[a for s in settings for a in ("--set", s)], check=False)
        # then it is refused in one line naming the process that holds the directory
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        # and SIGTERM stops the first like Ctrl-C: exit 130, lock released, no temp directories left
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    assert first.returncode == 130
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    from lazarus.training.rundir import lock_run_dir

    lock_run_dir(tmp_path / "run").release()

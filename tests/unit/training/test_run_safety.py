"""A run never loses a good checkpoint or the user's files: non-finite steps stop (or skip) before they reach
the weights, pruning keeps a consistent set, one run per directory, nothing written before a run is known
to start, the final checkpoint precedes the final evaluation, debris of killed runs is cleaned, and a
checkpoint that does not fit the run is refused naming what differs."""

import json
import subprocess
import sys
import textwrap

import mlx.core as mx
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten

from lazarus.algorithms.sft import sft_loss
from lazarus.models.load import load
from lazarus.runtime.local import build_trainer
from lazarus.training.checkpoint import (CheckpointError, NonFiniteCheckpointError, checkpoint_dir,
                                         incomplete_reason, latest_checkpoint, resolve_checkpoint, save_checkpoint)
from lazarus.training.rundir import RunDirError, lock_run_dir, prepare_run_dir
from lazarus.training.sft import SFTTrainer
from lazarus.training.step import NonFiniteStepError, Stepper


def steps_on_disk(run_dir):
    return sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*"))


def all_finite(path):
    return all(mx.all(mx.isfinite(v)).item() for v in mx.load(str(path)).values())


# --- item 2: non-finite loss / gradient ---------------------------------------------------------------


def test_exploding_run_stops_before_a_non_finite_update_and_keeps_the_last_finite_checkpoint(make_config, tmp_path):
    # given a run whose learning rate blows the weights up within a few steps
    cfg = make_config("sft", "optim.optimizer=sgd", "optim.learning_rate=1e18", "optim.max_grad_norm=null",
                      "training.save_every=1", "training.max_steps=12")
    trainer = build_trainer(cfg)
    # when it trains, then it stops with a clear error instead of training on
    with pytest.raises(NonFiniteStepError, match="on_nonfinite"):
        trainer.train()
    # and every checkpoint left (the newest included) holds finite weights
    run_dir = tmp_path / "run"
    assert steps_on_disk(run_dir), "the finite steps before the blow-up were checkpointed"
    for step in steps_on_disk(run_dir):
        assert all_finite(checkpoint_dir(run_dir, step) / "model.safetensors")
    assert latest_checkpoint(run_dir) == checkpoint_dir(run_dir, max(steps_on_disk(run_dir)))
    # and the model in memory is still the last finite one
    assert all(mx.all(mx.isfinite(v)).item() for _, v in tree_flatten(trainer.model.parameters()))


def nan_when_flagged_loss(model, inputs, targets, mask, poison):
    loss, n = sft_loss(model(inputs), targets, mask)
    return loss + poison, {"num_tokens": n}


def batch(poison: float):
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    return ids[:, :-1], ids[:, 1:], mx.ones((1, 7)), mx.array(poison)


def test_skip_mode_drops_a_non_finite_step_and_applies_the_next_finite_one(micro_model_dir):
    # given a stepper in skip mode
    model, _ = load(micro_model_dir)
    stepper = Stepper(model, optim.Adam(learning_rate=1e-2), nan_when_flagged_loss, compile=False,
                      on_nonfinite="skip")
    before = {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    # when one step's loss is NaN
    stepper.accumulate(*batch(float("nan")))
    norm = stepper.apply()
    # then nothing is applied, and it is counted
    after = dict(tree_flatten(model.trainable_parameters()))
    assert norm != norm and stepper.skipped == 1
    assert all(mx.array_equal(before[k], after[k]).item() for k in before)
    # and the next finite step is applied as usual
    stepper.accumulate(*batch(0.0))
    assert stepper.apply() > 0
    changed = dict(tree_flatten(model.trainable_parameters()))
    assert not all(mx.array_equal(before[k], changed[k]).item() for k in before)


def test_skip_mode_stops_after_ten_non_finite_steps_in_a_row(micro_model_dir):
    model, _ = load(micro_model_dir)
    stepper = Stepper(model, optim.SGD(learning_rate=1e-2), nan_when_flagged_loss, compile=False,
                      on_nonfinite="skip")
    for _ in range(9):
        stepper.accumulate(*batch(float("inf")))
        stepper.apply()
    stepper.accumulate(*batch(float("inf")))
    with pytest.raises(NonFiniteStepError, match="10 steps in a row"):
        stepper.apply()


def test_training_on_nonfinite_skip_reaches_the_stepper(make_config):
    trainer = build_trainer(make_config("sft", "training.on_nonfinite=skip"))
    trainer.open()
    try:
        assert trainer.stepper.on_nonfinite == "skip"
    finally:
        trainer.close()


def test_non_finite_weights_are_never_checkpointed(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    model.update({"model": {"norm": {"weight": mx.full(model.model.norm.weight.shape, float("nan"))}}})
    optimizer = optim.SGD(learning_rate=0.1)
    with pytest.raises(NonFiniteCheckpointError, match="model.norm.weight"):
        save_checkpoint(tmp_path, 1, model, optimizer, {})
    assert not (tmp_path / "checkpoints" / "step_000001").exists()


# --- item 3: pruning keeps a consistent set -------------------------------------------------------------


def test_resuming_an_older_checkpoint_into_a_dir_with_newer_ones_keeps_a_consistent_set(make_config, tmp_path):
    # given a run dir B with checkpoints 4, 5, 6 (keep=3) and another run A stopped at step 2
    build_trainer(make_config("sft", "training.save_every=1", "training.max_steps=6", run="b")).train()
    build_trainer(make_config("sft", "training.save_every=1", "training.max_steps=2", run="a")).train()
    assert steps_on_disk(tmp_path / "b") == [4, 5, 6]
    # when B continues from A's step 2 up to step 4
    resumed = make_config("sft", "training.save_every=1", "training.max_steps=4", run="b")
    build_trainer(resumed).train(resume=tmp_path / "a")
    # then B holds this run's newest checkpoints, latest names the newest and it is complete
    assert steps_on_disk(tmp_path / "b") == [3, 4]  # B's old 4, 5, 6 were a superseded future
    latest = latest_checkpoint(tmp_path / "b")
    assert latest == checkpoint_dir(tmp_path / "b", 4) and incomplete_reason(latest) is None
    pointer = json.loads((tmp_path / "b" / "checkpoints" / "latest").read_text())
    assert (tmp_path / "b" / "checkpoints" / pointer["dir"]).is_dir()


# --- item 4: one run per directory -----------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from lazarus.training.rundir import lock_run_dir
    lock_run_dir(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def test_second_run_in_a_locked_directory_is_refused_naming_the_holder(make_config, tmp_path):
    # given another process holding the run directory
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # when a run starts in it, then it is refused, naming the holding process
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            build_trainer(make_config("sft")).train()
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # and once the holder is gone (even by kill -9), the directory can be used
    lock_run_dir(run_dir).release()


def test_lock_is_reentrant_within_a_process_and_released_by_the_last_holder(tmp_path):
    first = lock_run_dir(tmp_path)
    second = lock_run_dir(tmp_path)
    assert second is first
    second.release()
    assert first.held
    first.release()
    assert not first.held


# --- item 5: nothing written before the run is known to start --------------------------------------------


def test_fresh_run_into_a_directory_with_a_previous_run_is_refused_and_changes_nothing(make_config, tmp_path):
    # given a finished run
    cfg = make_config("sft", "training.max_steps=2")
    build_trainer(cfg).train()
    run_dir = tmp_path / "run"
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    # when a fresh run is prepared in it without --resume or --force
    with pytest.raises(RunDirError, match="--resume") as e:
        prepare_run_dir(make_config("sft", "optim.learning_rate=0.01"))
    # then nothing changed, and the message says how to go on
    assert "--force" in str(e.value)
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_force_starts_over_and_resume_continues(make_config, tmp_path):
    build_trainer(make_config("sft", "training.max_steps=2")).train()
    run_dir = tmp_path / "run"
    with prepare_run_dir(make_config("sft"), resume=run_dir):  # continuing it is fine
        assert steps_on_disk(run_dir) == [2]
    (run_dir / "notes.txt").write_text("mine")
    with prepare_run_dir(make_config("sft"), force=True):
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()
    assert (run_dir / "notes.txt").read_text() == "mine"  # only the run's own outputs are removed


def test_refused_resume_leaves_config_yaml_as_it_was(make_config, tmp_path):
    # given a finished SFT run
    build_trainer(make_config("sft", "training.max_steps=2")).train()
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    # when a DPO run tries to resume it
    with pytest.raises(CheckpointError):
        build_trainer(make_config("dpo", "lora.enabled=false")).train(resume=tmp_path / "run")
    # then the config of the run in that directory is unchanged
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml


# --- item 6: final checkpoint before the final evaluation ------------------------------------------------


class FailingEvaluation(SFTTrainer):
    def evaluate(self):
        if self.step == self.cfg.training.max_steps:
            raise RuntimeError("evaluation failed")
        return super().evaluate()


def test_a_failing_final_evaluation_does_not_lose_the_final_checkpoint(make_config, tmp_path):
    trainer = build_trainer(make_config("sft", "training.max_steps=3"))
    failing = FailingEvaluation(trainer.cfg, trainer.model, trainer.tokenizer, trainer.train_examples)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        failing.train()
    assert latest_checkpoint(tmp_path / "run") == checkpoint_dir(tmp_path / "run", 3)


# --- item 7: debris of killed runs, half-deleted checkpoints ---------------------------------------------


def test_stale_temp_and_half_pruned_directories_are_removed_when_a_run_starts(make_config, tmp_path):
    # given a run dir where killed saves and prunes left debris next to a good checkpoint
    build_trainer(make_config("sft", "training.max_steps=2")).train()
    checkpoints = tmp_path / "run" / "checkpoints"
    debris = [checkpoints / ".step_000003.k2j4.tmp", checkpoints / ".step_000001.4242.pruned",
              checkpoints / ".step_000002.old.4242", tmp_path / "run" / ".model.x1.tmp"]
    for d in debris:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
    (checkpoints / ".latest.abc.tmp").write_text("{")
    # when the run is resumed
    build_trainer(make_config("sft", "training.max_steps=3")).train(resume=tmp_path / "run")
    # then the debris is gone and the checkpoints are intact
    assert not any(d.exists() for d in debris) and not (checkpoints / ".latest.abc.tmp").exists()
    assert steps_on_disk(tmp_path / "run") == [2, 3]


PRUNE_UNTIL_SIGTERM = textwrap.dedent("""
    import signal, sys
    from pathlib import Path
    from lazarus.training.checkpoint import remove_checkpoint

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # as the CLI does: SIGTERM unwinds like Ctrl-C
    try:
        remove_checkpoint(Path(sys.argv[1]))
    except KeyboardInterrupt:
        sys.exit(130)
""")


def test_sigterm_in_the_middle_of_pruning_still_finishes_the_delete(tmp_path):
    # given a checkpoint of many files being pruned by a process that turns SIGTERM into KeyboardInterrupt
    step = tmp_path / "checkpoints" / "step_000001"
    for i in range(40):
        (step / f"shard_{i}").mkdir(parents=True)
        for j in range(500):
            (step / f"shard_{i}" / f"{j}.bin").write_bytes(b"x")
    child = subprocess.Popen([sys.executable, "-c", PRUNE_UNTIL_SIGTERM, str(step)])
    # when SIGTERM lands once the checkpoint has left the step_* namespace, while its files are deleted
    while step.exists() and child.poll() is None:
        pass
    child.send_signal(15)
    child.wait(timeout=60)
    # then the interrupt still stops the process, and no hidden half-deleted directory is left behind
    assert child.returncode in (0, 130)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_an_interrupt_between_the_two_renames_of_a_save_puts_the_previous_directory_back(tmp_path, monkeypatch):
    # given a directory written before, being replaced through atomic_dir
    from lazarus.models import io

    target = tmp_path / "model"
    target.mkdir()
    (target / "weights").write_text("previous")
    real_replace, calls = io.os.replace, []

    def replace_then_interrupt(src, dst):  # Ctrl-C arrives right after the previous one is moved aside
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", replace_then_interrupt)
    # when the save is interrupted
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_dir(target) as tmp:
            (tmp / "weights").write_text("new")
    # then the previous directory is back in place and no temp or moved-aside directory is left
    assert (target / "weights").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_half_deleted_or_truncated_checkpoint_is_never_resumed(make_config, tmp_path):
    # given checkpoints 1..3, where 3 lost a file (an old-style interrupted prune) and 2 was truncated
    build_trainer(make_config("sft", "training.save_every=1", "training.max_steps=3")).train()
    run_dir = tmp_path / "run"
    (checkpoint_dir(run_dir, 3) / "optimizer.safetensors").unlink()
    weights = checkpoint_dir(run_dir, 2) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # then resuming the run picks step 1, the newest complete one, and naming 3 or 2 is refused
    assert resolve_checkpoint(run_dir) == checkpoint_dir(run_dir, 1)
    with pytest.raises(CheckpointError, match="missing optimizer.safetensors"):
        resolve_checkpoint(checkpoint_dir(run_dir, 3))
    with pytest.raises(CheckpointError, match="truncated"):
        resolve_checkpoint(checkpoint_dir(run_dir, 2))


# --- item 16: the checkpoint must fit the run ------------------------------------------------------------


def test_resuming_with_another_algorithm_is_refused_naming_it(make_config, tmp_path):
    build_trainer(make_config("sft", "training.max_steps=2")).train()
    with pytest.raises(CheckpointError, match="algorithm is 'sft' in the checkpoint, 'dpo' in this run"):
        build_trainer(make_config("dpo", "lora.enabled=false", run="other")).train(resume=tmp_path / "run")


def test_resuming_into_another_architecture_is_refused_naming_it(make_config, tmp_path, tmp_path_factory):
    from lazarus.models.tiny import init_model

    build_trainer(make_config("sft", "training.max_steps=2")).train()
    qwen = init_model("qwen2", "micro", tmp_path_factory.mktemp("q") / "qwen2-micro", seed=0)
    cfg = make_config("sft", f"model.path={qwen}", run="other")
    with pytest.raises(CheckpointError, match="model architecture is 'llama' in the checkpoint, 'qwen2'"):
        build_trainer(cfg).train(resume=tmp_path / "run")


def test_resuming_into_another_model_size_is_refused_naming_a_tensor(make_config, tmp_path, tiny_model_dir):
    build_trainer(make_config("sft", "training.max_steps=2")).train()
    cfg = make_config("sft", f"model.path={tiny_model_dir}", run="other")
    with pytest.raises(CheckpointError, match="has shape"):
        build_trainer(cfg).train(resume=tmp_path / "run")


def test_changed_learning_rate_on_resume_is_applied_and_said(make_config, tmp_path):
    build_trainer(make_config("sft", "training.max_steps=2", "optim.optimizer=adam")).train()
    trainer = build_trainer(make_config("sft", "training.max_steps=3", "optim.optimizer=adam",
                                        "optim.learning_rate=0.05"))
    with pytest.warns(UserWarning, match=r"optim.learning_rate: 0.001 in the checkpoint -> 0.05 \(applied\)"):
        trainer.train(resume=tmp_path / "run")
    assert trainer.optimizer.learning_rate.item() == pytest.approx(0.05)

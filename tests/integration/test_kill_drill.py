"""Kill drill: `kill -9` at seeded random moments while checkpoints are saved and pruned, 20 times over one
run directory (half of the kills at a random time, half the instant a prune is seen to start: a prune
takes milliseconds, so random times alone rarely land in one). After every kill, resuming finds a complete
checkpoint (never a half-written or half-deleted one), every visible `step_*` is complete, and the next
start cleans what the kill left."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import mlx.optimizers as optim

from lazarus.models.load import load
from lazarus.training.checkpoint import _step_dirs, incomplete_reason, load_checkpoint, resolve_checkpoint
from lazarus.training.rundir import lock_run_dir, remove_stale_temp

KILLS = 20

# Saves a checkpoint after every (real) optimizer step as fast as it can, continuing from the newest
# checkpoint; says "ready" after its first save, so every moment after that is inside a save, a prune, or
# a step between them.
SAVER = textwrap.dedent("""
    import sys
    import lazarus
    import mlx.core as mx, mlx.nn as nn, mlx.optimizers as optim
    from lazarus.models.load import load
    from lazarus.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from lazarus.training.rundir import lock_run_dir, remove_stale_temp

    model_dir, run_dir = sys.argv[1], sys.argv[2]
    lock_run_dir(run_dir)
    remove_stale_temp(run_dir)
    model, _ = load(model_dir)
    optimizer = optim.Adam(learning_rate=1e-3)
    step = 0
    if latest_checkpoint(run_dir) is not None:
        step = load_checkpoint(run_dir, model, optimizer)["step"]
    ids = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    loss_and_grad = nn.value_and_grad(model, lambda m: nn.losses.cross_entropy(m(ids[:, :-1]), ids[:, 1:]).mean())
    resumed_at = step
    while True:
        _, grads = loss_and_grad(model)
        optimizer.update(model, grads)
        step += 1
        save_checkpoint(run_dir, step, model, optimizer, {"data": {"position": step}}, keep=2)
        if step == resumed_at + 1:
            print("ready", resumed_at, flush=True)  # from here on, every moment is in the save/prune loop
""")


def wait_for_a_prune(checkpoints, deadline: float) -> None:
    """Return as soon as a checkpoint is being pruned (renamed to `.step_*.pruned`), or at the deadline."""
    while time.monotonic() < deadline:
        with os.scandir(checkpoints) as entries:
            if any(e.name.endswith(".pruned") for e in entries):
                return


def test_kill_9_during_save_and_prune_never_leaves_a_checkpoint_that_resume_accepts_half_done(
        tiny_model_dir, tmp_path):
    rng = random.Random(14)
    run_dir = tmp_path / "run"
    last_step, debris_seen = 0, []
    for kill in range(KILLS):
        # given a process saving and pruning checkpoints in a loop
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tiny_model_dir), str(run_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = proc.stdout.readline().split()
        assert ready and ready[0] == "ready", proc.stderr.read()
        assert int(ready[1]) >= last_step  # it resumed from the newest complete checkpoint
        # when it is killed -9 at a seeded random moment, or the moment a prune starts
        if kill % 2 == 0:
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            wait_for_a_prune(run_dir / "checkpoints", deadline=time.monotonic() + 20)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        debris_seen += [p.name.rsplit(".", 1)[-1] for p in (run_dir / "checkpoints").iterdir()
                        if p.name.startswith(".step_")]
        # then every visible checkpoint is complete, and resuming finds one and loads it
        visible = _step_dirs(run_dir / "checkpoints")
        assert visible, f"kill {kill}: no checkpoint at all"
        for path in visible:
            assert incomplete_reason(path) is None, f"kill {kill}: {path.name}: {incomplete_reason(path)}"
        resumed = resolve_checkpoint(run_dir)
        model, _ = load(tiny_model_dir)
        state = load_checkpoint(run_dir, model, optim.Adam(learning_rate=1e-3))
        assert state["step"] == int(resumed.name[5:]) >= last_step
        last_step = state["step"]
    # and a new start removes whatever temp and half-pruned directories the kills left
    with lock_run_dir(run_dir):
        remove_stale_temp(run_dir)
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    assert last_step > KILLS  # the drill made progress between kills
    print(f"kill drill: {KILLS} kills, reached step {last_step}, killed mid-save {debris_seen.count('tmp')} "
          f"times, mid-prune {debris_seen.count('pruned')} times")

"""Full-state checkpoints: weights or adapters, optimizer state, RNG state, data position, step, config.

Layout of `run_dir/checkpoints/step_000042/`: `adapters.safetensors` + `adapter_config.json` (LoRA)
or `model.safetensors` (full), `optimizer.safetensors`, `trainer_state.json`. Each checkpoint dir is
written to a temp name and renamed; `run_dir/checkpoints/latest` names the newest complete one, and
is itself replaced atomically. A crash leaves the previous good checkpoint.

What makes resuming safe:
- `trainer_state.json` is written last and lists every file with its size: a checkpoint is *complete*
  when all of them are there at that size. Resume only ever picks a complete one; when `latest` names
  one that is not, the newest complete `step_*` is used instead.
- Pruning renames a checkpoint out of the `step_*` namespace before deleting it, so a kill half-way
  through leaves a hidden `.step_*.pruned` directory (removed at the next start), never a half-deleted
  checkpoint that looks resumable. Checkpoints newer than the one just written belong to a run that was
  resumed from an earlier step (its metrics were truncated the same way) and are pruned too.
- Non-finite weights are never written.
- A fingerprint (algorithm, model type, LoRA or full, every trained tensor's shape) is saved and
  checked on load; what differs is named. Hyperparameters that changed since the checkpoint (learning
  rate, batch size, ...) are applied and reported by `resume_changes`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from lazarus.errors import LazarusError
from lazarus.models.io import atomic_dir, read_json, remove_tree, save_safetensors, write_json
from lazarus.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, has_lora, load_adapter, save_adapter

STATE_FILE = "trainer_state.json"
LATEST = "latest"


PRUNED_SUFFIX = ".pruned"
#: Hyperparameters that may change on resume; each change is applied and reported.
RESUMABLE_CHANGES = ("optim.learning_rate", "optim.schedule", "optim.warmup_steps", "optim.weight_decay",
                     "optim.max_grad_norm", "training.batch_size", "training.grad_accum_steps",
                     "training.max_steps", "training.save_every", "training.eval_every")


class CheckpointError(LazarusError, ValueError):
    """A checkpoint that cannot be resumed from; names the path and the missing piece."""


class NonFiniteCheckpointError(CheckpointError):
    """Weights to be checkpointed hold NaN or Inf; names the tensor. Nothing is written."""


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: optim.Optimizer,
                    state: dict, extra_modules: dict[str, nn.Module] | None = None, keep: int = 3) -> Path:
    """Write the full training state after `step` optimizer steps; keep the newest `keep` checkpoints.

    `state` may hold a `fingerprint` (see `model_fingerprint`), checked when the checkpoint is loaded.
    """
    target = checkpoint_dir(run_dir, step)
    check_finite(dict(tree_flatten(model.trainable_parameters())), f"{target}")
    with atomic_dir(target) as tmp:
        if has_lora(model):
            adapter_tmp = tmp / "adapter"
            save_adapter(model, adapter_tmp)
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                (adapter_tmp / name).rename(tmp / name)
            adapter_tmp.rmdir()
        else:
            save_safetensors(tmp / "model.safetensors", dict(tree_flatten(model.trainable_parameters())))
        for name, module in (extra_modules or {}).items():
            save_safetensors(tmp / f"{name}.safetensors", dict(tree_flatten(module.parameters())))
        save_safetensors(tmp / "optimizer.safetensors", _optimizer_arrays(optimizer))
        files = {f.name: f.stat().st_size for f in tmp.iterdir()}
        # Written last: its presence, with the sizes it lists, is what makes the checkpoint complete.
        write_json(tmp / STATE_FILE, {**state, "step": step, "rng_state": _rng_state(), "files": files})
    write_json(Path(run_dir) / "checkpoints" / LATEST, {"step": step, "dir": target.name})
    _prune(Path(run_dir) / "checkpoints", keep, current=target)
    return target


def check_finite(tensors: dict[str, mx.array], where: str) -> None:
    """Raise `NonFiniteCheckpointError` naming the first tensor holding NaN or Inf."""
    for name, value in tensors.items():
        if mx.issubdtype(value.dtype, mx.floating) and not mx.all(mx.isfinite(value)).item():
            raise NonFiniteCheckpointError(f"{where}: tensor {name} holds NaN or Inf; refusing to write it")


def incomplete_reason(path: str | Path) -> str | None:
    """None when `path` is a complete checkpoint, else what is missing or damaged."""
    path = Path(path)
    if not path.is_dir():
        return "no such checkpoint directory"
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"no {STATE_FILE} (an interrupted save or prune)"
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"{STATE_FILE} has no step"
    files = state.get("files")
    if files is None:  # written before file lists existed: the weight and optimizer files must be there
        files = {name: None for name in ("optimizer.safetensors",)}
        if not ((path / "model.safetensors").exists() or (path / ADAPTER_WEIGHTS).exists()):
            return "no model.safetensors or adapters.safetensors"
    for name, size in files.items():
        try:
            actual = (path / name).stat().st_size
        except FileNotFoundError:
            return f"missing {name}"
        if size is not None and actual != size:
            return f"{name} is {actual} bytes, {size} were written (truncated or damaged)"
    return None


def _step_dirs(checkpoints: Path) -> list[Path]:
    """`step_*` directories, oldest first (by step number, not by name)."""
    dirs = []
    for p in checkpoints.glob("step_*") if checkpoints.is_dir() else []:
        number = p.name.removeprefix("step_")
        if p.is_dir() and number.isdigit():
            dirs.append((int(number), p))
    return [p for _, p in sorted(dirs)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one; None if there is none."""
    checkpoints = Path(run_dir) / "checkpoints"
    try:
        named = checkpoints / json.loads((checkpoints / LATEST).read_text())["dir"]
        if named.parent == checkpoints and incomplete_reason(named) is None:
            return named
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no pointer, or a damaged one: fall back to what is on disk
    for candidate in reversed(_step_dirs(checkpoints)):
        if incomplete_reason(candidate) is None:
            return candidate
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint dir, or a run dir whose latest complete checkpoint is used."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if (path / STATE_FILE).exists() or path.name.startswith("step_"):
        reason = incomplete_reason(path)
        if reason is not None:
            raise CheckpointError(f"{path}: incomplete checkpoint: {reason}")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no complete checkpoint found (expected {STATE_FILE} or "
                              f"checkpoints/step_*)")
    return latest


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: optim.Optimizer,
                    extra_modules: dict[str, nn.Module] | None = None,
                    optimizer_target: nn.Module | None = None, fingerprint: dict | None = None) -> dict:
    """Restore model/adapters, optimizer and RNG state in place; returns the saved trainer state.

    With `fingerprint` (this run's `model_fingerprint`), a checkpoint saved with a different one is refused
    before anything is loaded, naming each difference. The learning rate is not restored: it comes from
    this run's config (and schedule), so a changed `optim.learning_rate` takes effect.
    """
    path = resolve_checkpoint(path)
    state = read_json(path / STATE_FILE)
    if (path / ADAPTER_WEIGHTS).exists():
        if not has_lora(model):
            raise CheckpointError(f"{path}: checkpoint holds LoRA adapters but LoRA is not enabled in the config")
    elif (path / "model.safetensors").exists():
        if has_lora(model):
            raise CheckpointError(f"{path}: checkpoint holds full weights but LoRA is enabled in the config")
    else:
        raise CheckpointError(f"{path}: no model.safetensors or adapters.safetensors")
    if fingerprint is not None and "fingerprint" in state:
        differences = fingerprint_differences(state["fingerprint"], fingerprint)
        if differences:
            raise CheckpointError(f"{path}: checkpoint does not fit this run: {'; '.join(differences)}")
    if (path / ADAPTER_WEIGHTS).exists():
        load_adapter(model, path)
    else:
        weights = _load_arrays(path / "model.safetensors")
        _check_shapes(path / "model.safetensors", weights, dict(tree_flatten(model.parameters())))
        model.load_weights(list(weights.items()), strict=False)
    for name, module in (extra_modules or {}).items():
        weights = _load_arrays(path / f"{name}.safetensors")
        _check_shapes(path / f"{name}.safetensors", weights, dict(tree_flatten(module.parameters())))
        module.load_weights(list(weights.items()))
    opt_file = path / "optimizer.safetensors"
    if not opt_file.exists():
        raise CheckpointError(f"{path}: missing optimizer.safetensors")
    _restore_optimizer(optimizer, optimizer_target or model, _load_arrays(opt_file))
    # MLX's global key cannot be assigned; trainers reseed it from (seed, step) at every step
    # (`Trainer.seed_step`), so the saved `rng_state` is a record and resumed runs replay exactly.
    mx.eval(model.parameters(), optimizer.state)
    return state


def model_fingerprint(model: nn.Module, algorithm: str, extra_modules: dict[str, nn.Module] | None = None) -> dict:
    """What a checkpoint must match to be resumed into this run: algorithm, architecture, trained shapes."""
    trained = {name: list(v.shape) for name, v in tree_flatten(model.trainable_parameters())}
    for module_name, module in (extra_modules or {}).items():
        trained.update({f"{module_name}.{n}": list(v.shape) for n, v in tree_flatten(module.parameters())})
    return {"algorithm": algorithm, "model_type": str(getattr(model, "model_type", type(model).__name__)),
            "lora": has_lora(model), "trained_shapes": trained}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between a checkpoint's fingerprint and this run's (empty when they fit)."""
    differences = []
    for key, label in (("algorithm", "algorithm"), ("model_type", "model architecture"), ("lora", "LoRA")):
        if key in saved and saved[key] != current.get(key):
            differences.append(f"{label} is {saved[key]!r} in the checkpoint, {current.get(key)!r} in this run")
    saved_shapes, shapes = saved.get("trained_shapes"), current.get("trained_shapes", {})
    if saved_shapes is not None and saved.get("lora") == current.get("lora"):
        missing = [n for n in saved_shapes if n not in shapes]
        extra = [n for n in shapes if n not in saved_shapes]
        reshaped = [n for n in saved_shapes if n in shapes and list(saved_shapes[n]) != list(shapes[n])]
        if reshaped:
            n = reshaped[0]
            differences.append(f"tensor {n} has shape {saved_shapes[n]} in the checkpoint, {shapes[n]} in this "
                               f"model ({len(reshaped)} tensors differ: a different model size?)")
        if missing or extra:
            name = (missing or extra)[0]
            where = "only in the checkpoint" if missing else "only in this model"
            differences.append(f"{len(missing) + len(extra)} trained tensors differ, e.g. {name} ({where})")
    return differences


def resume_changes(saved_config: dict | None, current_config: dict) -> list[str]:
    """The `RESUMABLE_CHANGES` whose value differs from the checkpoint's config, as `key: old -> new (applied)`."""
    if not saved_config:
        return []
    notes = []
    for key in RESUMABLE_CHANGES:
        section, field = key.split(".")
        old = saved_config.get(section, {}).get(field)
        new = current_config.get(section, {}).get(field)
        if old is not None and old != new:
            notes.append(f"{key}: {old} in the checkpoint -> {new} (applied)")
    return notes


def _load_arrays(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: unreadable (truncated or damaged?): {e}") from None


def _check_shapes(path: Path, weights: dict[str, mx.array], expected: dict[str, mx.array]) -> None:
    for name, value in weights.items():
        target = expected.get(name)
        if target is None:
            raise CheckpointError(f"{path}: tensor {name} is not a parameter of this model")
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(value.shape)}, this model has "
                                  f"{tuple(target.shape)} (a different model size?)")


def _optimizer_arrays(optimizer: optim.Optimizer) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}


def _restore_optimizer(optimizer: optim.Optimizer, model: nn.Module, arrays: dict[str, mx.array]) -> None:
    optimizer.init(model.trainable_parameters())
    fresh = dict(tree_flatten(optimizer.state))
    unknown = [k for k in arrays if k not in fresh]
    if unknown:
        raise CheckpointError(f"optimizer state {unknown[0]} does not belong to this model's parameters "
                              f"({len(unknown)} entries differ)")
    # The learning rate belongs to this run's config (a schedule recomputes it from the restored step).
    arrays = {k: v for k, v in arrays.items() if k != "learning_rate"}
    optimizer.state = tree_unflatten(list({**fresh, **arrays}.items()))


def _rng_state() -> list[int]:
    key = mx.random.state[0]
    return [int(x) for x in key.tolist()]


def _prune(checkpoints: Path, keep: int, current: Path) -> None:
    """Keep `current` and the `keep - 1` newest complete checkpoints before it; remove the rest.

    Checkpoints after `current` are from a run that was resumed at an earlier step: they go too. A
    checkpoint leaves the `step_*` namespace by one rename before it is deleted.
    """
    dirs = _step_dirs(checkpoints)
    order = {p: i for i, p in enumerate(dirs)}
    position = order.get(current, len(dirs))
    earlier = [p for p in dirs[:position] if incomplete_reason(p) is None]
    if keep <= 0:  # keep every checkpoint of this run
        kept = set(earlier) | {current}
    else:
        kept = set(earlier[-(keep - 1):] if keep > 1 else []) | {current}
    for old in dirs:
        if old not in kept:
            remove_checkpoint(old)


def remove_checkpoint(path: Path) -> None:
    """Rename out of the `step_*` namespace, then delete: a kill leaves a hidden `.pruned` dir, never a
    half-deleted checkpoint."""
    hidden = path.parent / f".{path.name}.{os.getpid()}{PRUNED_SUFFIX}"
    try:
        os.replace(path, hidden)
    except FileNotFoundError:
        return
    finally:
        remove_tree(hidden)


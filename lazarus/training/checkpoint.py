"""Full-state checkpoints: weights or adapters, optimizer state, RNG state, data position, step, config.

Layout of `run_dir/checkpoints/step_000042/`: `adapters.safetensors` + `adapter_config.json` (LoRA)
or `model.safetensors` (full), `optimizer.safetensors`, `trainer_state.json`. Each checkpoint dir is
written to a temp name and renamed; `run_dir/checkpoints/latest` names the newest complete one, and
is itself replaced atomically. A crash leaves the previous good checkpoint.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from lazarus.models.io import atomic_dir, read_json, save_safetensors, write_json
from lazarus.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, has_lora, load_adapter, save_adapter

STATE_FILE = "trainer_state.json"
LATEST = "latest"


class CheckpointError(LazarusError, ValueError):
    """A checkpoint that cannot be resumed from; names the path and the missing piece."""


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module, optimizer: optim.Optimizer,
                    state: dict, extra_modules: dict[str, nn.Module] | None = None, keep: int = 3) -> Path:
    """Write the full training state after `step` optimizer steps; keep the newest `keep` checkpoints."""
    target = checkpoint_dir(run_dir, step)
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
        write_json(tmp / STATE_FILE, {**state, "step": step, "rng_state": _rng_state()})
    write_json(Path(run_dir) / "checkpoints" / LATEST, {"step": step, "dir": target.name})
    _prune(Path(run_dir) / "checkpoints", keep)
    return target


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / read_json(pointer)["dir"]
    return path if path.exists() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir whose latest checkpoint is used."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path}: no checkpoint found (expected {STATE_FILE} or checkpoints/{LATEST})")
    return latest


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: optim.Optimizer,
                    extra_modules: dict[str, nn.Module] | None = None,
                    optimizer_target: nn.Module | None = None) -> dict:
    """Restore model/adapters, optimizer and RNG state in place; returns the saved trainer state."""
    path = resolve_checkpoint(path)
    state = read_json(path / STATE_FILE)
    if (path / ADAPTER_WEIGHTS).exists():
        if not has_lora(model):
            raise CheckpointError(f"{path}: checkpoint holds LoRA adapters but LoRA is not enabled in the config")
        load_adapter(model, path)
    elif (path / "model.safetensors").exists():
        if has_lora(model):
            raise CheckpointError(f"{path}: checkpoint holds full weights but LoRA is enabled in the config")
        model.load_weights(list(mx.load(str(path / "model.safetensors")).items()), strict=False)
    else:
        raise CheckpointError(f"{path}: no model.safetensors or adapters.safetensors")
    for name, module in (extra_modules or {}).items():
        module.load_weights(list(mx.load(str(path / f"{name}.safetensors")).items()))
    opt_file = path / "optimizer.safetensors"
    if not opt_file.exists():
        raise CheckpointError(f"{path}: missing optimizer.safetensors")
    _restore_optimizer(optimizer, optimizer_target or model, mx.load(str(opt_file)))
    # MLX's global key cannot be assigned; trainers reseed it from (seed, step) at every step
    # (`Trainer.seed_step`), so the saved `rng_state` is a record and resumed runs replay exactly.
    mx.eval(model.parameters(), optimizer.state)
    return state


def _optimizer_arrays(optimizer: optim.Optimizer) -> dict[str, mx.array]:
    return {k: v for k, v in tree_flatten(optimizer.state) if isinstance(v, mx.array)}


def _restore_optimizer(optimizer: optim.Optimizer, model: nn.Module, arrays: dict[str, mx.array]) -> None:
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list({**dict(tree_flatten(optimizer.state)), **arrays}.items()))


def _rng_state() -> list[int]:
    key = mx.random.state[0]
    return [int(x) for x in key.tolist()]


def _prune(checkpoints: Path, keep: int) -> None:
    dirs = sorted(p for p in checkpoints.glob("step_*") if p.is_dir())
    for old in dirs[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)

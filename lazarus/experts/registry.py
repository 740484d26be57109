"""Saving, loading and naming experts.

An expert is a directory: `config.json` ({"format": 1, "spec": PolicySpec, "meta": {...}}) and
`weights.safetensors`, each written atomically. A training run's output directory is an expert.

The registry is a root directory (`$LAZARUS_EXPERTS_DIR`, default `~/.cache/lazarus/experts`) holding
`NAME/vN/` copies: `register` adds the next version, `resolve("NAME")` is the newest, `"NAME@v2"` a given
one; anything that is a directory path is taken as an expert directory as it is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten
from pydantic import ValidationError

from lazarus.errors import LazarusError
from lazarus.experts.config import PolicySpec
from lazarus.experts.policy import ExpertPolicy
from lazarus.models.io import atomic_dir, save_safetensors, write_json

FORMAT = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ExpertNotFoundError(LazarusError, FileNotFoundError):
    """No expert directory or registered name matches; the message names what was looked for."""


class ExpertFileError(LazarusError, ValueError):
    """An expert directory whose config or weights are unreadable or do not match; names the file."""


def registry_root() -> Path:
    return Path(os.environ.get("LAZARUS_EXPERTS_DIR", Path.home() / ".cache" / "lazarus" / "experts"))


def save_expert(policy: ExpertPolicy, directory: str | Path, meta: dict | None = None) -> Path:
    """Write `policy` (weights, then config.json last, so a readable config means complete weights)."""
    directory = Path(directory)
    weights = dict(tree_flatten(policy.parameters()))
    for name, value in weights.items():
        if not bool(mx.isfinite(value).all()):
            raise ExpertFileError(f"{directory}: parameter {name} is not finite; refusing to save it")
    save_safetensors(directory / WEIGHTS_FILE, weights)
    write_json(directory / CONFIG_FILE, {"format": FORMAT, "spec": policy.spec.model_dump(), "meta": meta or {}})
    return directory


def load_expert(name_or_dir: str | Path) -> tuple[ExpertPolicy, dict]:
    """(policy, meta) from an expert directory or a registered `NAME[@vN]`."""
    directory = resolve(name_or_dir)
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ExpertFileError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT}")
        spec = PolicySpec(**config["spec"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValidationError) as error:
        raise ExpertFileError(f"{config_path}: not a valid expert config ({error})".replace("\n", " ")) from None
    policy = ExpertPolicy(spec)
    expected = {name: tuple(value.shape) for name, value in tree_flatten(policy.parameters())}
    try:
        weights = mx.load(str(directory / WEIGHTS_FILE))
        found = {name: tuple(value.shape) for name, value in weights.items()}
        if found != expected:
            wrong = sorted(name for name in expected.keys() | found.keys() if found.get(name) != expected.get(name))
            raise ValueError(f"tensors {wrong} do not match the network {config_path.name} describes")
        policy.update(tree_unflatten(list(weights.items())))
    except (OSError, RuntimeError, ValueError) as error:
        raise ExpertFileError(f"{directory / WEIGHTS_FILE}: {error}") from None
    mx.eval(policy.parameters())
    return policy, dict(config.get("meta") or {})


def resolve(name_or_dir: str | Path) -> Path:
    """The expert directory for a path, `NAME` (newest version) or `NAME@vN`."""
    path = Path(name_or_dir)
    if (path / CONFIG_FILE).is_file():
        return path
    name, _, version = str(name_or_dir).partition("@")
    if NAME_PATTERN.match(name):
        versions = list_versions(name)
        if versions:
            if not version:
                return registry_root() / name / versions[-1]
            if version in versions:
                return registry_root() / name / version
            raise ExpertNotFoundError(f"expert {name!r} has no version {version!r}; it has {', '.join(versions)}")
    raise ExpertNotFoundError(
        f"{name_or_dir}: not an expert directory (no {CONFIG_FILE}) nor a registered expert in {registry_root()}"
    )


def list_versions(name: str) -> list[str]:
    """Registered versions of `name`, oldest first (v1, v2, ...)."""
    directory = registry_root() / name
    if not directory.is_dir():
        return []
    versions = [p.name for p in directory.iterdir() if re.fullmatch(r"v\d+", p.name) and (p / CONFIG_FILE).is_file()]
    return sorted(versions, key=lambda v: int(v[1:]))


def list_experts() -> list[dict]:
    """One row per registered expert: name, newest version, versions, env, arch, and its recorded eval return."""
    root, rows = registry_root(), []
    if not root.is_dir():
        return rows
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = list_versions(directory.name)
        if not versions:
            continue
        config = json.loads((directory / versions[-1] / CONFIG_FILE).read_text())
        spec, meta = config.get("spec", {}), config.get("meta", {})
        rows.append({
            "name": directory.name, "version": versions[-1], "versions": versions, "env": spec.get("env"),
            "arch": spec.get("arch"), "eval_return": meta.get("eval_return"), "env_steps": meta.get("env_steps"),
        })
    return rows


def register(source: str | Path, name: str) -> Path:
    """Copy the expert at `source` into the registry as the next version of `name`; returns its directory."""
    if not NAME_PATTERN.match(name):
        raise ExpertFileError(f"expert name {name!r} must match {NAME_PATTERN.pattern}")
    source = resolve(source)
    load_expert(source)  # refuse to register what cannot be loaded
    versions = list_versions(name)
    target = registry_root() / name / f"v{int(versions[-1][1:]) + 1 if versions else 1}"
    with atomic_dir(target) as tmp:
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(source / file, tmp / file)
    return target

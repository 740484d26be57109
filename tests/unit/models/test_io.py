"""Checkpoint files are written to a temp name and renamed: a failure leaves the previous good file."""

import json

import mlx.core as mx
import pytest

from lazarus.models.io import atomic_dir, save_safetensors, write_json


def test_write_json_replaces_atomically_and_failure_keeps_old(tmp_path):
    path = tmp_path / "meta.json"
    write_json(path, {"step": 1})
    with pytest.raises(TypeError):
        write_json(path, {"step": object()})  # not serializable: fails mid-write
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_save_safetensors_round_trips_and_leaves_no_temp(tmp_path):
    save_safetensors(tmp_path / "w.safetensors", {"a": mx.arange(4, dtype=mx.float32)})
    assert mx.array_equal(mx.load(str(tmp_path / "w.safetensors"))["a"], mx.arange(4, dtype=mx.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_atomic_dir_keeps_previous_directory_when_the_writer_crashes(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "weights").write_text("half")
            raise RuntimeError("crash")
    assert (target / "weights").read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

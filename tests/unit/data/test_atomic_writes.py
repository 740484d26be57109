"""Atomic dataset writes: a failure mid-write leaves the previous file and no temp file."""

import json

import pytest

from lazarus.data.io import write_jsonl


def test_write_jsonl_failing_mid_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    # given: a good file
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    # when: the second row cannot be serialized
    with pytest.raises(TypeError):
        write_jsonl(path, [{"a": 2}, {"a": object()}])
    # then
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]

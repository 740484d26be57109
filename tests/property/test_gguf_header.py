"""The GGUF reader on hostile bytes: a crafted header is refused with `GGUFError` before MLX reads the file
(MLX trusts header lengths and crashes the process), and arbitrary corruptions of a valid file give only
`GGUFError` or a clean load, in bounded time."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus.models.gguf import GGUFError, check_gguf_header, read_gguf

LAZARUS = str(Path(sys.executable).parent / "lazarus")


def crafted_34_bytes() -> bytes:
    """Magic, version 3, 0 tensors, 1 metadata entry whose key claims 2^31 bytes, then 2 bytes."""
    return b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**31) + b"ab"


def test_crafted_34_byte_gguf_is_refused_in_one_line_instead_of_crashing(tmp_path):
    # given the 34-byte file from the issue (it segfaulted the process inside MLX)
    path = tmp_path / "crafted.gguf"
    path.write_bytes(crafted_34_bytes())
    assert path.stat().st_size == 34
    # when a user points the CLI at it
    proc = subprocess.run([LAZARUS, "infer", "--model", str(path), "--prompt", "hi"], capture_output=True,
                          text=True, timeout=120, env={**os.environ})
    # then it exits 2 with one line naming the file (not a crash: -11)
    assert proc.returncode == 2, proc.stderr
    assert "crafted.gguf" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("counts, message", [
    (struct.pack("<QQQ", 0, 1, 2**40), "claims"),  # 0 tensors, 1 entry whose key claims 1 TiB
    (struct.pack("<QQ", 0, 2**60), "metadata entries"),  # 2^60 metadata entries
    (struct.pack("<QQ", 2**62, 0), "tensors claimed"),  # 2^62 tensors
])
def test_header_counts_and_lengths_larger_than_the_file_are_refused(tmp_path, counts, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + counts + b"\0" * 64)
    with pytest.raises(GGUFError, match=message):
        check_gguf_header(path)


def test_truncated_tensor_data_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "t.gguf"
    mx.save_gguf(str(path), {"blk.0.attn_q.weight": mx.zeros((64, 64))}, {"general.architecture": "llama"})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GGUFError, match="blk.0.attn_q.weight.*truncated"):
        read_gguf(path)


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "valid.gguf"
    mx.save_gguf(str(path), {"token_embd.weight": mx.ones((32, 8)), "output_norm.weight": mx.ones((8,))},
                 {"general.architecture": "llama", "tokenizer.ggml.tokens": ["a", "bb", "ccc"],
                  "llama.block_count": mx.array(1, mx.uint32), "llama.rope.freq_base": mx.array(1e4)})
    return path.read_bytes()


def mutations(data: bytes):
    """Corruptions a hostile file would use: overwrite bytes, write huge integers anywhere, truncate, append."""
    position = st.integers(0, len(data) - 1)
    return st.one_of(
        st.tuples(st.just("bytes"), position, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("u64"), position, st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 - 1, 255, 0])),
        st.tuples(st.just("u32"), position, st.sampled_from([0, 1, 8, 9, 13, 2**31, 2**32 - 1])),
        st.tuples(st.just("truncate"), position, st.none()),
        st.tuples(st.just("append"), st.just(0), st.binary(max_size=64)),
    )


def mutate(data: bytes, ops) -> bytes:
    out = bytearray(data)
    for kind, at, value in ops:
        if kind == "bytes":
            out[at:at + len(value)] = value
        elif kind == "u64":
            out[at:at + 8] = struct.pack("<Q", value)
        elif kind == "u32":
            out[at:at + 4] = struct.pack("<I", value)
        elif kind == "truncate":
            del out[at:]
        else:
            out += value
        if not out:
            break
    return bytes(out)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_gguf_gives_only_gguf_error_or_a_clean_load(valid_gguf, tmp_path, data):
    # given a valid GGUF corrupted the way a hostile file would be
    ops = data.draw(st.lists(mutations(valid_gguf), min_size=1, max_size=4))
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(mutate(valid_gguf, ops))
    # when it is read, then the only failure is GGUFError (and the process survives to say so)
    try:
        tensors, _ = read_gguf(path)
    except GGUFError:
        return
    mx.eval(list(tensors.values()))


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_after_the_magic_give_only_gguf_error_or_a_clean_load(tmp_path_factory, tail):
    path = tmp_path_factory.mktemp("raw") / "raw.gguf"
    path.write_bytes(b"GGUF" + tail)
    try:
        tensors, _ = read_gguf(path)
    except GGUFError:
        return
    mx.eval(list(tensors.values()))

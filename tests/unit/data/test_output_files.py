"""Every output follows one permission rule (the umask), and a write that fails names the path and the cause
(ENOSPC on a full disk) as one `WriteError`, leaving the previous file in place."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import mlx.core as mx
import pytest

from lazarus.data.io import atomic_writer, write_jsonl
from lazarus.models.io import atomic_dir, save_safetensors, write_json


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_json_safetensors_jsonl_and_directories_all_follow_the_umask(tmp_path, umask):
    # given a process umask
    old = os.umask(umask)
    try:
        # when every kind of output is written
        write_json(tmp_path / "state.json", {"step": 1})
        save_safetensors(tmp_path / "model.safetensors", {"w": mx.ones((2,))})
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        with atomic_writer(tmp_path / "raw.bin", "wb") as f:
            f.write(b"x")
        with atomic_dir(tmp_path / "checkpoint") as d:
            write_json(d / "trainer_state.json", {})
    finally:
        os.umask(old)
    # then files are 0666 and directories 0777, less the umask: the same rule for all
    for name in ("state.json", "model.safetensors", "rows.jsonl", "raw.bin", "checkpoint/trainer_state.json"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "checkpoint") == 0o777 & ~umask


FULL_DISK = textwrap.dedent("""
    import sys
    import lazarus, mlx.core as mx
    from lazarus.data.io import WriteError
    from lazarus.models.io import save_safetensors, write_json
    target = sys.argv[1]
    write_json(target + "/state.json", {"ok": 1})
    for write in (lambda: write_json(target + "/state.json", {"a": "x" * 400_000}),
                  lambda: save_safetensors(target + "/model.safetensors", {"w": mx.ones((1_000_000,))})):
        try:
            write()
            print("no error")
        except WriteError as e:
            print("WriteError:", e)
    print("kept:", open(target + "/state.json").read().strip())
""")


def test_a_full_disk_is_reported_naming_the_path_and_enospc(tmp_path):
    # given a 256 KiB filesystem (a tmpfs in a private mount namespace)
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = f"mount -t tmpfs -o size=256k tmpfs {mount} && exec {sys.executable} -c \"$0\" {mount}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, FULL_DISK], capture_output=True, text=True,
                          timeout=120)
    if "mount" in proc.stderr and proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    # when JSON and safetensors outputs do not fit, then each error names the file and ENOSPC
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert any("state.json: cannot write" in line and "ENOSPC" in line for line in lines), lines
    assert any("model.safetensors: cannot write" in line and "ENOSPC" in line for line in lines), lines
    # and the previous file is intact
    assert '"ok": 1' in proc.stdout

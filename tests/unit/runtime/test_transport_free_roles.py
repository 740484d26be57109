"""DESIGN §2: the coordinator and the roles know nothing of their transport. They read an `ExperienceHub` and a
weight source; gRPC (and Ray) come in only with the launchers that use them."""

from __future__ import annotations

import subprocess
import sys

LOADED = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
          "print(' '.join(t for t in ('grpc', 'ray') if t in sys.modules))")


def test_the_coordinator_roles_and_local_launcher_load_neither_grpc_nor_ray():
    # given a fresh interpreter
    # when it imports the coordinator, the roles and the one-process launcher
    modules = ["lazarus.runtime.coordinator", "lazarus.runtime.roles", "lazarus.runtime.local",
               "lazarus.distributed.hub"]
    done = subprocess.run([sys.executable, "-c", LOADED, *modules], capture_output=True, text=True, timeout=120)
    # then neither transport's library is loaded
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_the_coordinator_loads_no_module_of_the_distributed_package():
    # given a fresh interpreter
    # when it imports the coordinator alone
    code = ("import sys, lazarus.runtime.coordinator; "
            "print(' '.join(m for m in sys.modules if m.startswith('lazarus.distributed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # then nothing of the transport package came with it: it reads the experience queue through a protocol
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_the_grpc_transport_does_load_grpc():
    # given a fresh interpreter (the check above could pass by never detecting anything)
    # when it imports the gRPC Experience service
    done = subprocess.run([sys.executable, "-c", LOADED, "lazarus.distributed.experience"], capture_output=True,
                          text=True, timeout=120)
    # then gRPC is loaded
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["grpc"]

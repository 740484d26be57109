"""The Ray launcher's pieces that need no Ray instance: the missing-Ray message, addresses, resources, --address."""

from __future__ import annotations

import os
import subprocess
import sys

from lazarus.config import load_config_dict
from lazarus.runtime.ray_launcher import actor_options, advertised_address, local_num_cpus, worker_env

HIDE_RAY = "import sys; sys.modules['ray'] = None; sys.argv = sys.argv[1:]; from lazarus.cli.main import main; main()"


def config(**runtime):
    return load_config_dict({"algorithm": "grpo", "model": {"path": "m"}, "runtime": runtime})


def test_launcher_ray_without_ray_installed_says_how_to_install_it_in_one_line(tmp_path):
    # given an interpreter where `import ray` fails
    command = [sys.executable, "-c", HIDE_RAY, "lazarus", "train", "grpo", "--launcher", "ray",
               "--set", f"model.path={tmp_path / 'm'}", "--set", "model.init_arch=llama",
               "--set", "model.init_size=micro", "--set", f"training.run_dir={tmp_path / 'run'}"]
    # when `lazarus train grpo --launcher ray` runs
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    # then it exits 2 with one line naming the extra to install
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install lazarus[ray]" in lines[0], out.stderr


def test_a_learner_listening_on_all_interfaces_is_advertised_at_its_node_ip():
    assert advertised_address("0.0.0.0", 50051, "192.168.1.10") == "192.168.1.10:50051"
    assert advertised_address("127.0.0.1", 4000, "192.168.1.10") == "127.0.0.1:4000"
    assert advertised_address("::", 7, "fe80::1") == "[fe80::1]:7"


def test_actor_resources_map_to_ray_options_with_custom_resources_apart():
    cfg = config(ray={"actor_resources": {"num_cpus": 2, "num_gpus": 0, "mac": 1}})
    assert actor_options(cfg) == {"num_cpus": 2, "num_gpus": 0, "resources": {"mac": 1}}
    assert actor_options(config()) == {"num_cpus": 1.0}


def test_a_local_instance_has_cpus_for_the_learner_and_every_actor():
    assert local_num_cpus(config(actors=8, ray={"actor_resources": {"num_cpus": 2}})) >= 17


def test_ray_workers_get_the_openblas_thread_count_even_though_ray_sets_omp_to_one():
    env = worker_env()
    assert int(env["OPENBLAS_NUM_THREADS"]) >= 1
    from lazarus.platform import preload_env

    assert preload_env().items() <= env.items()


def test_the_address_flag_sets_runtime_ray_address_and_keeps_the_other_ray_fields():
    from lazarus.cli.train import apply_launcher

    cfg = apply_launcher(config(ray={"learner_resource": "head"}), "ray", 3, "auto")
    assert (cfg.runtime.launcher, cfg.runtime.actors) == ("ray", 3)
    assert cfg.runtime.ray.address == "auto" and cfg.runtime.ray.learner_resource == "head"


def test_ray_workers_idle_blas_threads_sleep_only_when_workers_compute_at_the_same_time(monkeypatch):
    from lazarus.platform import BLAS_SLEEP_TIMEOUT, BLAS_SPIN_TIMEOUT

    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    assert worker_env(overlap=True)["OPENBLAS_THREAD_TIMEOUT"] == BLAS_SLEEP_TIMEOUT
    assert worker_env(overlap=False)["OPENBLAS_THREAD_TIMEOUT"] == BLAS_SPIN_TIMEOUT
    # a timeout the user set is theirs
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "12")
    assert worker_env(overlap=True)["OPENBLAS_THREAD_TIMEOUT"] == "12"

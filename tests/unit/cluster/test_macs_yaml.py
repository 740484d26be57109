"""cluster/macs.yaml is a config `ray up` accepts: Ray's own validator, run offline as `ray up` runs it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ray_util = pytest.importorskip("ray.autoscaler._private.util")
jsonschema = pytest.importorskip("jsonschema")

MACS = Path(__file__).resolve().parents[3] / "cluster" / "macs.yaml"


def load() -> dict:
    return yaml.safe_load(MACS.read_text())


def test_macs_yaml_passes_rays_validator_after_prepare_config():
    # given the shipped cluster config
    raw = load()
    # when it is prepared and validated as `ray up` does
    prepared = ray_util.prepare_config(copy.deepcopy(raw))
    ray_util.validate_config(prepared)
    # then it is an on-prem cluster of the listed Macs with one worker per worker IP
    assert raw["provider"]["type"] == "local"
    node_type = prepared["available_node_types"][prepared["head_node_type"]]
    assert node_type["max_workers"] == len(raw["provider"]["worker_ips"])


def test_macs_yaml_opts_into_macos_multi_node_ray_and_puts_resources_on_the_start_lines():
    # given the start commands of the head and of the workers
    raw = load()
    head = " ".join(raw["head_start_ray_commands"])
    workers = " ".join(raw["worker_start_ray_commands"])
    # then both export the macOS opt-in and the shared auth token, and pass the node IP and custom resources
    for line in (head, workers):
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1" in line
        assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN_PATH=" in line
        assert "--node-ip-address=" in line and "--resources=" in line
    assert '"learner": 1' in head and '"learner"' not in workers
    # and the token file reaches every node, and the setup installs lazarus with the ray extra into a venv
    token_path = head.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0].rstrip(";")
    assert token_path in raw["file_mounts"]
    setup = " ".join(raw["setup_commands"])
    assert "-m venv" in setup and "[ray]" in setup


def test_a_node_type_section_is_rejected_as_ray_up_rejects_it_for_the_local_provider():
    # given the config with a node-type section added (the local provider takes none)
    broken = load()
    broken["available_node_types"] = {"mac": {"node_config": {}, "resources": {"mac": 1}}}
    # when it is prepared, then Ray refuses it, naming the field
    click = pytest.importorskip("click")
    with pytest.raises(click.ClickException, match="available_node_types"):
        ray_util.prepare_config(broken)

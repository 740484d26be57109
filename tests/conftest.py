"""Shared fixtures: tiny real models written to temp dirs (session-scoped, built once)."""

import os

import lazarus  # noqa: F401  (loads OpenBLAS before mlx.core)
import pytest

REDUCED = os.environ.get("LAZARUS_REDUCED", "1" if os.environ.get("CI") else "0") == "1"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init ~1M-parameter llama with the project's tokenizer (HF-format directory)."""
    from lazarus.models.tiny import init_model

    return init_model("llama", "tiny", tmp_path_factory.mktemp("models") / "llama-tiny", seed=0)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    """A smaller random-init llama for tests that only need *a* model."""
    from lazarus.models.tiny import init_model

    return init_model("llama", "micro", tmp_path_factory.mktemp("models") / "llama-micro", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) loaded from `tiny_model_dir`."""
    from lazarus.models.load import load

    return load(tiny_model_dir)

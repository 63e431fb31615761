"""Test-wide settings: CPU only, fast compiles, shared paths."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

# Tests check numbers, not speed: skipping most XLA optimizations cuts compile time a lot.
jax.config.update("jax_disable_most_optimizations", True)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES

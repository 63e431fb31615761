"""Test-wide settings: CPU only, fast compiles (also in the CLI / launcher subprocesses the tests start),
compiled programs shared between tests, shared paths."""
import atexit
import importlib.util
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests check numbers, not speed: skipping most XLA optimizations cuts compile time a lot. Set in the
# environment, not only in jax.config, so subprocesses (CLI, launcher, GPU-check script) inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
# Compiles dominate the suite (e.g. ~75 % of an experiment smoke), and many tests and studies compile the
# same program: a persistent compilation cache for this run (and its subprocesses) compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="gipip_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import pytest  # noqa: E402

# ...and in this process even if jax was imported before this file (the environment is read at import).
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="module")
def folder(fixtures_dir, tmp_path_factory):
    """CLI overrides for the tiny real-image fixture, with a data cache of the test module's own."""
    cache = tmp_path_factory.mktemp("cache")
    return [f"--set=data.name=folder:{fixtures_dir / 'tiny_folder'}", f"--set=data.cache_dir={cache}"]


@pytest.fixture(scope="session")
def driver():
    """Loads an experiments/ driver by name (scripts, not a package): driver("defenses").run(...)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load

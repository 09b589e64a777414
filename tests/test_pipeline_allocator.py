"""The memory allocator preloaded into the model actors (``cluster.allocator``)."""
import os

import pytest
import ray

from pipeline.actors import allocator_library, worker_env
from pipeline.config import ConfigError, load_config


def _mapped_libraries() -> str:
    with open("/proc/self/maps") as maps:
        return maps.read()


def test_auto_picks_tcmalloc_when_installed_and_system_picks_nothing():
    lib = allocator_library("auto")
    assert lib is not None and lib.endswith("libtcmalloc_minimal.so.4") and os.path.exists(lib)  # make setup installs it
    assert allocator_library("system") is None
    assert "LD_PRELOAD" not in worker_env(2, "system")
    assert worker_env(2, "auto")["LD_PRELOAD"].startswith(lib)


def test_an_allocator_that_is_not_installed_is_a_one_line_config_error(monkeypatch):
    import pipeline.actors as actors

    monkeypatch.setattr(actors, "_LIBRARY_DIRS", ("/nonexistent",))
    with pytest.raises(ConfigError, match=r"cluster.allocator='jemalloc': libjemalloc.so.2 not found \(apt-get install"):
        load_config(None, ["cluster.allocator=jemalloc"])
    assert allocator_library("auto") is None  # auto falls back to the system allocator


@pytest.mark.slow
def test_an_actor_started_with_the_allocator_has_it_mapped(ray_repo):
    probe = ray.remote(_mapped_libraries)
    here = {"PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.path.dirname(os.path.dirname(__file__))])}
    preloaded = ray.get(probe.options(runtime_env={"env_vars": {**worker_env(1, "auto"), **here}}).remote())
    plain = ray.get(probe.options(runtime_env={"env_vars": {**worker_env(1, "system"), **here}}).remote())
    assert "libtcmalloc_minimal" in preloaded
    assert "libtcmalloc_minimal" not in plain

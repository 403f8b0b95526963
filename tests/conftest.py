"""Shared fixtures. Ray starts once per test session (each start costs seconds on these machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests read real data from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """An embedded Ray for the whole test session (4 logical CPUs on 2 cores, no dashboard)."""
    import ray

    from smallsec_ray.runtime import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()

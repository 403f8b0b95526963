"""Requests checked against what the Ray offers before a stage asks for them, and the watch that ends a stage
waiting for resources that never come (placement.py), on the embedded Ray of the test session. The same on an
autoscaling cluster: tests/test_autoscaling.py."""

import subprocess
import sys
import time

import pytest

from smallsec_ray.errors import StageError
from smallsec_ray.placement import check_request, cluster_offer, fits_in


def test_fits_in_counts_whole_bundles_per_node():
    assert fits_in({"CPU": 0.5}, {"CPU": 2}) == 4
    assert fits_in({"CPU": 1, "teacher_gpu": 1}, {"CPU": 8, "teacher_gpu": 1}) == 1
    assert fits_in({"CPU": 1, "GPU": 1}, {"CPU": 8}) == 0


def test_the_embedded_ray_offers_this_machine_only(ray_local):
    offers, complete = cluster_offer()
    assert complete and [o.name for o in offers] == ["this machine"] and offers[0].resources["CPU"] == 4


def test_gpus_this_machine_lacks_fail_in_one_line_naming_the_key(ray_local):
    with pytest.raises(StageError) as err:
        check_request("training.scaling", "worker", {"CPU": 0.5, "GPU": 1}, 2)
    assert str(err.value) == (
        "training.scaling: each worker asks for {CPU: 0.5, GPU: 1}; this machine offers no GPU (this machine: CPU 4); "
        "ask training.scaling for what the nodes offer, or submit the job to a cluster that offers it")
    with pytest.raises(StageError, match=r"labeling: each teacher replica asks for \{CPU: 1, teacher_gpu: 1\}; "
                                         r"this machine offers no teacher_gpu"):
        check_request("labeling", "teacher replica", {"CPU": 1, "teacher_gpu": 1}, 1)
    with pytest.raises(StageError, match="3 workers must run at once and this machine holds at most 2"):
        check_request("training.scaling", "worker", {"CPU": 2}, 3)
    check_request("training.scaling", "worker", {"CPU": 2}, 2)  # fits: no error


WAIT_FOREVER = """
import time, ray
from smallsec_ray.placement import StageWatch
from smallsec_ray.runtime import init_ray
init_ray(num_cpus=2)
never = ray.remote(num_cpus=0, resources={"absent_resource": 1})(lambda: None)
with StageWatch("label", timeout_s=3) as watch:
    ref = never.remote()
    try:
        time.sleep(120)
        print("not stopped")
    except KeyboardInterrupt:
        print("stopped:", watch.expired)
"""


def test_a_stage_waiting_for_resources_that_never_come_is_stopped_after_its_timeout(tmp_path):
    # An embedded Ray of its own: the watch times out only while nothing of the cluster's runs, and the test
    # session's Ray holds what earlier tests left.
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WAIT_FOREVER], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith(("stopped", "not stopped"))]
    assert line.startswith("stopped: label: waited "), line
    assert "with nothing running on the cluster, for resources no node has free" in line
    assert "resources.scale_up_timeout: 3 s" in line
    assert time.monotonic() - started < 100

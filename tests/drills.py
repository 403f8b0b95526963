"""Fault drills for the training loop, installed by the tests as step callbacks (trainer.StepCallback): the loop
itself knows nothing about them. Ray pickles them by value (this module registers itself), so the workers of a
multi-node test cluster need no copy of the tests folder."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.cloudpickle
import ray.train
import torch

from smallsec_ray.training.trainer import ROW_KEYS, Progress

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAIT_S = 5.0  # Ray Train collects a report when it polls its workers: give the last one time to land
HANG_S = 120.0  # a drill waiting for its node to be taken away gives up (and exits) after this


@dataclass
class FailOnce:
    """The last rank dies at global step `step`, once (the marker file remembers it), so that a test watches the
    run restart from its last checkpoint. With `hang` it stops instead and waits for the test to take its node
    away (node loss); the marker (JSON) names the node."""

    step: int
    marker: str
    hang: bool = False

    def __call__(self, progress: Progress, resumed_at_step: int, batch: dict[str, torch.Tensor]) -> None:
        context = ray.train.get_context()
        marker = Path(self.marker)
        if progress.global_step != self.step or context.get_world_rank() != context.get_world_size() - 1:
            return
        if marker.exists():
            return
        # A worker that dies sooner after a report can take that checkpoint with it; a crash later in a long
        # epoch would not.
        time.sleep(WAIT_S)
        marker.write_text(json.dumps({"rank": context.get_world_rank(), "step": self.step,
                                      "node": ray.get_runtime_context().get_node_id()}))
        if self.hang:
            time.sleep(HANG_S)
        os._exit(1)


@dataclass
class Trace:
    """Each rank appends the keys of the rows every step trained on to rank-R.jsonl in `folder`, so that a test
    checks that each row was trained on once per epoch."""

    folder: str

    def __call__(self, progress: Progress, resumed_at_step: int, batch: dict[str, torch.Tensor]) -> None:
        if ROW_KEYS not in batch:
            return
        line = {"epoch": progress.epoch, "step": progress.global_step, "resumed_at_step": resumed_at_step,
                "keys": batch[ROW_KEYS].cpu().tolist()}
        rank = ray.train.get_context().get_world_rank()
        with open(Path(self.folder) / f"rank-{rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

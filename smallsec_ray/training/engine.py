"""The one place that knows DeepSpeed from DDP: both give the train loop the same few calls.

    engine = build_engine(model, fit, total_steps)        # inside a Ray Train worker
    logits = engine(*inputs); engine.backward(loss); engine.step()
    engine.save(folder) / engine.load(folder)               # full training state, every rank calls
    engine.full_state_dict(dtype)                           # weights on rank 0 (None elsewhere)

Both use AdamW with the learning-rate schedule of the spec (warmup, then constant or a decay to 0 at
the last step), stepped once per optimizer step and saved with the checkpoint. Without offload it is
torch's AdamW: DeepSpeed's fused and CPU Adam compile for ~50 s on first use, and a client optimizer
runs under every ZeRO stage. ZeRO-Offload needs DeepSpeed's CPU Adam, so offload takes that one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from smallsec_ray.spec import FitSpec

GRAD_CLIP = 1.0
DS_TAG = "deepspeed"  # sub-folder of a checkpoint holding DeepSpeed's files
DDP_STATE = "ddp_state.pt"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_engine(model: nn.Module, fit: FitSpec, total_steps: int) -> DeepSpeedEngine | DDPEngine:
    """Wraps `model` for the strategy of `fit.scaling`; call inside a Ray Train worker."""
    if fit.scaling.strategy == "deepspeed":
        return DeepSpeedEngine(model, fit, total_steps)
    return DDPEngine(model, fit, total_steps)


def lr_factor(fit: FitSpec, total_steps: int) -> Callable[[int], float]:
    """The learning rate at a step as a share of the peak: a linear warmup over `fit.warmup` of the
    steps, then constant, or a linear or cosine decay that reaches 0 at the last step."""
    warmup = int(fit.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if fit.schedule == "constant":
            return 1.0
        done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 1.0 - done if fit.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


def _on_cpu(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().clone() for k, v in state.items()}


def deepspeed_config(fit: FitSpec, world_size: int) -> dict[str, Any]:
    scaling = fit.scaling
    zero: dict[str, Any] = {"stage": scaling.zero_stage}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": fit.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": fit.batch_size * world_size,
        "gradient_clipping": GRAD_CLIP,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # the client AdamW is fine under ZeRO
        "bf16": {"enabled": scaling.precision == "bf16"},
        "fp16": {"enabled": scaling.precision == "fp16"},
        "steps_per_print": 1 << 30,
    }
    if scaling.offload != "none":
        zero["offload_optimizer"] = {"device": "cpu"}
        if scaling.offload == "optimizer_and_parameters":
            zero["offload_param"] = {"device": "cpu"}
        config["optimizer"] = {"type": "AdamW", "params": {"lr": fit.learning_rate,
                                                          "weight_decay": fit.weight_decay}}
    return config


def skip_inference_comm_op() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce op when it sets up communication (30 s on an
    idle 2-core machine, up to a minute inside a fit, once per machine), but only its inference tensor
    parallelism calls that op: training's collectives go through the process group Ray Train made. DeepSpeed
    keeps the probe of compatible ops in one dict that edits persist in, so marking the op incompatible skips
    the build. No effect on GPUs, whose accelerator has no such op."""
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, fit: FitSpec, total_steps: int):
        import deepspeed

        self.zero_stage = fit.scaling.zero_stage
        config = deepspeed_config(fit, ray.train.get_context().get_world_size())
        optimizer = None if "optimizer" in config else torch.optim.AdamW(
            model.parameters(), lr=fit.learning_rate, weight_decay=fit.weight_decay)
        factor = lr_factor(fit, total_steps)
        skip_inference_comm_op()
        # Ray Train has set up the process group (gloo on CPU, NCCL on GPU); DeepSpeed joins it, and
        # steps the schedule with the optimizer (and saves it in checkpoints).
        self.ds, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config,
                                           lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
        self.module: nn.Module = self.ds.module
        self.device = self.ds.device

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        return self.ds(*inputs, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        self.ds.step()  # clips, steps the optimizer and the schedule, zeroes the gradients

    def train(self, mode: bool = True) -> None:
        self.ds.train(mode)

    def full_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor] | None:
        """Collective: ZeRO-3 shards every parameter across ranks, so all ranks gather them one module at a
        time (a 7B model is never whole on one GPU) and rank 0 copies each to CPU memory in `dtype`."""
        import deepspeed

        rank0 = ray.train.get_context().get_world_rank() == 0
        if self.zero_stage != 3:
            return _on_cpu(self.module.state_dict(), dtype) if rank0 else None
        order = list(self.module.state_dict())  # names only: under ZeRO-3 the tensors are placeholders
        state: dict[str, torch.Tensor] = {}
        for prefix, module in self.module.named_modules(remove_duplicate=False):  # tied weights: both names
            own = list(module.parameters(recurse=False))
            with deepspeed.zero.GatheredParameters(own, modifier_rank=None, enabled=bool(own)):
                if rank0:
                    named = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                    state.update(_on_cpu({f"{prefix}.{n}" if prefix else n: t for n, t in named}, dtype))
        return {k: state[k] for k in order} if rank0 else None

    def save(self, folder: Path) -> None:
        """Every rank writes its own ZeRO shards; Ray Train gathers all ranks' files into one checkpoint."""
        self.ds.save_checkpoint(str(folder), tag=DS_TAG)

    def load(self, folder: Path) -> None:
        path, _ = self.ds.load_checkpoint(str(folder), tag=DS_TAG)
        if path is None:
            raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint under {DS_TAG}/")


class DDPEngine:
    def __init__(self, model: nn.Module, fit: FitSpec, total_steps: int):
        self.model = ray.train.torch.prepare_model(model)  # moves to the device, wraps in DDP if world > 1
        self.module: nn.Module = getattr(self.model, "module", self.model)
        self.device = ray.train.torch.get_device()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=fit.learning_rate,
                                           weight_decay=fit.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(fit, total_steps))
        self.dtype = _DTYPES[fit.scaling.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fit.scaling.precision == "fp16")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(*inputs, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def full_state_dict(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor] | None:
        if ray.train.get_context().get_world_rank() != 0:
            return None
        return _on_cpu(self.module.state_dict(), dtype)

    def save(self, folder: Path) -> None:
        """DDP replicas are identical: rank 0 writes the whole state."""
        if ray.train.get_context().get_world_rank() == 0:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict()}
            torch.save(state, Path(folder) / DDP_STATE)

    def load(self, folder: Path) -> None:
        state = torch.load(Path(folder) / DDP_STATE, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])

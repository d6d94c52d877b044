"""One training step's memory predicted from the plans, and the budget that switches activation checkpointing on.

nnU-Net's planner sizes patch and batch so that its own network trains in about 8 GB of GPU memory
(``ExperimentPlanner.gpu_memory_target_in_gb``). Our networks keep more for backward (1.5-4.7x stock nnU-Net's under
fp16 autocast on the benchmark plans), so on the GPU the plans were made for they can run out of memory. The
prediction here counts, without allocating, what one training step holds:

- saved for backward: the bytes autograd keeps over the forward with deep supervision and nnU-Net's Dice + CE loss
  (:class:`~nnunet_sparseattn.layers.checkpointing.SavedTensorCounter`, one entry per storage, parameters left out),
  on fake tensors (``FakeTensorMode``: shapes and dtypes only) of the device's type; on CUDA under CUDA's fp16
  autocast, as nnU-Net trains there (switched on through torch's autocast state, since ``torch.autocast("cuda")``
  refuses without a GPU). Routed attention is counted on its gather path: an upper bound of flex attention's;
- parameters, their gradients and the optimizer's state (SGD momentum: one copy of the parameters, Adam: two).

Budget (:func:`memory_budget`): 1.3x stock nnU-Net's prediction on the same plans, and at most the planner's 8 GB where
stock nnU-Net's fits in it. ``benchmarks/training_memory.py`` prints these figures per plan and holds the count
against the CPU's allocations (and, on a GPU, against ``max_memory_allocated``).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_sparseattn.layers.checkpointing import SavedTensorCounter
from nnunet_sparseattn.layers.sparse_attention import use_backend

__all__ = [
    "BUDGET_RATIO",
    "PLANNER_TARGET_BYTES",
    "TrainingBatch",
    "TrainingMemory",
    "count_saved",
    "cuda_autocast",
    "memory_budget",
    "nnunet_loss",
    "optimizer_state_copies",
    "predict_training_memory",
    "unwrap_network",
]

BUDGET_RATIO = 1.3
# nnU-Net's ExperimentPlanner default (gpu_memory_target_in_gb = 8); GB = 1e9 bytes, as nnU-Net counts
PLANNER_TARGET_BYTES = 8 * 10**9


@dataclass(frozen=True)
class TrainingMemory:
    """One training step's bytes: kept for backward, parameters (gradients: as many), optimizer state."""

    saved_bytes: int
    params_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.saved_bytes + 2 * self.params_bytes + self.optimizer_bytes


def memory_budget(stock_total_bytes: int) -> int:
    """The most one of our networks may predict: 1.3x stock nnU-Net's, at most 8 GB where stock's fits in 8 GB (plans
    made for a larger GPU, e.g. ResEnc L's 24 GB, keep the ratio)."""
    budget = int(BUDGET_RATIO * stock_total_bytes)
    return min(budget, PLANNER_TARGET_BYTES) if stock_total_bytes <= PLANNER_TARGET_BYTES else budget


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside nnU-Net's DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def optimizer_state_copies(optimizer: torch.optim.Optimizer) -> int:
    """Copies of the parameters the optimizer's state holds once it has stepped: Adam's two moments, SGD's momentum
    (none without momentum)."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return 2
    if isinstance(optimizer, torch.optim.SGD):
        return int(any(group.get("momentum", 0) for group in optimizer.param_groups))
    return 2  # unknown: count as Adam (an upper bound for torch's optimizers)


def nnunet_loss(batch_dice: bool, deep_supervision_outputs: int) -> nn.Module:
    """nnU-Net's loss as ``nnUNetTrainer._build_loss`` makes it for label (not region) training without DDP: Dice + CE
    (``MemoryEfficientSoftDiceLoss``) in a ``DeepSupervisionWrapper`` with weights 1/2^i, the lowest resolution's 0."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss(
        {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    weights = np.array([1 / (2**i) for i in range(deep_supervision_outputs)])
    if deep_supervision_outputs > 1:
        weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


@contextlib.contextmanager
def cuda_autocast(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """CUDA autocast's dispatch on (fake) CUDA tensors without a GPU: ``torch.autocast("cuda")`` checks for a device
    and disables itself, the state functions underneath it do not. ``None``: float32, nothing switched."""
    if dtype is None:
        yield
        return
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", False)


_FAKE_MODE: Any = None


def _fake_mode() -> Any:
    """One FakeTensorMode for the process: the layers cache the small index tensors they build under a fake mode
    per mode (layers/shapes.py), so every count after the first finds them, and the cache keeps one mode alive."""
    global _FAKE_MODE
    if _FAKE_MODE is None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        _FAKE_MODE = FakeTensorMode()
    return _FAKE_MODE


def _copy_without_activations(network: nn.Module) -> nn.Module:
    """A deep copy, without the tensors of the last forward a module may keep (the bilateral network's rendered
    points): deepcopy refuses tensors that are not graph leaves, and the count makes its own."""
    memo: dict[int, Any] = {}
    for module in network.modules():
        for value in vars(module).values():
            for t in value if isinstance(value, tuple) else (value,):
                if isinstance(t, torch.Tensor) and not t.is_leaf:
                    memo[id(t)] = None
    return copy.deepcopy(network, memo)


@dataclass(frozen=True)
class TrainingBatch:
    """What one training step's memory depends on besides the network: the plans' patch, the (per-GPU) batch, the
    input channels, the segmentation heads and nnU-Net's batch Dice setting."""

    patch_size: Sequence[int]
    batch_size: int
    input_channels: int
    num_classes: int
    batch_dice: bool


def count_saved(
    network: nn.Module,
    batch: TrainingBatch,
    device_type: str = "cuda",
    precision: Optional[torch.dtype] = torch.float16,
) -> SavedTensorCounter:
    """Bytes one training forward + nnU-Net's loss keeps for backward, on fake tensors of ``device_type`` (see the
    module docstring); ``precision``: CUDA's autocast dtype (``None``: float32). Random labels at every deep
    supervision output's shape (the counted bytes depend on shapes only)."""
    if precision is not None and device_type != "cuda":
        raise ValueError("autocast is counted on CUDA only (nnU-Net trains under autocast there only)")
    # a copy: functional_call inside FakeTensorMode leaves the fake tensors in the module it ran (torch 2.14)
    network = _copy_without_activations(unwrap_network(network)).train()
    mode = _fake_mode()
    with mode:
        state = {
            name: mode.from_tensor(t).to(device_type)
            for name, t in (*network.named_parameters(), *network.named_buffers())
        }
        params = [state[name].requires_grad_(True) for name, _ in network.named_parameters()]
        data = torch.randn(batch.batch_size, batch.input_channels, *batch.patch_size, device=device_type)
        counter = SavedTensorCounter(exclude=params)
        with counter, use_backend(network, "gather"), cuda_autocast(precision):
            outputs = torch.func.functional_call(network, state, (data,))
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            targets = [
                torch.randint(0, batch.num_classes, (batch.batch_size, 1, *o.shape[2:]), device=device_type).float()
                for o in outputs
            ]
            nnunet_loss(batch.batch_dice, len(outputs))(list(outputs), targets)
    return counter


def predict_training_memory(
    network: nn.Module,
    batch: TrainingBatch,
    optimizer_copies: int,
    device_type: str = "cuda",
    precision: Optional[torch.dtype] = torch.float16,
) -> TrainingMemory:
    """:func:`count_saved` plus parameters, gradients and ``optimizer_copies`` copies of the parameters."""
    counter = count_saved(network, batch, device_type, precision)
    params = sum(p.numel() * p.element_size() for p in unwrap_network(network).parameters())
    return TrainingMemory(counter.bytes, params, optimizer_copies * params)

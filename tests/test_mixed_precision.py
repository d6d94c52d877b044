"""Under autocast (fp16 and bf16; torch's CPU autocast, nnU-Net trains under CUDA's) the places that must stay in
float32 are so by construction: every softmax, log-softmax, top-k (routing scores) and layer norm the networks run
gets float32 input, and the narrow-band loss computes in float32 throughout. Held to the operators torch actually
runs (a ``TorchDispatchMode`` records each operator and its input dtypes), not to the code's intent.
``benchmarks/mixed_precision.py`` trains under autocast; this file only checks dtypes (seconds)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import network_speed as ns

# the operators whose input must be float32: attention/routing softmax, routing top-k and sorting, norms
FLOAT32_OPS = ("_softmax", "_log_softmax", "topk", "sort", "native_layer_norm")


class OperatorDtypes(TorchDispatchMode):
    """Records ``(operator name, dtypes of its floating tensor inputs)`` for every operator that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        self.calls.append((func.__name__.split(".")[0], tuple(a.dtype for a in flat)))
        return func(*args, **(kwargs or {}))

    def low_precision(self, names: tuple[str, ...]) -> list[tuple[str, tuple[torch.dtype, ...]]]:
        return [(n, d) for n, d in self.calls if n in names and any(t != torch.float32 for t in d)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key", ["bsa", "mdsa", "bilateral"])
@pytest.mark.parametrize("plan_name", ["hippocampus_3d_fullres", "isic2017_2d"])
def test_network_keeps_softmax_routing_and_norms_float32_under_autocast(plan_name, key, dtype):
    plan = ns.tiny_plan(ns.load_plan(plan_name))
    torch.manual_seed(0)
    network = ns.build_network(key, plan, deep_supervision=True).train()
    x = torch.randn(2, plan.input_channels, *plan.patch_size)
    with torch.autocast("cpu", dtype=dtype), OperatorDtypes() as ops:
        outputs = network(x)
    assert outputs[0].dtype == dtype  # the network really ran in low precision
    assert any(n == "convolution" and dtype in d for n, d in ops.calls)
    assert any(n in FLOAT32_OPS for n, _ in ops.calls)  # the check below has something to check
    assert ops.low_precision(FLOAT32_OPS) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_narrow_band_loss_computes_in_float32_under_autocast(mode, dtype):
    from nnunet_sparseattn.losses.narrow_band import NarrowBandLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 8, 8).to(dtype).requires_grad_(True)
    if mode == "softmax":
        target = torch.randint(0, 3, (2, 1, 6, 8, 8)).float()
    else:
        target = (torch.rand(2, 3, 6, 8, 8) > 0.5).float()
    loss_fn = NarrowBandLoss((1, 2, 2), apply_nonlin=mode)
    with torch.autocast("cpu", dtype=dtype), OperatorDtypes() as ops:
        loss = loss_fn(logits, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # the only operator that sees the low-precision logits is their conversion to float32
    low = [n for n, d in ops.calls if dtype in d]
    assert low == ["_to_copy"], low

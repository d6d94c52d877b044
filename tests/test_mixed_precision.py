"""Under autocast (fp16 and bf16; torch's CPU autocast, nnU-Net trains under CUDA's) the places that must stay in
float32 are so by construction: every softmax, log-softmax, top-k (routing scores) and layer norm the networks run
gets float32 input computed in float32 (attention logits and routing scores are not formed in 16 bits and cast up
afterwards, where they would already have overflowed or rounded), and the narrow-band loss computes in float32
throughout. Held to the operators torch actually runs (a ``TorchDispatchMode`` records each operator, its input
dtypes and which operator made each input), not to the code's intent.
``benchmarks/mixed_precision.py`` trains under autocast; this file only checks dtypes (seconds)."""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import network_speed as ns
from nnunet_sparseattn.layers.routing import Router

# the operators whose input must be float32: attention/routing softmax, routing top-k and sorting, norms
FLOAT32_OPS = ("_softmax", "_log_softmax", "topk", "sort", "native_layer_norm")
# operators that move or copy values without computing: the value's precision is that of what made their input
SHAPE_OPS = {
    "view", "_unsafe_view", "reshape", "transpose", "permute", "expand", "clone", "contiguous", "slice", "select",
    "unsqueeze", "squeeze", "t", "alias", "detach", "flatten", "unflatten", "index_select", "gather", "cat", "stack",
    "nan_to_num", "masked_fill", "constant_pad_nd", "unbind", "split", "split_with_sizes", "chunk", "narrow",
}  # fmt: skip


class OperatorDtypes(TorchDispatchMode):
    """Records ``(operator name, dtypes of its floating tensor inputs)`` for every operator that runs, which call
    made each tensor (``made_by``: the index of the call, by the identity of the tensors it returned) and, given a
    ``network``, the class of the innermost of its modules each call ran in (``where``)."""

    def __init__(self, network: Optional[torch.nn.Module] = None) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...]]] = []
        self.where: list[str] = []
        self.inputs: list[list[torch.Tensor]] = []
        self.output_dtypes: list[tuple[torch.dtype, ...]] = []  # of each call's floating outputs
        self.made_by: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # every output stays alive: an id is never reused for another tensor
        self._stack: list[str] = [""]
        for module in network.modules() if network is not None else []:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        self._stack.append(type(module).__name__)

    def _leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:  # None: the output stays as it is
        self._stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
        flat += [
            t
            for a in args
            if isinstance(a, (list, tuple))
            for t in a
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        ]
        self.calls.append((func.__name__.split(".")[0], tuple(a.dtype for a in flat)))
        self.where.append(self._stack[-1])
        self.inputs.append(flat)
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (list, tuple)) else [out]
        self.output_dtypes.append(tuple(t.dtype for t in outs if isinstance(t, torch.Tensor) and t.is_floating_point()))
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if isinstance(t, torch.Tensor):
                self.made_by[id(t)] = len(self.calls) - 1
                self._keep.append(t)
        return out

    def low_precision(self, names: tuple[str, ...]) -> list[tuple[str, tuple[torch.dtype, ...]]]:
        return [(n, d) for n, d in self.calls if n in names and any(t != torch.float32 for t in d)]

    def computed_in(self, tensor: torch.Tensor) -> tuple[str, tuple[torch.dtype, ...]]:
        """The operator that computed ``tensor``'s values and its input dtypes, looking through shape operators;
        ``("input", ...)`` for a tensor made outside the recording (an input or a parameter)."""
        call = self.made_by.get(id(tensor))
        while call is not None:
            name, dtypes = self.calls[call]
            if name not in SHAPE_OPS or not self.inputs[call]:
                return name, dtypes
            call = self.made_by.get(id(self.inputs[call][0]))
        return "input", (tensor.dtype,)

    def cast_up(self, names: tuple[str, ...]) -> list[tuple[str, str, tuple[torch.dtype, ...], str]]:
        """The calls of ``names`` whose input was computed in 16 bits: a cast up from float16/bfloat16, or an
        operator that ran on 16-bit inputs (``(operator, what computed its input, its input dtypes, where)``)."""
        out = []
        for (name, _), inputs, where in zip(self.calls, self.inputs, self.where):
            if name in names and inputs:
                source, dtypes = self.computed_in(inputs[0])
                if any(d in (torch.float16, torch.bfloat16) for d in dtypes):
                    out.append((name, source, dtypes, where))
        return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("key", ["bsa", "mdsa", "bilateral"])
@pytest.mark.parametrize("plan_name", ["hippocampus_3d_fullres", "isic2017_2d"])
def test_network_keeps_softmax_routing_and_norms_float32_under_autocast(plan_name, key, dtype):
    plan = ns.tiny_plan(ns.load_plan(plan_name))
    torch.manual_seed(0)
    network = ns.build_network(key, plan, deep_supervision=True).train()
    routers = [m for m in network.modules() if isinstance(m, Router)]
    for router in routers:  # sparse routing at this size too (routing to every region skips the top-k)
        router.topk = 1
    x = torch.randn(2, plan.input_channels, *plan.patch_size)
    with torch.autocast("cpu", dtype=dtype), OperatorDtypes(network) as ops:
        outputs = network(x)
    assert outputs[0].dtype == dtype  # the network really ran in low precision
    assert any(n == "convolution" and dtype in d for n, d in ops.calls)
    assert any(n in FLOAT32_OPS for n, _ in ops.calls)  # the check below has something to check
    assert ops.low_precision(FLOAT32_OPS) == []
    # MDSA on the 2D plans routes sparsely here; elsewhere the blocks have too few regions at this size (routing to
    # all of them skips the top-k); BSA's routing scores are its coarse attention's logits, checked through that
    # softmax below
    routed = any(n == "topk" and w == "Router" for (n, _), w in zip(ops.calls, ops.where))
    assert routed == ((plan_name, key) == ("isic2017_2d", "mdsa"))
    # and the softmax logits and routing scores were computed in float32, not computed in 16 bits and cast up (norms
    # take the network's 16-bit activations by design: their statistics are what must be float32). The one 16-bit
    # source allowed: the bilateral network's point rendering ranks the voxels of its coarse prediction (a network
    # output, 16 bits under autocast like nnU-Net's own logits) by uncertainty, in float32 from there on.
    cast_up = ops.cast_up(("_softmax", "_log_softmax", "topk", "sort"))
    assert [c for c in cast_up if c[3] != "AttentionRendering"] == []
    assert all(c[:2] == ("topk", "_to_copy") for c in cast_up)


@pytest.mark.parametrize("key", ["bsa", "mdsa", "bilateral"])
def test_a_float64_network_computes_in_float64_throughout(key):
    """The float32 places cast 16 bits up, never 64 down (``layers/precision.py``): a float64 network is a numerical
    reference (``benchmarks/compile.py`` holds inductor to one), so no operator of its forward turns float64 into
    anything less (float32 tensors made from scratch, such as window masks or random keys, may join in)."""
    plan = ns.tiny_plan(ns.load_plan("isic2017_2d"))
    torch.manual_seed(0)
    network = ns.build_network(key, plan, deep_supervision=True).double().train()
    for router in (m for m in network.modules() if isinstance(m, Router)):
        router.topk = 1  # routed, as in the test above
    x = torch.randn(2, plan.input_channels, *plan.patch_size, dtype=torch.float64)
    with OperatorDtypes(network) as ops:
        outputs = network(x)
    assert all(o.dtype == torch.float64 for o in outputs)
    assert any(n in FLOAT32_OPS for n, _ in ops.calls)
    down = {
        (n, w)
        for (n, dtypes), out, w in zip(ops.calls, ops.output_dtypes, ops.where)
        if torch.float64 in dtypes and any(d != torch.float64 for d in out)
    }
    assert down == set()
    # the float32 places ran in float64 (the rendering's top-k of random keys, float32 from scratch, aside)
    in_float32 = {
        (n, w) for (n, dtypes), w in zip(ops.calls, ops.where) if n in FLOAT32_OPS and torch.float32 in dtypes
    }
    assert in_float32 <= {("topk", "AttentionRendering")}


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


def test_hippocampus_patches_pad_small_cases_and_centre_on_foreground():
    from benchmarks.mixed_precision import random_patch

    image = np.arange(1, 4 * 6 * 5 + 1, dtype=np.float32).reshape(4, 6, 5)
    labels = np.zeros((4, 6, 5), dtype=np.int64)
    labels[1, 5, 0] = 2
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = random_patch(image, labels, (8, 4, 4), rng, foreground=True)
        assert x.shape == y.shape == (1, 8, 4, 4)
        assert float(y.sum()) == 2  # the one foreground voxel is inside every foreground patch
        assert (x[0, :2] == 0).all() and (x[0, -2:] == 0).all() and (x[0, 2:-2] > 0).all()  # 4 -> 8: 2 zeros a side
    # plain patches start anywhere in the case: every one of the 3 x 2 (y, x) offsets turns up
    corners = {float(random_patch(image, labels, (8, 4, 4), rng, foreground=False)[0][0, 2, 0, 0]) for _ in range(60)}
    assert corners == {float(image[0, y, x]) for y in range(3) for x in range(2)}


def test_band_is_measured_against_the_fall_of_float32s_loss():
    from benchmarks.mixed_precision import judge, passed

    reference = [1.0, 0.8, 0.6, 0.2, 0.1, 0.1, 0.0, 0.0]  # last quarter: mean 0.0; fall from the first step: 1.0
    run = {"losses_finite": True, "weights_finite": True, "nonfinite_gradient_steps_not_skipped": 0}
    runs = {
        "float32": {**run, "losses": reference},
        "float16": {**run, "losses": reference[:-2] + [0.05, 0.05]},
        "bfloat16": {**run, "losses": reference[:-2] + [-0.2, -0.2]},
    }
    judge(runs, band=0.1)
    assert [runs[p]["difference_over_float32_drop"] for p in runs] == [0.0, 0.05, -0.2]
    assert [passed(r) for r in runs.values()] == [True, True, False]
    assert runs["bfloat16"]["max_abs_step_difference"] == 0.2
    runs["float16"]["weights_finite"] = False
    assert not passed(runs["float16"])


def test_each_dataset_writes_its_runs_beside_the_others(tmp_path):
    from benchmarks.mixed_precision import SCHEMA, write

    out = tmp_path / "mp.json"
    write(out, {"schema": SCHEMA, "band": 0.1, "datasets": {"isic": {"networks": {"stock": {}}}}}, "isic")
    write(
        out, {"schema": SCHEMA, "band": 0.1, "datasets": {"hippocampus": {"networks": {}}, "isic": {}}}, "hippocampus"
    )
    assert json.loads(out.read_text())["datasets"] == {
        "isic": {"networks": {"stock": {}}},
        "hippocampus": {"networks": {}},
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mp.json"]  # nothing else left behind

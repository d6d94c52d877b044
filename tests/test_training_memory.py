"""The count of what a training step keeps for backward (``layers/checkpointing.py``), held to hand-counted cases,
and activation checkpointing of the attention blocks, held to the networks without it (same outputs and gradients).
The predicted figures themselves are measured by ``benchmarks/training_memory.py``, not asserted here."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from benchmarks import network_speed as ns
from nnunet_sparseattn.layers.checkpointing import (
    SavedTensorCounter,
    checkpoint_blocks,
    checkpointed_blocks,
)


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_counter_counts_a_linear_chain_by_hand():
    # x (4, 8) needs no gradient. Linear 1 keeps x (for its weight's gradient): 4*8 floats; ReLU keeps its output,
    # which Linear 2 keeps too (one storage, counted once): 4*16 floats; the weights are parameters (not counted).
    net, x = _chain(), torch.randn(4, 8)
    with SavedTensorCounter(exclude=net.parameters()) as counter:
        net(x).sum()
    assert counter.bytes == (4 * 8 + 4 * 16) * 4
    assert counter.by_dtype == {"float32": (4 * 8 + 4 * 16) * 4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_counter_counts_what_autocast_saves(dtype):
    # under CPU autocast both linears run in 16 bits: Linear 1 keeps x's 16-bit copy (4*8); ReLU/Linear 2 the 16-bit
    # activation (4*16); Linear 2 also keeps its weight's 16-bit copy (2*16) for the input's gradient (Linear 1's
    # copy is not kept: x needs no gradient). 2 bytes each.
    net, x = _chain(), torch.randn(4, 8)
    with SavedTensorCounter(exclude=net.parameters()) as counter, torch.autocast("cpu", dtype=dtype):
        net(x).sum()
    assert counter.by_dtype == {str(dtype).removeprefix("torch."): (4 * 8 + 4 * 16 + 2 * 16) * 2}


def test_counter_counts_views_once_and_parameters_never():
    w = nn.Parameter(torch.randn(6, 6))
    x = torch.randn(6, 6, requires_grad=True)
    with SavedTensorCounter(exclude=[w]) as counter:
        y = x * 2  # mul by a scalar saves nothing
        (y[:3] * y[3:]).sum()  # both views of y: y's storage, once
        (w * w).sum()  # the parameter: not counted
    assert counter.bytes == 36 * 4


def test_counter_works_on_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    net = _chain()
    with FakeTensorMode() as mode:
        state = {n: mode.from_tensor(p).requires_grad_(True) for n, p in net.named_parameters()}
        x = torch.randn(4, 8)
        with SavedTensorCounter(exclude=state.values()) as counter:
            torch.func.functional_call(net, state, (x,)).sum()
    assert counter.bytes == (4 * 8 + 4 * 16) * 4


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_checkpointed_block_keeps_only_its_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), _Block())
    x = torch.randn(4, 8)
    with SavedTensorCounter(exclude=net.parameters()) as plain:
        net(x).sum()
    assert checkpoint_blocks(net, (_Block,)) == 1
    with SavedTensorCounter(exclude=net.parameters()) as checkpointed:
        net(x).sum()
    # plain: x (4*8, kept by the first linear), the block's input (4*8, by fc1), ReLU's output (4*32, by ReLU and
    # fc2; ReLU keeps its output, not its input, so fc1's output is not kept)
    assert plain.bytes == (4 * 8 + 4 * 8 + 4 * 32) * 4
    # checkpointed: x and the block's input, which checkpoint holds for the recomputation
    assert checkpointed.bytes == (4 * 8 + 4 * 8) * 4


def _tiny(key: str) -> tuple[nn.Module, ns.Plan]:
    plan = ns.tiny_plan(ns.load_plan("hippocampus_3d_fullres"))
    torch.manual_seed(0)
    return ns.build_network(key, plan, deep_supervision=True), plan


@pytest.mark.parametrize("key", ["bsa", "mdsa", "bilateral"])
def test_checkpointing_keeps_outputs_and_gradients(key):
    """A training step of the network with its attention blocks checkpointed gives the same outputs and parameter
    gradients as without, and keeps fewer bytes for backward."""
    plain, plan = _tiny(key)
    # enabled on one copy, then copied again: the copy's blocks must run on the copy's own weights
    checkpointed = copy.deepcopy(plain)
    assert checkpointed.enable_activation_checkpointing() > 0
    checkpointed = copy.deepcopy(checkpointed)
    assert checkpointed_blocks(checkpointed) > 0
    x = torch.randn(2, plan.input_channels, *plan.patch_size, generator=torch.Generator().manual_seed(1))
    results = []
    for net in (plain, checkpointed):
        net.train()
        torch.manual_seed(2)  # the bilateral network samples its rendering points
        with SavedTensorCounter(exclude=net.parameters()) as counter:
            outputs = net(x)
        sum(o.square().mean() for o in outputs).backward()
        results.append((outputs, {n: p.grad for n, p in net.named_parameters()}, counter.bytes))
    (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = results
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-7, msg=name)
    assert saved_b < saved_a
    # inference (and nnU-Net's validation under no_grad) runs the blocks directly
    with torch.no_grad():
        checkpointed.eval()
        plain.eval()
        torch.testing.assert_close(checkpointed(x)[0], plain(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("setting", [True, False, "yes"])
def test_plans_setting_switches_checkpointing_in_the_trainers_network(setting):
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sparseattn.architectures.base import PlansError
    from nnunet_sparseattn.trainers.mdsa import nnUNetTrainerMDSA

    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    record["plans"]["configurations"][record["configuration"]]["activation_checkpointing"] = setting
    manager = PlansManager(record["plans"])
    configuration = manager.get_configuration(record["configuration"])
    build = nnUNetTrainerMDSA.build_network_architecture
    if not isinstance(setting, bool):
        with pytest.raises(PlansError, match="activation_checkpointing='yes'"):
            build(manager, configuration, 1, 3, True)
        return
    network = build(manager, configuration, 1, 3, True)
    blocks = sum(type(m).__name__ == "MDSABlock" for m in network.modules())
    assert blocks > 0 and checkpointed_blocks(network) == (blocks if setting else 0)


def test_benchmark_counts_fake_cuda_as_the_cpu_counts_real_tensors():
    """``benchmarks/training_memory.py`` counts on fake CUDA tensors: in float32 the count equals the one on real CPU
    tensors (stock nnU-Net at dry-run size), and CUDA's fp16 autocast (switched on without a GPU) really casts."""
    from benchmarks import training_memory as tm

    plan = ns.tiny_plan(ns.load_plan("hippocampus_3d_fullres"))
    network = tm.build(ns.STOCK, plan, checkpointing=False)
    fake = tm.count_saved(network, plan, 2, "float32")
    data, targets = tm.batch_tensors(plan, 2, "cpu")
    with SavedTensorCounter(exclude=network.parameters()) as real:
        ns.build_loss(plan, compile_dice=False)(network(data), targets)
    assert fake.bytes == real.bytes > 0
    half = tm.count_saved(network, plan, 2, "float16")
    assert half.by_dtype.get("float16", 0) > half.bytes / 2 and half.bytes < fake.bytes
    assert not torch.is_autocast_enabled("cuda")  # switched off again


def test_the_device_check_measures_a_step_against_the_prediction_and_renders_it(tmp_path, capsys):
    # the gpu.sh step's code path at dry-run size on the CPU (on a GPU: max_memory_allocated); the figures are the
    # benchmark's, not asserted here beyond being there
    from benchmarks import training_memory as tm

    if torch.cuda.is_available():
        pytest.skip("the CPU code path: a CUDA machine runs the real check in benchmarks/gpu.sh")
    out = tmp_path / "memory.json"
    args = ["--device", "cpu", "--tiny", "--plans", "hippocampus_3d_fullres", "--networks", "stock,bsa"]
    assert tm.main([*args, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    networks = results["plans"]["hippocampus_3d_fullres"]["networks"]
    assert set(networks["stock"]) == {"label", "plain"} and set(networks["bsa"]) == {"label", "plain", "checkpointed"}
    for measured in (networks["stock"]["plain"], *(networks["bsa"][k] for k in ("plain", "checkpointed"))):
        assert measured["step_peak_bytes"] > measured["held_before_bytes"] > 0 and measured["predicted_total_bytes"] > 0
    table = capsys.readouterr().out
    assert "| hippocampus_3d_fullres | BSA |" in table
    assert tm.main(["--table", str(out)]) == 0 and "| hippocampus_3d_fullres | BSA |" in capsys.readouterr().out
    # without a GPU: one line, exit 2, nothing written
    assert tm.main(["--device", "cuda", "--tiny", "--out", str(tmp_path / "no.json")]) == 2
    err = capsys.readouterr().err
    assert "--device cuda needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no.json").exists()

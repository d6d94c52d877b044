"""The count of what a training step keeps for backward (``layers/checkpointing.py``), held to hand-counted cases,
and activation checkpointing of the attention blocks, held to the networks without it (same outputs and gradients).
The predicted figures themselves are measured by ``benchmarks/training_memory.py``, not asserted here."""

from __future__ import annotations

import copy
import json
from unittest import mock

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


@pytest.mark.parametrize("setting", [True, False, "auto", None, "yes"])
def test_plans_setting_switches_checkpointing_in_the_trainers_network(setting):
    """true: on when the network is built (training and inference alike); false, "auto" and no setting: off when
    built ("auto" decides in ``initialize``, for CUDA training); anything else: one line naming the setting."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sparseattn.architectures.base import PlansError
    from nnunet_sparseattn.trainers.architecture import checkpointing_setting
    from nnunet_sparseattn.trainers.mdsa import nnUNetTrainerMDSA

    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    if setting is not None:
        record["plans"]["configurations"][record["configuration"]]["activation_checkpointing"] = setting
    manager = PlansManager(record["plans"])
    configuration = manager.get_configuration(record["configuration"])
    build = nnUNetTrainerMDSA.build_network_architecture
    if setting == "yes":
        with pytest.raises(PlansError, match="activation_checkpointing='yes'.*true, false or \"auto\""):
            build(manager, configuration, 1, 3, True)
        return
    assert checkpointing_setting(configuration) == ("auto" if setting is None else setting)
    network = build(manager, configuration, 1, 3, True)
    blocks = sum(type(m).__name__ == "MDSABlock" for m in network.modules())
    assert blocks > 0 and checkpointed_blocks(network) == (blocks if setting is True else 0)


@pytest.mark.parametrize("key", ["bilateral", "bsa"])
def test_a_count_leaves_nothing_fake_behind_for_the_real_forward(key):
    """The count runs the network on fake tensors; the layers cache per-shape masks (layers/shapes.py): the real
    training step after it, at the same shapes, must not meet a fake mask (it did: the Swin blocks' shift mask)."""
    from nnunet_sparseattn.memory import TrainingBatch, count_saved

    network, plan = _tiny(key)
    step = TrainingBatch(plan.patch_size, 2, plan.input_channels, plan.num_classes, batch_dice=True)
    count = count_saved(network, step, "cpu", None)
    assert count.bytes > 0
    x = torch.randn(2, plan.input_channels, *plan.patch_size)
    with SavedTensorCounter(exclude=network.parameters()) as real:
        outputs = network.train()(x)
    sum(o.square().mean() for o in outputs).backward()
    assert real.bytes > 0
    count_saved(network, step, "cpu", None)  # and back


def test_memory_budget_is_the_ratio_capped_at_the_planners_target_where_stock_fits_it():
    from nnunet_sparseattn.memory import memory_budget

    gb = 10**9
    assert memory_budget(1 * gb) == 1.3 * gb
    assert memory_budget(7 * gb) == 8 * gb  # 9.1 GB would leave the 8 GB the plans were made for
    assert memory_budget(20 * gb) == 26 * gb  # plans for a larger GPU (ResEnc L: 24 GB) keep the ratio


def test_optimizer_state_copies():
    from nnunet_sparseattn.memory import optimizer_state_copies

    params = [nn.Parameter(torch.zeros(2))]
    assert optimizer_state_copies(torch.optim.SGD(params, 0.1, momentum=0.99)) == 1
    assert optimizer_state_copies(torch.optim.SGD(params, 0.1)) == 0
    assert optimizer_state_copies(torch.optim.AdamW(params)) == 2


def test_stock_reference_is_the_network_the_plans_name_or_plain_unet_for_ours():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_sparseattn.trainers.architecture import stock_network

    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    configuration = record["plans"]["configurations"][record["configuration"]]
    arch = configuration["architecture"]
    assert type(stock_network(PlansManager(record["plans"]).get_configuration("3d_fullres"), 1, 3)) is PlainConvUNet
    arch["network_class_name"] = "nnunet_sparseattn.architectures.bsa.BSAUNet"  # a variant plans file names ours
    network = stock_network(PlansManager(record["plans"]).get_configuration("3d_fullres"), 1, 3)
    assert type(network) is PlainConvUNet and network.decoder.deep_supervision
    arch["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    arch["arch_kwargs"]["n_blocks_per_stage"] = arch["arch_kwargs"].pop("n_conv_per_stage")
    network = stock_network(PlansManager(record["plans"]).get_configuration("3d_fullres"), 1, 3)
    assert type(network) is ResidualEncoderUNet


def _hippocampus_trainer(make, trainer_class: type, **configuration):
    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    record["plans"]["configurations"][record["configuration"]].update(configuration)
    return make(trainer_class, record["plans"], record["configuration"], record["dataset_json"])


def _log(trainer) -> str:
    return open(trainer.log_file).read()


def test_auto_checkpointing_turns_on_where_cuda_training_exceeds_the_budget(trainer_without_data):
    """The Hippocampus 3d_fullres plans at their own patch and batch (9): BSA predicts 1.26 GB under fp16 against
    stock nnU-Net's 0.81 GB (1.56x, over 1.3x): checkpointing on, and the prediction with it within the budget. The
    count runs on fake CUDA tensors: no GPU needed."""
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA

    trainer = _hippocampus_trainer(trainer_without_data, nnUNetTrainerBSA)
    assert checkpointed_blocks(trainer.network) == 0
    assert trainer.checkpoint_if_over_budget("cuda") is True
    blocks = checkpointed_blocks(trainer.network)
    assert blocks >= sum(type(m).__name__ == "BSABlock" for m in trainer.network.modules()) > 0
    line = next(x for x in _log(trainer).splitlines() if "Training memory predicted" in x)
    assert "batch 9, patch [40, 56, 40], fp16): 1.26 GB, stock nnU-Net's 0.81 GB, budget 1.05 GB" in line
    after = float(line.split(" GB predicted with it")[0].rsplit(" ", 1)[-1])
    assert f"activation checkpointing on for {blocks} blocks" in line and after <= 1.05


def test_auto_checkpointing_stays_off_within_the_budget_and_off_the_gpu(trainer_without_data, monkeypatch):
    from nnunet_sparseattn.trainers import architecture, nnUNetTrainerBSA

    trainer = _hippocampus_trainer(trainer_without_data, nnUNetTrainerBSA)
    # the CPU: nothing counted (the budget is GPU memory), said in the log
    monkeypatch.setattr(architecture, "predict_training_memory", None)
    assert trainer.checkpoint_if_over_budget("cpu") is False
    assert 'Activation checkpointing: off ("auto" decides for CUDA training' in _log(trainer)
    monkeypatch.undo()
    # a budget the prediction is within (a GPU's worth): off
    monkeypatch.setattr(architecture, "memory_budget", lambda stock: 100 * stock)
    assert trainer.checkpoint_if_over_budget("cuda") is False
    assert checkpointed_blocks(trainer.network) == 0
    assert _log(trainer).rstrip().endswith("activation checkpointing off")
    # DDP over 2 GPUs: the plans' batch of 9 is 5 + 4; every rank counts the larger, so that all decide alike
    monkeypatch.setattr(trainer, "is_ddp", True)
    monkeypatch.setattr(architecture.dist, "get_world_size", lambda: 2)
    trainer.checkpoint_if_over_budget("cuda")
    assert "(batch 5, patch [40, 56, 40], fp16)" in _log(trainer).splitlines()[-1]


def test_initialize_decides_only_for_auto(trainer_without_data, monkeypatch):
    """nnU-Net's ``initialize`` then the decision, once; explicit true/false and a trainer's own switch skip it."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_sparseattn.harness.trainers import initialize_without_data
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA

    monkeypatch.setattr(nnUNetTrainer, "initialize", initialize_without_data)
    decided: list[str] = []
    monkeypatch.setattr(nnUNetTrainerBSA, "checkpoint_if_over_budget", lambda self, device: decided.append(device))
    for setting, expected in ((None, ["cpu"]), ("auto", ["cpu"]), (False, []), (True, [])):
        extra = {} if setting is None else {"activation_checkpointing": setting}
        trainer = _hippocampus_trainer(trainer_without_data, nnUNetTrainerBSA, **extra)
        trainer.was_initialized = False
        decided.clear()
        trainer.initialize()
        trainer.initialize()  # nnU-Net calls it again when it resumes: nothing more
        assert decided == expected, setting


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


def test_checkpointing_switched_on_after_a_lazy_compile_takes_effect(trainer_without_data):
    """nnU-Net wraps the network in ``torch.compile`` inside ``initialize``, before "auto" decides: the compile is
    lazy, so blocks checkpointed before the first forward are traced checkpointed (dynamo's eager backend runs the
    traced graph on eager autograd, so the saved bytes show it)."""
    from nnunet_sparseattn.trainers import architecture, nnUNetTrainerMDSA

    saved = []
    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    configuration = record["plans"]["configurations"][record["configuration"]]
    configuration["architecture"]["arch_kwargs"]["features_per_stage"] = [8, 16, 32, 64]  # small: a fast step
    configuration["patch_size"] = [16, 24, 16]
    for checkpointing in (False, True):
        trainer = trainer_without_data(nnUNetTrainerMDSA, record["plans"], "3d_fullres", record["dataset_json"])
        torch.manual_seed(0)
        trainer.network = torch.compile(trainer.network, backend="eager")  # as nnUNetTrainer.initialize does
        if checkpointing:
            with mock.patch.object(architecture, "memory_budget", lambda stock: 0):  # over any budget
                assert trainer.checkpoint_if_over_budget("cuda")
        x = torch.randn(1, 1, *trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(1))
        with SavedTensorCounter(exclude=trainer.network.parameters()) as counter:
            outputs = trainer.network.train()(x)
        sum(o.float().mean() for o in outputs).backward()
        saved.append(counter.bytes)
    assert saved[1] < saved[0]

"""torch.compile on the CPU, at tiny sizes: every network traced without graph breaks and equal to eager through the
phases nnU-Net puts a compiled module through (``benchmarks/compile.py``, whose full figures, inductor's included,
are in BENCHMARKS.md), flex attention traced into the compiled inference graph, and a ``_debug`` training and
prediction through nnU-Net's own compile calls.

The backends here are aot_eager for the networks (dynamo's tracing and AOTAutograd, no code generation) and eager
for nnU-Net's run (dynamo's tracing): they meet every graph break and recompilation inductor would meet, in seconds;
inductor's C++ code generation takes minutes per network and mode on 2 CPU cores, too long for the suite.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
import torch.nn as nn
from plans_cases import dataset_json, plain_arch, plans_for

from benchmarks.compile import (
    GRADIENT_TOLERANCE,
    OUTPUT_TOLERANCE,
    PHASES,
    GraphRecorder,
    routed_calls,
    run_case,
    within_tolerance,
)
from benchmarks.network_speed import Plan
from nnunet_sparseattn.layers.bilevel_attention import BSABlock


@pytest.fixture(autouse=True)
def fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def micro_plan() -> Plan:
    """Three 2D stages of 8-32 features on 32 x 32: every block type of each network, the fewest operations."""
    case = plain_arch(2, [8, 16, 32], [[3, 3]] * 3, [[1, 1]] + [[2, 2]] * 2), (32, 32)
    configuration = plans_for(case, batch_size=2)["configurations"]["2d"]
    configuration["median_image_size_in_voxels"] = [48, 48]
    return Plan("micro_2d", "tests/test_compile.py", configuration, dataset_json())


ALL_GRAPHS = {
    "eager_step": 0,
    "train": 1,
    "train_again": 0,
    "partial_batch": 1,
    "validation": 1,
    "train_after_validation": 0,
    "inference": 1,
}


# measured on 2 cores under a load average of ~10 (five agents): bsa 132 s, mdsa 105 s, bilateral 551 s (all phases,
# checkpointing on); bilateral runs the training phases only here (the full walk is in BENCHMARKS.md)
@pytest.mark.slow
@pytest.mark.parametrize(
    "network, checkpointing, phases",
    [("bsa", False, PHASES), ("mdsa", False, PHASES), ("bilateral", True, ("train", "train_again"))],
)
def test_network_under_compile_matches_eager_through_nnunets_phases(network, checkpointing, phases):
    result = run_case(network, micro_plan(), "aot_eager", checkpointing=checkpointing, phases_run=phases)
    assert result["graph_breaks"] == 0, result["graph_break_reasons"]
    # one graph per training step shape and per mode: the partial batch (a new batch size), validation (eval, no
    # grad) and inference (no deep supervision) compile once each; nothing else recompiles
    graphs = {name: phase["graphs"] for name, phase in result["phases"].items()}
    assert graphs == {name: n for name, n in ALL_GRAPHS.items() if name in phases + ("eager_step", "train")}
    assert result["train_output_error"] <= OUTPUT_TOLERANCE
    assert result["train_gradient_error"] <= GRADIENT_TOLERANCE
    assert result["inference_output_error"] <= OUTPUT_TOLERANCE
    # aot_eager runs eager's kernels: as far from the float64 copy as eager itself, for every training step
    for name in phases:
        step = result["phases"][name]
        if "gradient_error" in step:
            assert step["output_error_vs_float64"] == step["eager_output_error_vs_float64"] > 0
            assert step["gradient_error_vs_float64"] == step["eager_gradient_error_vs_float64"] > 0
    assert result["within_tolerance"]


def _step(out: float, grad: float, out64: float, eager_out64: float, grad64: float, eager_grad64: float) -> dict:
    return {
        "output_error": out,
        "gradient_error": grad,
        "output_error_vs_float64": out64,
        "eager_output_error_vs_float64": eager_out64,
        "gradient_error_vs_float64": grad64,
        "eager_gradient_error_vs_float64": eager_grad64,
    }


@pytest.mark.parametrize(
    "step, inference, verdict",
    [
        (_step(1e-6, 1e-5, 1e-6, 1e-6, 1e-5, 1e-5), 1e-6, True),  # within the fixed tolerances
        (_step(1e-6, 1e-5, 1e-6, 1e-6, 1e-5, 1e-5), 2e-4, False),  # inference is held to its tolerance only
        (_step(7e-4, 1e-2, 9e-4, 6e-4, 1.5e-2, 1.2e-2), 1e-6, True),  # as close to float64 as eager is (< 2x)
        (_step(7e-4, 1e-2, 2e-3, 6e-4, 1.5e-2, 1.2e-2), 1e-6, False),  # outputs 3.3x eager's error
        (_step(7e-4, 1e-2, 9e-4, 6e-4, 3e-2, 1.2e-2), 1e-6, False),  # gradients 2.5x eager's error
    ],
)
def test_a_training_step_passes_within_tolerance_or_as_close_to_float64_as_eager(step, inference, verdict):
    result = {
        "train_output_error": step["output_error"],
        "train_gradient_error": step["gradient_error"],
        "inference_output_error": inference,
        "phases": {"train": step, "inference": {"output_error": inference}},
    }
    assert within_tolerance(result) is verdict


def test_flex_attention_is_traced_into_the_compiled_inference_graph():
    # on the CPU, "auto" picks flex inside compile when no gradient is needed (as on a GPU, always): the routed
    # calls an eager forward makes through gather are flex calls in the graph, with the same output
    torch.manual_seed(0)
    block = BSABlock(16, 2, region_size=2, topk=2, conv_op=nn.Conv2d).eval()
    x = torch.randn(1, 16, 8, 8)
    assert routed_calls(block, x) == 1
    recorder = GraphRecorder("eager")
    with torch.inference_mode():
        want = block(x)
        got = torch.compile(block, backend=recorder)(x)
    # one flex call, traced as the flex_attention higher-order op; on the CPU it sits in a graph of its own (a
    # deliberate graph break before it dodges inductor's CPU flex lowering bug: sparse_attention._flex)
    assert sum(g["flex_attention"] for g in recorder.graphs) == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# nnU-Net's commands with its own torch.compile calls, run on the CPU. Test-only switches: nnU-Net 2.8.1 compiles
# in training on CUDA only (``nnUNetTrainer._do_i_compile``); its predictor compiles anywhere with nnUNet_compile=t.
# The backend is eager: dynamo's tracing through nnU-Net's own calls finds every graph break and recompilation
# inductor would meet (88 -> 46 s against aot_eager here). AOTAutograd's tracing of each network in training,
# validation and inference is the phases test's above (aot_eager); inductor's C++ build of a whole network takes
# minutes per mode on 2 CPU cores, and its code is checked against eager by benchmarks/compile.py.
NNUNET_COMPILED = """
import functools, sys
import torch
torch.compile = functools.partial(torch.compile, backend="eager")
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
nnUNetTrainer._do_i_compile = lambda self: True
from nnunetv2.run.run_training import run_training_entry
sys.argv = ["nnUNetv2_train", *sys.argv[1:]]
run_training_entry()
"""


def _nnunet_compiled(args: list[str], env: dict[str, str]) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", NNUNET_COMPILED, *args], env=env, capture_output=True, text=True, timeout=3000
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Using torch.compile" in log
    # TORCH_LOGS=graph_breaks logs each break; the only one allowed is the deliberate CPU-only break before flex
    # attention in inference (sparse_attention._flex: inductor's CPU flex lowering bug)
    places = set(re.findall(r"Graph break .*in user code at (\S+):\d+", log))
    reasons = set(re.findall(r"Graph Break Reason: .*\n.*\n.*\] (Call to `[^`]*`|[A-Z].*)", log))
    assert all(place.endswith("layers/sparse_attention.py") for place in places), places
    assert reasons <= {"Call to `torch._dynamo.graph_break()`"}, reasons
    return log


@pytest.mark.slow  # 635 s on 2 cores under a load average of ~10 (plus the shared Hippocampus preparation)
def test_debug_training_and_prediction_with_nnunets_compile(hippocampus_nnunet):
    from nnunet_sparseattn.harness import datasets
    from nnunet_sparseattn.harness.datasets import require_dataset

    run = hippocampus_nnunet
    trainer, plans_name = "nnUNetTrainerBSA_debug", "nnUNetPlans_compileTiny"
    preprocessed = require_dataset(run["env"]["nnUNet_preprocessed"], run["id"], "nnUNet_preprocessed")
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["plans_name"] = plans_name  # the same preprocessed data at features / 8: the compile path is tested
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [max(8, f // 8) for f in arch["features_per_stage"]]
    (preprocessed / f"{plans_name}.json").write_text(json.dumps(plans))
    env = dict(run["env"], nnUNet_n_proc_DA="0", nnUNet_compile="t", TORCH_LOGS="graph_breaks")
    ids = [str(run["id"]), "3d_fullres"]
    _nnunet_compiled([*ids, "0", "-tr", trainer, "-p", plans_name, "-device", "cpu"], env)
    model = datasets.model_folder(run["env"], run["id"], trainer, "3d_fullres", plans_name)
    assert (model / "fold_0" / "checkpoint_final.pth").exists()
    # the prediction: nnU-Net's final validation, its sliding-window predictor over the compiled network in
    # inference mode (deep supervision off), written and scored. (nnUNetv2_predict compiles only on request,
    # nnUNet_compile=t, through the same torch.compile call: left out to keep the suite within its 15 minutes.)
    validation = model / "fold_0" / "validation"
    assert (validation / "summary.json").exists() and list(validation.glob("*.nii.gz"))

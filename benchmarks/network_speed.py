"""Network speed: one nnU-Net training step of stock ``PlainConvUNet`` and of each of our networks, side by side.

    make bench-speed                     # = .venv/bin/python benchmarks/network_speed.py --update-docs (CPU)
    python benchmarks/network_speed.py --device cuda --mode eager      # nnU-Net's CUDA defaults without compile
    python benchmarks/network_speed.py --device cuda --mode compiled --plans hippocampus_3d_fullres,isic2017_2d
    python benchmarks/network_speed.py --table benchmarks/results/network-speed-cpu-eager.json   # print tables

Plans: ``benchmarks/plans/*.json``, written by nnU-Net's planner (``benchmarks/speed_plans.py``). Networks are built
as the trainers build them: stock through nnU-Net's ``get_network_from_plans`` (what ``nnUNetTrainer`` calls), ours
through ``<Network>.from_plans`` with the trainer's ``network_kwargs`` (what ``ArchitectureTrainer`` calls;
``tests/test_network_speed.py`` checks both against the trainers' own ``build_network_architecture``). Nothing here
imports nnU-Net's trainer module, so no SimpleITK is needed (the GPU machine has none).

One training step is ``nnUNetTrainer.train_step``'s: ``zero_grad``; forward with deep supervision and nnU-Net's
loss (Dice + CE, ``MemoryEfficientSoftDiceLoss``, deep-supervision weights 1/2^i with the lowest output at 0, as
``nnUNetTrainer._build_loss`` makes them; the same loss for every network, so that only the network differs: the NB
and point-rendering terms of our trainers are left out); backward; gradient clipping at 12; SGD (lr 1e-2, momentum
0.99, Nesterov, weight decay 3e-5, ``configure_optimizers``; likewise the same for every network, although
``nnUNetTrainerBilateral`` now trains with AdamW); the loss fetched to the host. On CUDA under nnU-Net's
defaults: fp16 autocast and a ``GradScaler`` (``--mode eager``), plus ``torch.compile`` of the network and of the
loss's Dice term as ``nnUNetTrainer.initialize`` and ``_build_loss`` apply it (``--mode compiled``). On the CPU,
nnU-Net uses neither: fp32, eager.

Measured per plan and network (results JSON: ``benchmarks/results/network-speed-<device>-<mode>.json``):

- ``s/step``: median over ``--repeats`` rounds; every round times every network once (``--steps`` steps each),
  the order rotated each round, so that load drift on a shared machine hits all networks alike. Ratios to stock are
  taken within each round (neighbouring measurements) and their median is reported, with the range.
- FLOPs: ``torch.utils.flop_counter`` over one forward of the timed kind (training mode, deep supervision on, the
  step's batch; 2 FLOPs per multiply-add; norms and activations not counted). Time per FLOP = s/step / FLOPs.
- peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over one step (parameters, gradients and optimizer state
  included). CPU: the bytes of parameters and optimizer state plus the peak of the step's own tensor allocations
  (torch.profiler's memory events replayed in time order, as ``benchmarks/attention.py`` measures).
- the ten most expensive operators of one profiled step (torch.profiler, self time).
- CUDA: compile time (the first compiled step's wall time minus an eager step's) and dynamo's graph breaks
  (``torch._dynamo.utils.counters``).
- inference (``--inference``): eval, deep supervision off, one image of the plans' median size, nnU-Net's sliding
  window (tile step 0.5, Gaussian weighting, no mirroring; fp16 autocast on CUDA; :func:`sliding_window_logits`,
  the predictor's loop written with nnU-Net's own helpers because its module needs SimpleITK; checked against
  ``nnUNetPredictor`` by the tests): seconds per case and peak memory.

CPU caps (``--batch-cap``, default 2 on the CPU): the plans' batch sizes (9, 49, 2) cost minutes per step on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import pydoc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU profiler is chatty otherwise

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# --before's worker runs this file on another checkout's package (that tree first on sys.path, this one after it)
TREE_VARIABLE = "NNUNET_SPARSEATTN_BENCH_TREE"
if os.environ.get(TREE_VARIABLE):
    sys.path.insert(0, os.environ[TREE_VARIABLE])
    sys.path.append(str(ROOT))
elif str(ROOT) not in sys.path:  # runnable without the package installed (the GPU machine: source on PYTHONPATH)
    sys.path.insert(0, str(ROOT))

from nnunet_sparseattn.plans.variants import VARIANTS  # noqa: E402  (after the tree is on sys.path)

PLANS_DIR = ROOT / "benchmarks" / "plans"
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "BENCHMARKS.md"
MARKERS = ("<!-- network-speed:begin -->", "<!-- network-speed:end -->")
SCHEMA = 1
PLANS = ("hippocampus_3d_fullres", "isic2017_2d", "six_stage_128_3d")
STOCK = "stock"
# The VRAM the plans were made for: nnU-Net's default planner (ExperimentPlanner, gpu_memory_target_in_gb=8)
PLANNER_VRAM_BYTES = 8 * 10**9


@dataclass(frozen=True)
class NetworkSpec:
    """One benchmarked network: the class our trainer builds and the trainer's ``network_kwargs``."""

    label: str
    trainer: str
    network_class: Optional[str]  # None: nnU-Net's get_network_from_plans (the plans' own class)
    network_kwargs: dict = field(default_factory=dict)


# stock nnU-Net, then every registered method (label: a --before tree older than the registry has none)
NETWORKS: dict[str, NetworkSpec] = {
    STOCK: NetworkSpec("stock nnU-Net", "nnUNetTrainer", None),
    **{k: NetworkSpec(getattr(v, "label", v.plans_suffix), v.trainer, v.network_class) for k, v in VARIANTS.items()},
}


# --------------------------------------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class Plan:
    name: str
    source: str
    configuration: dict
    dataset_json: dict

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.configuration["patch_size"])

    @property
    def batch_size(self) -> int:
        return int(self.configuration["batch_size"])

    @property
    def input_channels(self) -> int:  # nnU-Net's determine_num_input_channels without a cascade
        return len(self.dataset_json["channel_names"])

    @property
    def num_classes(self) -> int:  # label_manager.num_segmentation_heads without regions
        return len(self.dataset_json["labels"])

    @property
    def arch_kwargs(self) -> dict:
        return self.configuration["architecture"]["arch_kwargs"]

    def deep_supervision_scales(self) -> list[list[float]]:
        """``nnUNetTrainer._get_deep_supervision_scales``: per output, the size relative to the patch."""
        pools = np.vstack(self.configuration["architecture"]["arch_kwargs"]["strides"])
        return [list(s) for s in 1 / np.cumprod(pools, axis=0)][:-1]

    def median_image_size(self) -> tuple[int, ...]:
        return tuple(int(round(s)) for s in self.configuration["median_image_size_in_voxels"])


def load_plan(name: str, plans_dir: Path = PLANS_DIR) -> Plan:
    record = json.loads((plans_dir / f"{name}.json").read_text())
    configuration = record["plans"]["configurations"][record["configuration"]]
    return Plan(name, record["source"], configuration, record["dataset_json"])


def tiny_plan(plan: Plan) -> Plan:
    """The plan at dry-run size: features / 8 (at least 8), the patch a quarter per axis in whole strides, at least
    two bottleneck voxels (instance norm needs more than one)."""
    cfg = json.loads(json.dumps(plan.configuration))
    kw = cfg["architecture"]["arch_kwargs"]
    kw["features_per_stage"] = [max(8, f // 8) for f in kw["features_per_stage"]]
    total = np.prod(np.vstack(kw["strides"]), axis=0)
    patch = [int(max(t, -(-(p // 4) // t) * t)) for p, t in zip(cfg["patch_size"], total)]
    if all(p == t for p, t in zip(patch, total)):
        patch[0] *= 2
    cfg["patch_size"] = patch
    cfg["median_image_size_in_voxels"] = [p + p // 2 for p in cfg["patch_size"]]
    cfg["batch_size"] = 1
    return Plan(plan.name, plan.source + " (tiny: features / 8, patch / 4)", cfg, plan.dataset_json)


def build_network(key: str, plan: Plan, deep_supervision: bool) -> nn.Module:
    """The network as its trainer builds it (see the module docstring), initialised, on the CPU."""
    spec = NETWORKS[key]
    if spec.network_class is None:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        arch = plan.configuration["architecture"]
        return get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            plan.input_channels,
            plan.num_classes,
            allow_init=True,
            deep_supervision=deep_supervision,
        )
    cls = pydoc.locate(spec.network_class)
    return cls.from_plans(
        plan.arch_kwargs,
        plan.patch_size,
        plan.input_channels,
        plan.num_classes,
        deep_supervision,
        overrides=spec.network_kwargs,
    )


def build_loss(plan: Plan, compile_dice: bool, backend: str = "inductor") -> nn.Module:
    """nnU-Net's loss for these plans, as ``nnUNetTrainer._build_loss`` makes it for label (not region) training
    without DDP: DC + CE with ``MemoryEfficientSoftDiceLoss`` in a ``DeepSupervisionWrapper``."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    loss = DC_and_CE_loss(
        {"batch_dice": plan.configuration["batch_dice"], "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    if compile_dice:
        loss.dc = torch.compile(loss.dc, backend=backend)
    weights = np.array([1 / (2**i) for i in range(len(plan.deep_supervision_scales()))])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def build_optimizer(network: nn.Module) -> torch.optim.Optimizer:
    """``nnUNetTrainer.configure_optimizers``' SGD."""
    return torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)


# ---------------------------------------------------------------------------------------------------- one step
class TrainingStep:
    """nnU-Net's ``train_step`` for one network on one fixed batch (random data and labels of the plans' shapes)."""

    def __init__(
        self,
        key: str,
        plan: Plan,
        batch: int,
        device: torch.device,
        compiled: bool,
        compile_backend: str = "inductor",
        seed: int = 0,
    ) -> None:
        torch.manual_seed(seed)
        self.key, self.device, self.compiled = key, device, compiled
        self.network = build_network(key, plan, deep_supervision=True).to(device)
        self.num_parameters = sum(p.numel() for p in self.network.parameters())
        self.loss = build_loss(plan, compile_dice=compiled, backend=compile_backend)
        self.optimizer = build_optimizer(self.network)
        self.model: nn.Module = self.network
        if compiled:
            self.model = torch.compile(self.network, backend=compile_backend)
        self.grad_scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(batch, plan.input_channels, *plan.patch_size, generator=g).to(device)
        self.targets = []
        for scale in plan.deep_supervision_scales():
            shape = [int(round(p * s)) for p, s in zip(plan.patch_size, scale)]
            self.targets.append(torch.randint(0, plan.num_classes, (batch, 1, *shape), generator=g).float().to(device))

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", enabled=True) if self.device.type == "cuda" else contextlib.nullcontext()

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            output = self.model(self.data)
            loss = self.loss(output, self.targets)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return float(loss.detach().cpu())

    def state_bytes(self) -> int:
        """Parameters and optimizer state (SGD momentum) held between steps."""
        params = sum(p.numel() * p.element_size() for p in self.network.parameters())
        state = sum(
            t.numel() * t.element_size()
            for s in self.optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )
        return int(params + state)

    @torch.no_grad()
    def forward_flops(self) -> int:
        """FLOPs of one training forward on the step's batch (see :func:`countable_attention`)."""
        from nnunet_sparseattn.complexity import flop_counter

        with countable_attention(self.network), self.autocast(), flop_counter() as counter:
            self.network(self.data)
        return int(counter.get_total_flops())


@contextlib.contextmanager
def countable_attention(network: nn.Module):
    """Routed attention counted as the FLOPs it does: flex attention's formula counts the dense score matrix whatever
    the block mask skips, so while counting, routed attention runs through its gather backend (the same function, on
    the routed key regions only). SDPA itself is counted by ``nnunet_sparseattn.complexity.flop_counter`` (it adds
    the formula torch lacks for the CPU's kernel)."""
    from nnunet_sparseattn.layers.sparse_attention import BACKENDS

    routed = [m for m in network.modules() if getattr(m, "backend", None) in BACKENDS]
    saved = [m.backend for m in routed]
    try:
        for m in routed:
            m.backend = "gather"
        yield
    finally:
        for m, backend in zip(routed, saved):
            m.backend = backend


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], float], device: torch.device, steps: int) -> tuple[float, float, list[float]]:
    """Mean wall seconds and mean process CPU seconds per step over ``steps`` steps, and the losses. (On a shared
    CPU the process time counts only the cycles this process got: steadier than the wall time under load.)"""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    losses = [step() for _ in range(steps)]
    _sync(device)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps, losses


def cpu_peak_bytes(events: Sequence[tuple[int, int]]) -> int:
    """Peak of the running sum of (time, bytes) allocation (+) and free (-) events, in time order."""
    current = peak = 0
    for _, n in sorted(events):
        current += n
        peak = max(peak, current)
    return int(peak)


def profile_step(step: TrainingStep, rows: int = 10) -> tuple[list[dict], Optional[int]]:
    """The ``rows`` most expensive operators of one step by self time, and (CPU) the step's peak tensor bytes."""
    from torch.profiler import ProfilerActivity, profile

    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=not cuda) as prof:
        step()
        _sync(step.device)
    averages = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    if cuda and not hasattr(averages[0], key):  # older torch
        key = "self_cuda_time_total"
    total = sum(getattr(e, key) for e in averages) or 1
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    table = [
        {
            "op": e.key,
            "self_ms": round(getattr(e, key) / 1e3, 2),
            "share": round(getattr(e, key) / total, 4),
            "calls": int(e.count),
        }
        for e in top
    ]
    peak = None
    if not cuda:
        events = [
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
        peak = cpu_peak_bytes(events)
    return table, peak


# ------------------------------------------------------------------------------------------------ sliding window
@torch.inference_mode()
def sliding_window_logits(
    network: nn.Module,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_heads: int,
    device: torch.device,
    tile_step_size: float = 0.5,
) -> torch.Tensor:
    """``nnUNetPredictor.predict_sliding_window_return_logits`` without mirroring, for an image ``(C, *S)`` with
    ``len(S) == len(patch_size)`` (2D: nnU-Net's ``(C, 1, H, W)`` without the 1): pad to the patch, Gaussian-weighted
    tiles at nnU-Net's steps, fp16 accumulators on ``device``, fp16 autocast on CUDA. The predictor's own module
    imports SimpleITK, so its loop is written here with nnU-Net's helpers; ``tests/test_network_speed.py`` checks it
    against ``nnUNetPredictor``."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch = [int(p) for p in patch_size]
    network.eval()
    with torch.autocast(device.type, enabled=True) if device.type == "cuda" else contextlib.nullcontext():
        data, revert = pad_nd_image(image, patch, "constant", {"value": 0}, True, None)
        data = data.to(device)
        steps = compute_steps_for_sliding_window(data.shape[1:], patch, tile_step_size)
        logits = torch.zeros((num_heads, *data.shape[1:]), dtype=torch.half, device=device)
        weight = torch.zeros(data.shape[1:], dtype=torch.half, device=device)
        gaussian = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device)
        for start in itertools.product(*steps):
            tile = tuple(slice(s, s + p) for s, p in zip(start, patch))
            prediction = network(data[(slice(None), *tile)][None])[0]
            prediction *= gaussian
            logits[(slice(None), *tile)] += prediction
            weight[tile] += gaussian
        torch.div(logits, weight, out=logits)
        return logits[(slice(None), *revert[1:])]


def measure_inference(key: str, plan: Plan, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    network = build_network(key, plan, deep_supervision=False).to(device)
    shape = plan.median_image_size()
    image = torch.randn(plan.input_channels, *shape)
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window([max(s, p) for s, p in zip(shape, plan.patch_size)], plan.patch_size, 0.5)
    tiles = int(np.prod([len(s) for s in steps]))
    sliding_window_logits(network, image, plan.patch_size, plan.num_classes, device)  # warm-up (cuDNN, caches)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    logits = sliding_window_logits(network, image, plan.patch_size, plan.num_classes, device)
    _sync(device)
    seconds = time.perf_counter() - t0
    record: dict[str, Any] = {
        "case_shape": list(shape),
        "tiles": tiles,
        "s_per_case": round(seconds, 4),
        "finite": bool(torch.isfinite(logits).all()),
    }
    if device.type == "cuda":
        record["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    del network, logits
    return record


# ------------------------------------------------------------------------------------------------------- driver
def _ratio_stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(float(np.median(values)), 4),
        "min": round(float(min(values)), 4),
        "max": round(float(max(values)), 4),
    }


def compile_counters() -> dict[str, Any]:
    """Dynamo's graph breaks (count and distinct reasons) and graphs compiled since the counters were cleared."""
    from torch._dynamo.utils import counters

    breaks = counters.get("graph_break", {})
    return {
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": sorted(str(r)[:200] for r in breaks),
        "unique_graphs": int(counters.get("stats", {}).get("unique_graphs", 0)),
    }


def _failure(error: BaseException) -> str:
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"failed: {type(error).__name__}: {text}"


class Runner:
    """One network's training step in this process: built, counted, warmed up (compiled), then timed on demand."""

    def __init__(self, key: str, plan: Plan, batch: int, device: torch.device, mode: str, compile_backend: str):
        self.key, self.plan, self.batch, self.device = key, plan, batch, device
        self.compiled, self.compile_backend = mode == "compiled", compile_backend
        self.step: Optional[TrainingStep] = None

    def setup(self, count_flops: bool = True) -> dict[str, Any]:
        """Build, count FLOPs (unless told not to), run the first (compiling) step; the entry's fields."""
        step = TrainingStep(self.key, self.plan, self.batch, self.device, self.compiled, self.compile_backend)
        entry: dict[str, Any] = {"params": step.num_parameters}
        if count_flops:
            entry["flops"] = step.forward_flops()
        if self.compiled:
            from torch._dynamo.utils import counters

            counters.clear()
        torch.manual_seed(0)  # the first step's random draws (Bilateral's points) do not depend on the FLOP count's
        _sync(self.device)
        t0 = time.perf_counter()
        entry["first_loss"] = step()
        _sync(self.device)
        entry["first_step_s"] = round(time.perf_counter() - t0, 3)
        if self.compiled:
            entry.update(compile_counters())
        self.step = step
        return entry

    def time(self, steps: int) -> tuple[float, float, list[float]]:
        assert self.step is not None
        return timed(self.step, self.device, steps)

    def cuda_peak(self) -> int:
        """``torch.cuda.max_memory_allocated`` over one step."""
        assert self.step is not None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step()
        _sync(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def profile(self) -> tuple[list[dict], Optional[int]]:
        """The op table and (CPU) the peak bytes of one profiled step, parameters and optimizer state included."""
        assert self.step is not None
        top, peak = profile_step(self.step)
        return top, None if peak is None else self.step.state_bytes() + peak

    def close(self) -> None:
        self.step = None


# ------------------------------------------------------------------------------------------------ before / after
class BeforeTree:
    """The networks as another commit builds them, timed by a worker process between this run's own measurements.

    ``git archive <ref>`` is unpacked into a temporary folder (a plain export: no worktree, nothing of this checkout
    touched); a worker runs this file on that folder's package (``--worker``; JSON lines on its stdin and stdout).
    Both processes wait on each other, so only one of them runs at a time.
    """

    def __init__(self, ref: str, threads: int) -> None:
        import subprocess
        import tempfile

        self.ref = ref
        self.commit = subprocess.run(
            ["git", "rev-parse", ref], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()
        self.folder = Path(tempfile.mkdtemp(prefix="network-speed-before-"))
        archive = subprocess.run(
            ["git", "archive", "--format=tar", self.commit], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(self.folder)], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=str(self.folder), **{TREE_VARIABLE: str(self.folder)})
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )

    def call(self, **request: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the --before worker ({self.ref}) exited (code {self.process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        import shutil

        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.call(op="quit")
            self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


class RemoteRunner:
    """A :class:`Runner` in the ``--before`` worker."""

    def __init__(
        self,
        tree: BeforeTree,
        key: str,
        plan: Plan,
        tiny: bool,
        batch: int,
        device: torch.device,
        mode: str,
        compile_backend: str,
    ):
        self.tree, self.key = tree, key
        self.spec = {
            "key": key,
            "plan": plan.name,
            "tiny": tiny,
            "batch": batch,
            "device": str(device),
            "mode": mode,
            "compile_backend": compile_backend,
        }

    def setup(self) -> dict[str, Any]:
        # FLOPs are counted in this tree (the worker's package may predate the counter): see measure_plan
        return self.tree.call(op="setup", **self.spec)

    def time(self, steps: int) -> tuple[float, float, list[float]]:
        wall, cpu, losses = self.tree.call(op="time", key=self.key, steps=steps)
        return wall, cpu, losses

    def close(self) -> None:
        self.tree.call(op="close", key=self.key)


def worker() -> None:
    """``--worker``: Runners on this process's package, driven by JSON requests on stdin (see :class:`BeforeTree`)."""
    import nnunet_sparseattn

    protocol, sys.stdout = sys.stdout, sys.stderr  # prints go to stderr; stdout carries the replies only
    tree = os.environ.get(TREE_VARIABLE, "")
    runners: dict[str, Runner] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if not str(Path(nnunet_sparseattn.__file__).resolve()).startswith(str(Path(tree).resolve())):
                raise RuntimeError(f"the worker imported {nnunet_sparseattn.__file__}, not the package in {tree}")
            op = request.pop("op")
            if op == "quit":
                break
            if op == "setup":
                plan = load_plan(request["plan"])
                plan = tiny_plan(plan) if request["tiny"] else plan
                runner = Runner(
                    request["key"],
                    plan,
                    request["batch"],
                    torch.device(request["device"]),
                    request["mode"],
                    request["compile_backend"],
                )
                result: Any = runner.setup(count_flops=False)
                runners[request["key"]] = runner
            elif op == "time":
                result = runners[request["key"]].time(request["steps"])
            elif op == "close":
                runners.pop(request["key"]).close()
                gc.collect()
                result = None
            else:
                raise ValueError(f"unknown request {op!r}")
            reply: dict[str, Any] = {"result": result}
        except Exception as error:
            reply = {"error": _failure(error)}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


def measure_plan(
    plan: Plan,
    keys: Sequence[str],
    device: torch.device,
    mode: str,
    batch: int,
    repeats: int,
    steps: int,
    profile: bool,
    inference: bool,
    compile_backend: str,
    save: Callable[[dict], None],
    before: Optional[BeforeTree] = None,
    tiny: bool = False,
) -> dict[str, Any]:
    """Every network of ``keys`` on ``plan`` (and, with ``before``, each of ours as that commit builds it): built,
    warmed up (compiled), timed in rotating rounds, profiled."""
    record: dict[str, Any] = {
        "source": plan.source,
        "patch_size": list(plan.patch_size),
        "plans_batch_size": plan.batch_size,
        "batch_size": batch,
        "input_channels": plan.input_channels,
        "num_classes": plan.num_classes,
        "networks": {},
    }
    slots: list[tuple[dict, Any]] = []  # (entry, runner), in timing order
    for key in keys:
        entry: dict[str, Any] = {"label": NETWORKS[key].label, "trainer": NETWORKS[key].trainer}
        record["networks"][key] = entry
        slots.append((entry, Runner(key, plan, batch, device, mode, compile_backend)))
    if before is not None:
        record["before"] = {"ref": before.ref, "commit": before.commit, "networks": {}}
        for key in keys:
            if key != STOCK:  # nnU-Net's network is the same in both trees
                entry = {"label": NETWORKS[key].label + " (before)", "trainer": NETWORKS[key].trainer}
                record["before"]["networks"][key] = entry
                slots.append((entry, RemoteRunner(before, key, plan, tiny, batch, device, mode, compile_backend)))
    ready: list[tuple[dict, Any]] = []
    for entry, runner in slots:
        try:
            entry.update(runner.setup())
            entry["status"] = "done"
            ready.append((entry, runner))
        except Exception as error:  # a network that cannot be built or stepped is recorded, the others go on
            entry["status"] = _failure(error)
            print(f"  {plan.name} {entry['label']}: {entry['status']}", flush=True)
        save(record)
    for r in range(repeats if ready else 0):
        shift = r % len(ready)
        for entry, runner in ready[shift:] + ready[:shift]:
            wall, cpu, losses = runner.time(steps)
            entry.setdefault("s_per_step_runs", []).append(round(wall, 4))
            entry.setdefault("cpu_s_per_step_runs", []).append(round(cpu, 4))
            entry.setdefault("losses", []).extend(losses)
        print(
            f"  {plan.name} round {r + 1}/{repeats}: "
            + ", ".join(f"{e['label']} {e['s_per_step_runs'][-1]:.3f} s" for e, _ in ready),
            flush=True,
        )
    for entry, runner in ready:
        entry["s_per_step"] = round(float(np.median(entry["s_per_step_runs"])), 4)
        entry["cpu_s_per_step"] = round(float(np.median(entry["cpu_s_per_step_runs"])), 4)
        entry["losses_finite"] = bool(np.all(np.isfinite(entry.pop("losses") + [entry["first_loss"]])))
        if mode == "compiled":
            entry["compile_s"] = round(entry["first_step_s"] - entry["s_per_step"], 2)
        if isinstance(runner, Runner):
            if device.type == "cuda":
                entry["peak_bytes"] = runner.cuda_peak()
            if profile:
                entry["top_ops"], cpu_peak = runner.profile()
                if cpu_peak is not None:
                    entry["peak_bytes"] = cpu_peak
        runner.close()
        save(record)
    for key, entry in record.get("before", {}).get("networks", {}).items():
        now = record["networks"][key]
        if entry.get("params") is not None and entry.get("params") == now.get("params") and "flops" in now:
            entry["flops"] = now["flops"]  # the same architecture (same parameters): the FLOPs counted here
    stock = record["networks"].get(STOCK, {})
    if stock.get("status") == "done":
        entries = list(record["networks"].values()) + list(record.get("before", {}).get("networks", {}).values())
        for entry in (e for e in entries if e.get("status") == "done"):
            vs: dict[str, Any] = {}
            flops = entry["flops"] / stock["flops"] if "flops" in entry else None
            if flops is not None:
                vs["flops"] = round(flops, 4)
            for what in ("s_per_step", "cpu_s_per_step"):  # ratios within each round: neighbours in time
                per_round = [t / s for t, s in zip(entry[f"{what}_runs"], stock[f"{what}_runs"])]
                vs[what] = _ratio_stats(per_round)
                if flops is not None:
                    vs[what.replace("s_per_step", "time_per_flop")] = _ratio_stats([x / flops for x in per_round])
            if "peak_bytes" in entry and "peak_bytes" in stock:
                vs["peak_bytes"] = round(entry["peak_bytes"] / stock["peak_bytes"], 4)
            entry["vs_stock"] = vs
    for key, entry in record.get("before", {}).get("networks", {}).items():
        now = record["networks"][key]
        if "first_loss" in entry and "first_loss" in now:  # same seed, same batch: the same loss, to round-off
            entry["first_loss_difference"] = abs(entry["first_loss"] - now["first_loss"])
    save(record)
    gc.collect()
    if inference:
        for key in keys:
            entry = record["networks"][key]
            try:
                entry["inference"] = measure_inference(key, plan, device)
            except Exception as error:
                entry["inference"] = {"status": _failure(error)}
            save(record)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return record


def _commit() -> Optional[str]:
    """This checkout's commit (``+dirty`` with uncommitted changes to tracked files), None outside git."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def default_output(device: torch.device, mode: str, tiny: bool) -> Path:
    return RESULTS / f"network-speed-{device.type}-{mode}{'-tiny' if tiny else ''}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nnunet_sparseattn.harness.machine import describe_machine, load_average

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # nnU-Net's trainer and predictor set it
    keys = [k.strip() for k in args.networks.split(",") if k.strip()]
    unknown = [k for k in keys if k not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}: choose from {', '.join(NETWORKS)}")
    out = Path(args.out) if args.out else default_output(device, args.mode, args.tiny)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "command": " ".join(["python", "benchmarks/network_speed.py", *(args.argv or [])]),
        "device": device.type,
        "machine": describe_machine(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "mode": args.mode,
        "precision": "fp16 autocast + GradScaler" if device.type == "cuda" else "fp32",
        "compile_backend": args.compile_backend if args.mode == "compiled" else None,
        "repeats": args.repeats,
        "steps_per_round": args.steps,
        "date": time.strftime("%Y-%m-%d"),
        "load_average_start": load_average(),
        "commit": _commit(),
        "plans": {},
    }
    started = time.perf_counter()
    before = BeforeTree(args.before, args.threads) if args.before else None
    if before is not None:
        result["before"] = {"ref": before.ref, "commit": before.commit}

    def save(plan_name: str) -> Callable[[dict], None]:
        def write(record: dict) -> None:
            result["plans"][plan_name] = record
            result["load_average_end"] = load_average()
            result["wall_s"] = round(time.perf_counter() - started, 1)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")  # after every measurement: a killed run keeps it

        return write

    try:
        for name in [p.strip() for p in args.plans.split(",") if p.strip()]:
            plan = load_plan(name)
            if args.tiny:
                plan = tiny_plan(plan)
            cap = args.batch_cap if args.batch_cap is not None else (2 if device.type == "cpu" else None)
            caps = dict(c.split("=") for c in args.plan_batch.split(",") if "=" in c) if args.plan_batch else {}
            batch = int(caps.get(name, min(plan.batch_size, cap) if cap else plan.batch_size))
            print(
                f"{name}: patch {'x'.join(map(str, plan.patch_size))}, batch {batch} (plans: {plan.batch_size}), "
                f"{device.type} {args.mode}",
                flush=True,
            )
            inference = args.inference and (not args.inference_plans or name in args.inference_plans.split(","))
            measure_plan(
                plan,
                keys,
                device,
                args.mode,
                batch,
                args.repeats,
                args.steps,
                not args.no_profile,
                inference,
                args.compile_backend,
                save(name),
                before,
                args.tiny,
            )
            print(plan_table(result, name), flush=True)
    finally:
        if before is not None:
            before.close()
    print(f"wrote {out}")
    return result


# ------------------------------------------------------------------------------------------------------ tables
def _s(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3g}"


def _gib(x: Optional[int]) -> str:
    return "–" if x is None else f"{x / 2**30:.2f} GiB"


def _range(stats: Optional[dict]) -> str:
    if not stats:
        return "–"
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


def plan_table(result: dict, plan_name: str) -> str:
    plan = result["plans"][plan_name]
    cuda = result["device"] == "cuda"
    cpu = not cuda
    head = (
        "| network | params | GFLOPs fwd | s/step | vs stock: s/step | FLOPs | time per FLOP | "
        + ("CPU time per FLOP | " if cpu else "")
        + "peak memory "
        "| vs stock | "
        + ("of the planner's 8 GB | " if cuda else "")
        + ("compile s | graph breaks | " if result["mode"] == "compiled" else "")
        + "inference s/case (tiles) | "
        + ("inference peak | " if cuda else "")
        + "status |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for entry in plan["networks"].values():
        vs = entry.get("vs_stock", {})
        inf = entry.get("inference", {})
        cells = [
            entry["label"],
            f"{entry['params'] / 1e6:.2f} M" if "params" in entry else "–",
            f"{entry['flops'] / 1e9:.1f}" if "flops" in entry else "–",
            _s(entry.get("s_per_step")),
            _range(vs.get("s_per_step")),
            f"{vs['flops']:.2f}" if "flops" in vs else "–",
            _range(vs.get("time_per_flop")),
        ]
        if cpu:
            cells.append(_range(vs.get("cpu_time_per_flop")))
        cells += [_gib(entry.get("peak_bytes")), f"{vs['peak_bytes']:.2f}" if "peak_bytes" in vs else "–"]
        if cuda:  # the planning target holds at the plans' batch only
            peak = entry.get("peak_bytes")
            cells.append("–" if peak is None else f"{peak / PLANNER_VRAM_BYTES:.0%}")
        if result["mode"] == "compiled":
            cells += [_s(entry.get("compile_s")), str(entry.get("graph_breaks", "–"))]
        cells.append(f"{inf['s_per_case']:.3g} ({inf['tiles']})" if "s_per_case" in inf else inf.get("status", "–"))
        if cuda:
            cells.append(_gib(inf.get("peak_bytes")))
        status = entry.get("status", "–")
        if entry.get("losses_finite") is False:
            status += ", NON-FINITE LOSS"
        cells.append(status)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def before_table(result: dict, plan_name: str) -> str:
    """Our networks before (``--before``) and after, timed in the same rounds: ratios to the same stock steps."""
    plan = result["plans"][plan_name]
    if "before" not in plan:
        return ""
    rows = [
        "| network | time per FLOP vs stock: before | after | CPU time per FLOP: before | after | s/step: before "
        "| after | first loss: before - after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, old in plan["before"]["networks"].items():
        new = plan["networks"][key]
        ov, nv = old.get("vs_stock", {}), new.get("vs_stock", {})
        diff = old.get("first_loss_difference")
        rows.append(
            f"| {new['label']} | {_range(ov.get('time_per_flop'))} | {_range(nv.get('time_per_flop'))} | "
            f"{_range(ov.get('cpu_time_per_flop'))} | {_range(nv.get('cpu_time_per_flop'))} | "
            f"{_s(old.get('s_per_step'))} | {_s(new.get('s_per_step'))} | "
            f"{'–' if diff is None else f'{diff:.1e}'} |"
        )
    return "\n".join(rows)


def ops_table(result: dict, plan_name: str) -> str:
    """Rank x network: the ten most expensive operators of one step, with their share of the step's self time."""
    nets = [e for e in result["plans"][plan_name]["networks"].values() if e.get("top_ops")]
    if not nets:
        return ""
    rows = ["| # | " + " | ".join(e["label"] for e in nets) + " |", "|---|" + "---|" * len(nets)]
    for i in range(max(len(e["top_ops"]) for e in nets)):
        cells = []
        for e in nets:
            op = e["top_ops"][i] if i < len(e["top_ops"]) else None
            cells.append("" if op is None else f"`{op['op'].removeprefix('aten::')}` {op['share']:.0%}")
        rows.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


# What the ten costliest operators of a step are grouped into for the time split (see ``split_table``)
OP_GROUPS = (
    ("convolutions", lambda op: "convolution" in op),
    ("attention and linear", lambda op: "scaled_dot_product" in op or op in ("aten::mm", "aten::bmm", "aten::addmm")),
    ("layout copies (`copy_`)", lambda op: op == "aten::copy_"),
)


def split_table(result: dict, plan_name: str) -> str:
    """Network x group: ms of one profiled step in convolutions, attention and linear layers, layout copies and the
    rest, from the ten costliest operators (the step's total is implied by their shares; "everything else" is the
    total minus the three groups: norms, activations, adds and every operator outside the ten)."""
    nets = [e for e in result["plans"][plan_name]["networks"].values() if e.get("top_ops")]
    if not nets:
        return ""
    head = ["network", "step (profiled)", *(name for name, _ in OP_GROUPS), "everything else"]
    rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for e in nets:
        ops = [o for o in e["top_ops"] if o["share"] > 0]
        total = sum(o["self_ms"] for o in ops) / sum(o["share"] for o in ops)
        groups = [sum(o["self_ms"] for o in ops if member(o["op"])) for _, member in OP_GROUPS]
        cells = [f"{total:.0f}", *(f"{g:.0f}" for g in groups), f"{total - sum(groups):.0f}"]
        rows.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render(result: dict) -> str:
    lines = [
        f"### {result['device'].upper()}, {result['mode']} ({result['precision']}) on {result['machine']} "
        f"({result['date']})",
        "",
        f"Command: `{result['command']}` at commit {str(result.get('commit'))[:10]}  ",
        f"torch {result['torch']}, {result['threads']} threads, {result['repeats']} rounds x "
        f"{result['steps_per_round']} step(s), load average {result.get('load_average_start')} at the start, "
        f"{result.get('load_average_end')} at the end, {result.get('wall_s', 0) / 60:.0f} min. Ratios are "
        "medians (min-max) of per-round ratios; FLOPs: the training forward, attention counted as its "
        "arithmetic (`countable_attention`; before: the same count where the network has the same parameters); "
        "CPU time: the process's own CPU seconds (steadier under load).",
        "",
    ]
    for name, plan in result["plans"].items():
        lines += [
            f"**{name}**: patch {'x'.join(map(str, plan['patch_size']))}, batch {plan['batch_size']} (plans: "
            f"{plan['plans_batch_size']}), {plan['input_channels']} input channel(s), {plan['num_classes']} "
            f"classes. Plans: {plan['source']}.",
            "",
            plan_table(result, name),
            "",
        ]
        if "before" in plan:
            lines += [
                f"Before (`{plan['before']['ref']}`, {plan['before']['commit'][:10]}) and after, in the same rounds:",
                "",
                before_table(result, name),
                "",
            ]
        ops = ops_table(result, name)
        if ops:
            lines += [
                "Ten most expensive operators of one step (self time, share of the step):",
                "",
                ops,
                "",
                "Where that step's time goes, ms (the ten operators grouped; everything else: the step minus them):",
                "",
                split_table(result, name),
                "",
            ]
    return "\n".join(lines)


def render_section(files: Sequence[Path]) -> str:
    parts = [
        "<!-- written by benchmarks/network_speed.py from benchmarks/results/network-speed-*.json: do not edit -->"
    ]
    for path in files:
        result = json.loads(path.read_text())
        if result.get("schema") == SCHEMA:
            parts += ["", render(result)]
    return "\n".join(parts) + "\n"


def update_docs(docs: Path = DOCS, results: Path = RESULTS) -> None:
    from benchmarks.accuracy import splice_section

    files = sorted(p for p in results.glob("network-speed-*.json") if not p.stem.endswith("-tiny"))
    docs.write_text(splice_section(docs.read_text(), render_section(files), MARKERS))
    print(f"updated the network-speed section of {docs}")


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--mode",
        choices=("eager", "compiled"),
        default="eager",
        help="compiled: torch.compile of the network and the Dice term, as nnU-Net's trainer on CUDA",
    )
    ap.add_argument("--plans", default=",".join(PLANS), help=f"comma-separated, from {', '.join(PLANS)}")
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each times every network (default 3)")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per network and round (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-cap", type=int, default=None, help="largest batch (default: 2 on the CPU, none on CUDA)")
    ap.add_argument("--plan-batch", default="", help="per-plan batch, e.g. six_stage_128_3d=1 (overrides the cap)")
    ap.add_argument("--inference", action="store_true", help="also time one sliding-window case per plan")
    ap.add_argument("--inference-plans", default="", help="only these plans get --inference (comma-separated)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled step (op tables, CPU memory)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (dry runs: eager)")
    ap.add_argument("--tiny", action="store_true", help="dry-run sizes: features / 8, patch / 4, batch 1")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/network-speed-...json)")
    ap.add_argument("--update-docs", action="store_true", help="rewrite BENCHMARKS.md's network-speed section")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the tables of a results file")
    ap.add_argument("--docs-only", action="store_true", help="only rewrite BENCHMARKS.md from the results files")
    ap.add_argument(
        "--before",
        default=None,
        metavar="GIT_REF",
        help="also time our networks as this commit builds them, interleaved (before/after ratios)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # --before's worker process
    args = ap.parse_args(argv)
    args.argv = argv
    if args.worker:
        torch.set_num_threads(args.threads)
        worker()
        return
    if args.table:
        print(render(json.loads(Path(args.table).read_text())))
        return
    if not args.docs_only:
        run(args)
    if args.update_docs or args.docs_only:
        update_docs()


if __name__ == "__main__":
    main()

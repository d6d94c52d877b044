"""The network speed benchmark's measuring: the plans, each network as its trainer builds it, nnU-Net's training
step, its FLOPs, memory and profile, the sliding-window case, and one plan measured in rotating rounds
(:func:`measure_plan`). What is measured and why: ``benchmarks/network_speed.py``'s docstring.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import pydoc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from benchmarks.common import PLANS_DIR, cpu_peak_bytes, memory_events, sync
from nnunet_sparseattn.plans.variants import VARIANTS

PLANS = ("hippocampus_3d_fullres", "isic2017_2d", "six_stage_128_3d")
STOCK = "stock"


@dataclass(frozen=True)
class NetworkSpec:
    """One benchmarked network: the class our trainer builds and the trainer's ``network_kwargs``."""

    label: str
    trainer: str
    network_class: Optional[str]  # None: nnU-Net's get_network_from_plans (the plans' own class)
    network_kwargs: dict = field(default_factory=dict)


def benchmark_networks() -> dict[str, NetworkSpec]:
    """Stock nnU-Net, then every registered method (label: a --before tree older than the registry has none)."""
    return {
        STOCK: NetworkSpec("stock nnU-Net", "nnUNetTrainer", None),
        **{
            k: NetworkSpec(getattr(v, "label", v.plans_suffix), v.trainer, v.network_class) for k, v in VARIANTS.items()
        },
    }


NETWORKS = benchmark_networks()  # the methods registered when the benchmark starts
# The VRAM the plans were made for: nnU-Net's default planner (ExperimentPlanner, gpu_memory_target_in_gb=8)
# nnunet_sparseattn.memory.PLANNER_TARGET_BYTES, restated: --before runs this file against older packages
PLANNER_VRAM_BYTES = 8 * 10**9


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
    # our PlansNetwork class as the package in use has it (a --before tree's may predate today's helpers)
    cls: Any = pydoc.locate(spec.network_class)
    if cls is None:
        raise ImportError(f"{spec.network_class} is not importable")
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
    without DDP: DC + CE with ``MemoryEfficientSoftDiceLoss`` in a ``DeepSupervisionWrapper``. The package's
    ``memory.nnunet_loss``, restated (``--before`` runs this file against older packages; a test holds the
    two to the same saved bytes)."""
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
        self.model: Callable[[torch.Tensor], Any] = self.network
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
        return held_bytes(self.network, self.optimizer)

    @torch.no_grad()
    def forward_flops(self) -> int:
        """FLOPs of one training forward on the step's batch (see :func:`countable_attention`)."""
        from nnunet_sparseattn.complexity import flop_counter

        with countable_attention(self.network), self.autocast(), flop_counter() as counter:
            self.network(self.data)
        return int(counter.get_total_flops())


def held_bytes(network: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The bytes of the parameters and of the optimizer's state (momentum, Adam's moments)."""
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in optimizer.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return int(params + state)


@contextlib.contextmanager
def countable_attention(network: nn.Module) -> Iterator[None]:
    """The package's ``use_backend(network, "gather")``, restated: ``--before`` runs this file against commits that
    predate it.

    Routed attention counted as the FLOPs it does: flex attention's formula counts the dense score matrix whatever
    the block mask skips, so while counting, routed attention runs through its gather backend (the same function, on
    the routed key regions only). SDPA itself is counted by ``nnunet_sparseattn.complexity.flop_counter`` (it adds
    the formula torch lacks for the CPU's kernel)."""
    from nnunet_sparseattn.layers.sparse_attention import BACKENDS

    routed: list[Any] = [m for m in network.modules() if getattr(m, "backend", None) in BACKENDS]
    saved = [m.backend for m in routed]
    try:
        for m in routed:
            m.backend = "gather"
        yield
    finally:
        for m, backend in zip(routed, saved):
            m.backend = backend


def timed(step: Callable[[], float], device: torch.device, steps: int) -> tuple[float, float, list[float]]:
    """Mean wall seconds and mean process CPU seconds per step over ``steps`` steps, and the losses. (On a shared
    CPU the process time counts only the cycles this process got: steadier than the wall time under load.)"""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    losses = [step() for _ in range(steps)]
    sync(device)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps, losses


def profile_step(step: TrainingStep, rows: int = 10) -> tuple[list[dict], Optional[int]]:
    """The ``rows`` most expensive operators of one step by self time, and (CPU) the step's peak tensor bytes."""
    from torch.profiler import ProfilerActivity, profile

    cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, profile_memory=not cuda) as prof:
        step()
        sync(step.device)
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
    return table, None if cuda else cpu_peak_bytes(memory_events(prof))


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
            channels_tile = (slice(None), *tile)  # every channel (a name: mypy reads a[(x, *y)] as 3.11 syntax)
            prediction = network(data[channels_tile][None])[0]
            prediction *= gaussian
            logits[channels_tile] += prediction
            weight[tile] += gaussian
        torch.div(logits, weight, out=logits)
        unpadded = (slice(None), *revert[1:])
        return logits[unpadded]


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
    sync(device)
    t0 = time.perf_counter()
    logits = sliding_window_logits(network, image, plan.patch_size, plan.num_classes, device)
    sync(device)
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


# ---------------------------------------------------------------------------------------------- one plan, rounds
def _ratio_stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(float(np.median(values)), 4),
        "min": round(float(min(values)), 4),
        "max": round(float(max(values)), 4),
    }


def compile_counters() -> dict[str, Any]:
    """Dynamo's graph breaks (count and distinct reasons) and graphs compiled since the counters were cleared."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]  # counters: a defaultdict of Counters
    return {
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": sorted(str(r)[:200] for r in breaks),
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
    }


def failure(error: BaseException) -> str:
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
        sync(self.device)
        t0 = time.perf_counter()
        entry["first_loss"] = step()
        sync(self.device)
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
        sync(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))

    def profile(self) -> tuple[list[dict], Optional[int]]:
        """The op table and (CPU) the peak bytes of one profiled step, parameters and optimizer state included."""
        assert self.step is not None
        top, peak = profile_step(self.step)
        return top, None if peak is None else self.step.state_bytes() + peak

    def close(self) -> None:
        self.step = None


class StepRunner(Protocol):
    """What :func:`measure_plan` times: a :class:`Runner` here, or one in the ``--before`` worker."""

    def setup(self) -> dict[str, Any]: ...

    def time(self, steps: int) -> tuple[float, float, list[float]]: ...

    def close(self) -> None: ...


class BeforeTree(Protocol):
    """The ``--before`` tree as :func:`measure_plan` uses it (``benchmarks.speed.before.BeforeTree``; declared here
    so that this module imports nothing from the one that imports it)."""

    ref: str
    commit: str

    def runner(self, key: str, plan_name: str, settings: Settings) -> StepRunner: ...


@dataclass(frozen=True)
class Settings:
    """How each plan is measured (the command line's options)."""

    device: torch.device
    mode: str  # "eager" or "compiled"
    batch: int
    repeats: int
    steps: int
    profile: bool
    inference: bool
    compile_backend: str = "inductor"
    tiny: bool = False


Slot = tuple[dict[str, Any], StepRunner]  # a network's results entry and what times it


def measure_plan(
    plan: Plan,
    keys: Sequence[str],
    settings: Settings,
    save: Callable[[dict], None],
    before: Optional[BeforeTree] = None,
) -> dict[str, Any]:
    """Every network of ``keys`` on ``plan`` (and, with ``before``, each of ours as that commit builds it): built,
    warmed up (compiled), timed in rotating rounds, profiled; ``save`` gets the record after every measurement."""
    record: dict[str, Any] = {
        "source": plan.source,
        "patch_size": list(plan.patch_size),
        "plans_batch_size": plan.batch_size,
        "batch_size": settings.batch,
        "input_channels": plan.input_channels,
        "num_classes": plan.num_classes,
        "networks": {},
    }
    ready = _set_up(_slots(record, plan, keys, settings, before), plan.name, record, save)
    _time_rounds(ready, plan.name, settings)
    for entry, runner in ready:
        _finish(entry, runner, settings)
        save(record)
    _compare_to_stock(record)
    save(record)
    gc.collect()
    if settings.inference:
        for key in keys:
            entry = record["networks"][key]
            try:
                entry["inference"] = measure_inference(key, plan, settings.device)
            except Exception as error:
                entry["inference"] = {"status": failure(error)}
            save(record)
            gc.collect()
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
    return record


def _slots(
    record: dict[str, Any], plan: Plan, keys: Sequence[str], settings: Settings, before: Optional[BeforeTree]
) -> list[Slot]:
    """Each network's entry in ``record`` and its runner, in timing order: ours here, then ours before."""
    slots: list[Slot] = []
    for key in keys:
        entry: dict[str, Any] = {"label": NETWORKS[key].label, "trainer": NETWORKS[key].trainer}
        record["networks"][key] = entry
        runner = Runner(key, plan, settings.batch, settings.device, settings.mode, settings.compile_backend)
        slots.append((entry, runner))
    if before is not None:
        record["before"] = {"ref": before.ref, "commit": before.commit, "networks": {}}
        for key in keys:
            if key != STOCK:  # nnU-Net's network is the same in both trees
                entry = {"label": NETWORKS[key].label + " (before)", "trainer": NETWORKS[key].trainer}
                record["before"]["networks"][key] = entry
                slots.append((entry, before.runner(key, plan.name, settings)))
    return slots


def _set_up(slots: list[Slot], plan_name: str, record: dict[str, Any], save: Callable[[dict], None]) -> list[Slot]:
    """Build and warm up each runner; those that work (a failure is recorded and the others go on)."""
    ready: list[Slot] = []
    for entry, runner in slots:
        try:
            entry.update(runner.setup())
            entry["status"] = "done"
            ready.append((entry, runner))
        except Exception as error:  # a network that cannot be built or stepped is recorded, the others go on
            entry["status"] = failure(error)
            print(f"  {plan_name} {entry['label']}: {entry['status']}", flush=True)
        save(record)
    return ready


def _time_rounds(ready: list[Slot], plan_name: str, settings: Settings) -> None:
    """``repeats`` rounds, each timing every network once, the order rotated each round (see the docstring)."""
    for r in range(settings.repeats if ready else 0):
        shift = r % len(ready)
        for entry, runner in ready[shift:] + ready[:shift]:
            wall, cpu, losses = runner.time(settings.steps)
            entry.setdefault("s_per_step_runs", []).append(round(wall, 4))
            entry.setdefault("cpu_s_per_step_runs", []).append(round(cpu, 4))
            entry.setdefault("losses", []).extend(losses)
        print(
            f"  {plan_name} round {r + 1}/{settings.repeats}: "
            + ", ".join(f"{e['label']} {e['s_per_step_runs'][-1]:.3f} s" for e, _ in ready),
            flush=True,
        )


def _finish(entry: dict[str, Any], runner: StepRunner, settings: Settings) -> None:
    """Medians, compile time, and (in this process) peak memory and the profiled step; the runner closed."""
    entry["s_per_step"] = round(float(np.median(entry["s_per_step_runs"])), 4)
    entry["cpu_s_per_step"] = round(float(np.median(entry["cpu_s_per_step_runs"])), 4)
    entry["losses_finite"] = bool(np.all(np.isfinite(entry.pop("losses") + [entry["first_loss"]])))
    if settings.mode == "compiled":
        entry["compile_s"] = round(entry["first_step_s"] - entry["s_per_step"], 2)
    if isinstance(runner, Runner):
        if settings.device.type == "cuda":
            entry["peak_bytes"] = runner.cuda_peak()
        if settings.profile:
            entry["top_ops"], cpu_peak = runner.profile()
            if cpu_peak is not None:
                entry["peak_bytes"] = cpu_peak
    runner.close()


def _compare_to_stock(record: dict[str, Any]) -> None:
    """Ratios to stock nnU-Net within each round, and the before entries' FLOPs and first-loss differences."""
    before = record.get("before", {}).get("networks", {})
    for key, entry in before.items():
        now = record["networks"][key]
        if entry.get("params") is not None and entry.get("params") == now.get("params") and "flops" in now:
            entry["flops"] = now["flops"]  # the same architecture (same parameters): the FLOPs counted here
    stock = record["networks"].get(STOCK, {})
    if stock.get("status") == "done":
        for entry in (e for e in [*record["networks"].values(), *before.values()] if e.get("status") == "done"):
            entry["vs_stock"] = _vs_stock(entry, stock)
    for key, entry in before.items():
        now = record["networks"][key]
        if "first_loss" in entry and "first_loss" in now:  # same seed, same batch: the same loss, to round-off
            entry["first_loss_difference"] = abs(entry["first_loss"] - now["first_loss"])


def _vs_stock(entry: dict[str, Any], stock: dict[str, Any]) -> dict[str, Any]:
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
    return vs

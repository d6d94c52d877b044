"""Training memory predicted for the GPU: what one nnU-Net training step holds, counted without a GPU.

    make bench-memory        # = python -m benchmarks.training_memory --update-docs (a few minutes on 2 cores)

Per plan (``benchmarks/plans/``, at the plans' own patch and batch size) and network (stock nnU-Net's
``PlainConvUNet`` and ours, built as ``benchmarks.network_speed`` builds them, i.e. as the trainers do):

- saved for backward: the bytes autograd keeps between forward and backward over the network's forward with deep
  supervision and nnU-Net's loss (Dice + CE with its deep-supervision weights), counted by
  :class:`nnunet_sparseattn.layers.checkpointing.SavedTensorCounter` (``saved_tensors_hooks``, one entry per storage,
  parameters left out). It runs on fake CUDA tensors (``FakeTensorMode``: shapes and dtypes, no memory, no GPU) so
  that nnU-Net's GPU precision is counted: fp16 autocast with CUDA's autocast op lists (switched on through torch's
  autocast state functions, as ``torch.autocast("cuda")`` refuses without a GPU), and float32 beside it.
  Routed attention is counted on its ``gather`` path (the one the CPU trains with); on a GPU it runs flex attention,
  which keeps only q, k, v, its output and the log-sum-exp: the figures are an upper bound for BSA and MDSA there.
- parameters, their gradients (float32, also under autocast) and the optimizer's state: SGD momentum (one copy of
  the parameters) for stock nnU-Net, BSA and MDSA; AdamW (two copies) for the bilateral network's default trainer.
- total = saved + parameters + gradients + optimizer state: an upper bound of the step's peak without workspace (at
  the end of the forward pass the gradients do not exist yet; during backward the saved tensors are freed as the
  gradients appear), without cuDNN/flex workspace and the allocator's caching.
- with activation checkpointing of the attention blocks (``PlansNetwork.enable_activation_checkpointing``, the
  plans setting ``"activation_checkpointing": true``; the bilateral network's ResNeXt encoder blocks too, which hold
  more than its attention): the same count.
- measured (CPU, float32, the plans' patch at batch 2): the same count on real tensors, against torch.profiler's
  replayed allocation events: the bytes still allocated after forward and loss (what the count should equal), and
  the peak of a whole training step (forward, backward, clip, optimizer step) plus the parameters and optimizer state
  allocated before it.

On a GPU (``--device cuda``, a step of ``benchmarks/gpu.sh main``): the prediction checked against the real thing.
Per plan and network, nnU-Net's GPU training step at the plans' own batch (fp16 autocast, ``GradScaler``, clip 12,
the default trainer's optimizer), after one warm-up step: ``torch.cuda.max_memory_allocated`` over the step against
the predicted fp16 total, with and without checkpointing (results: ``training-memory-cuda.json``, rendered with
``--table`` into its own BENCHMARKS.md section). ``--device cpu`` takes the same step under CPU autocast with the
profiler's peak instead (the gpu.sh dry run: the code path, not GPU figures).

Budget: 1.3x stock nnU-Net's total under fp16 autocast, and the 8 GB nnU-Net's planner sizes patches and batches
for (``ExperimentPlanner``'s ``gpu_memory_target_in_gb``). A network over budget is one for which checkpointing is
recommended (column "checkpointing needed").
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from benchmarks.common import (
    RESULTS,
    add_publish_arguments,
    command_line,
    cpu_peak_bytes,
    memory_events,
    publish,
    write_results,
)
from benchmarks.speed.measure import (
    NETWORKS,
    PLANS,
    STOCK,
    Plan,
    build_loss,
    build_network,
    held_bytes,
    load_plan,
    tiny_plan,
)
from nnunet_sparseattn import memory
from nnunet_sparseattn.architectures.base import PlansNetwork
from nnunet_sparseattn.layers.checkpointing import SavedTensorCounter

RESULTS_FILE = RESULTS / "training-memory.json"
MARKERS = ("<!-- training-memory:begin -->", "<!-- training-memory:end -->")
SCHEMA = 1
# optimizer state per parameter byte, as each network's default trainer configures it
OPTIMIZER = {
    STOCK: ("SGD momentum", 1),
    "bsa": ("SGD momentum", 1),
    "mdsa": ("SGD momentum", 1),
    "bilateral": ("AdamW", 2),
}
PRECISIONS = ("float32", "float16")
MEASURE_BATCH = 2
TIMED_STEPS = 2


# ------------------------------------------------------------------------------------------------- the count
def batch_tensors(plan: Plan, batch: int, device: str, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A batch of the plans' shapes and its deep-supervision targets (as nnU-Net's data loader downsamples them)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(batch, plan.input_channels, *plan.patch_size, generator=g).to(device)
    targets = []
    for scale in plan.deep_supervision_scales():
        shape = [int(round(p * s)) for p, s in zip(plan.patch_size, scale)]
        targets.append(torch.randint(0, plan.num_classes, (batch, 1, *shape), generator=g).float().to(device))
    return data, targets


def count_saved(network: nn.Module, plan: Plan, batch: int, precision: str) -> SavedTensorCounter:
    """Bytes a training forward + loss keeps for backward, on fake CUDA tensors: the trainers' own count
    (``nnunet_sparseattn.memory``, which decides the plans' "auto" checkpointing)."""
    step = memory.TrainingBatch(
        plan.patch_size, batch, plan.input_channels, plan.num_classes, plan.configuration["batch_dice"]
    )
    return memory.count_saved(network, step, "cuda", None if precision == "float32" else getattr(torch, precision))


def step_memory(key: str, network: nn.Module, saved_bytes: int) -> memory.TrainingMemory:
    """``saved_bytes`` with the parameters, their gradients and the state of ``key``'s default optimizer."""
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    return memory.TrainingMemory(saved_bytes, params, OPTIMIZER[key][1] * params)


def build(key: str, plan: Plan, checkpointing: bool) -> nn.Module:
    torch.manual_seed(0)
    network = build_network(key, plan, deep_supervision=True)
    if checkpointing and key != STOCK:
        assert isinstance(network, PlansNetwork)  # ours, not nnU-Net's
        network.enable_activation_checkpointing()
    return network


def predict(key: str, plan: Plan, precision: str, checkpointing: bool) -> dict[str, Any]:
    network = build(key, plan, checkpointing)
    t0 = time.perf_counter()
    counter = count_saved(network, plan, plan.batch_size, precision)
    step = step_memory(key, network, counter.bytes)
    return {
        "saved_bytes": step.saved_bytes,
        "saved_by_dtype": counter.by_dtype,
        "params_bytes": step.params_bytes,
        "grads_bytes": step.params_bytes,
        "optimizer_bytes": step.optimizer_bytes,
        "count_s": round(time.perf_counter() - t0, 2),
        "total_bytes": step.total_bytes,
    }


# ----------------------------------------------------------------------------------------- the CPU measurement
def optimizer_for(key: str, network: nn.Module) -> torch.optim.Optimizer:
    if OPTIMIZER[key][0] == "AdamW":  # AdamWWarmupMixin's (fused as the trainer asks for it)
        return torch.optim.AdamW(network.parameters(), 1e-3, weight_decay=5e-2, betas=(0.9, 0.98), fused=True)
    return torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)


def measure_cpu(key: str, plan: Plan, checkpointing: bool, batch: int = MEASURE_BATCH) -> dict[str, Any]:
    """Real float32 tensors on the CPU (see the module docstring): the count, the bytes left allocated by forward
    + loss, and the peak of a whole step plus the state held before it."""
    from torch.profiler import profile

    network = build(key, plan, checkpointing)
    loss = build_loss(plan, compile_dice=False)
    optimizer = optimizer_for(key, network)
    data, targets = batch_tensors(plan, batch, "cpu")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        value = loss(network(data), targets)
        value.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()

    network.train()
    step()  # the optimizer's state exists from here on, as in training
    gc.collect()
    optimizer.zero_grad(set_to_none=True)
    counter = SavedTensorCounter(exclude=list(network.parameters()))
    with profile(profile_memory=True) as prof, counter:
        value = loss(network(data), targets)
    forward_live = sum(n for _, n in memory_events(prof))
    del value
    gc.collect()
    # timed without the profiler (checkpointing's recomputation costs time): wall and this process's CPU seconds,
    # the latter steadier on a shared machine
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(TIMED_STEPS):
        step()
    seconds, cpu_seconds = (time.perf_counter() - t0) / TIMED_STEPS, (time.process_time() - c0) / TIMED_STEPS
    gc.collect()
    with profile(profile_memory=True) as prof:
        step()
    held = held_bytes(network, optimizer)
    return {
        "batch": batch,
        "precision": "float32",
        "counted_saved_bytes": counter.bytes,
        "forward_live_bytes": int(forward_live),
        "step_peak_bytes": int(cpu_peak_bytes(memory_events(prof))),
        "state_bytes": int(held),
        "step_s": round(seconds, 3),
        "step_cpu_s": round(cpu_seconds, 3),
        "predicted_total_bytes": step_memory(key, network, counter.bytes).total_bytes,
    }


# ----------------------------------------------------------------------------------- the device check (gpu.sh)
DEVICE_RESULTS_FILE = RESULTS / "training-memory-cuda.json"
DEVICE_MARKERS = ("<!-- training-memory-gpu:begin -->", "<!-- training-memory-gpu:end -->")


def device_step_peak(key: str, plan: Plan, checkpointing: bool, device: str, batch: int) -> dict[str, Any]:
    """nnU-Net's GPU training step on ``device`` (see the module docstring): the bytes allocated before it (state,
    batch) and its peak, against the predicted fp16 total."""
    from torch.profiler import profile

    network = build(key, plan, checkpointing).to(device)
    loss = build_loss(plan, compile_dice=False)
    optimizer = optimizer_for(key, network)
    scaler = torch.amp.GradScaler(device)
    data, targets = batch_tensors(plan, batch, device)
    network.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16):  # nnU-Net: forward and loss under autocast
            value = loss(network(data), targets)
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        scaler.step(optimizer)
        scaler.update()

    step()  # the optimizer's state exists from here on, as in training
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        before = held_bytes(network, optimizer) + sum(t.numel() * t.element_size() for t in (data, *targets))
        with profile(profile_memory=True) as prof:
            step()
        peak = before + cpu_peak_bytes(memory_events(prof))
    predicted = predict(key, plan, "float16", checkpointing)["total_bytes"]
    return {
        "batch": batch,
        "held_before_bytes": int(before),
        "step_peak_bytes": int(peak),
        "predicted_total_bytes": int(predicted),
        "peak_to_predicted": round(peak / predicted, 3),
    }


def run_device(plans: list[str], networks: list[str], device: str, tiny: bool = False) -> dict[str, Any]:
    """``device_step_peak`` for every plan and network, with checkpointing off and on (ours); a step that runs out
    of memory is recorded as such and the others go on."""
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line("training_memory", sys.argv[1:]),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        "plans": {},
    }
    t0 = time.perf_counter()
    for plan_name in plans:
        plan = tiny_plan(load_plan(plan_name)) if tiny else load_plan(plan_name)
        entry: dict[str, Any] = {"patch_size": list(plan.patch_size), "networks": {}}
        for key in networks:
            record: dict[str, Any] = {"label": NETWORKS[key].label}
            for checkpointing in (False, True) if key != STOCK else (False,):
                name = "checkpointed" if checkpointing else "plain"
                try:
                    record[name] = device_step_peak(key, plan, checkpointing, device, plan.batch_size)
                except torch.OutOfMemoryError as error:
                    record[name] = {"out_of_memory": str(error).splitlines()[0]}
                if device == "cuda":
                    torch.cuda.empty_cache()
                gc.collect()
                print(f"{plan_name} {key} {name}: {record[name]}", flush=True)
            entry["networks"][key] = record
        results["plans"][plan_name] = entry
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def render_device(results: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/training_memory.py --table from the device check's JSON: do not edit -->",
        "",
        f"The prediction above held against {results['device']}: nnU-Net's training step (fp16 autocast, "
        "GradScaler, clip 12, the default trainer's optimizer) at the plans' batch, after a warm-up step; peak: "
        "`torch.cuda.max_memory_allocated` over the step (on the CPU: what was allocated before it plus the peak of "
        "torch.profiler's allocation events; GB = 1e9 bytes).",
        "",
        "| plan | network | predicted total | measured peak | peak / predicted | ckpt: predicted | ckpt: peak | "
        "ckpt: peak / predicted |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]

    def cells(m: Optional[dict[str, Any]]) -> str:
        if m is None:
            return " | | "
        if "out_of_memory" in m:
            return f"{_gb(m.get('predicted_total_bytes'))} | out of memory | "
        return f"{_gb(m['predicted_total_bytes'])} | {_gb(m['step_peak_bytes'])} | {m['peak_to_predicted']}"

    for plan_name, entry in results["plans"].items():
        for r in entry["networks"].values():
            lines.append(f"| {plan_name} | {r['label']} | {cells(r.get('plain'))} | {cells(r.get('checkpointed'))} |")
    lines += ["", f"torch {results['torch']}; `{results['command']}` ({results['wall_s']} s)."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- driver
def run(plans: list[str], networks: list[str], measure: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line("training_memory", sys.argv[1:]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "budget": {"ratio_to_stock": memory.BUDGET_RATIO, "planner_bytes": memory.PLANNER_TARGET_BYTES},
        "plans": {},
    }
    t0 = time.perf_counter()
    for plan_name in plans:
        plan = load_plan(plan_name)
        entry: dict[str, Any] = {"patch_size": list(plan.patch_size), "batch_size": plan.batch_size, "networks": {}}
        for key in networks:
            record: dict[str, Any] = {"label": NETWORKS[key].label, "optimizer": OPTIMIZER[key][0]}
            for precision in PRECISIONS:
                record[precision] = predict(key, plan, precision, checkpointing=False)
                if key != STOCK:
                    record[f"{precision}_checkpointed"] = predict(key, plan, precision, checkpointing=True)
                print(
                    f"{plan_name} {key} {precision}: saved {record[precision]['saved_bytes'] / 1e9:.2f} GB, "
                    f"total {record[precision]['total_bytes'] / 1e9:.2f} GB",
                    flush=True,
                )
            if plan_name in measure:
                record["measured_cpu"] = measure_cpu(key, plan, checkpointing=False)
                if key != STOCK:
                    record["measured_cpu_checkpointed"] = measure_cpu(key, plan, checkpointing=True)
                print(f"{plan_name} {key} measured: {record['measured_cpu']}", flush=True)
                gc.collect()
            entry["networks"][key] = record
        judge(entry)
        results["plans"][plan_name] = entry
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


def judge(entry: dict[str, Any]) -> None:
    """Ratios to stock and the budget verdict, for GPU training's precision (fp16 autocast)."""
    networks = entry["networks"]
    if STOCK not in networks:
        return
    stock = networks[STOCK]["float16"]["total_bytes"]
    budget = memory.memory_budget(stock)  # the trainers' "auto" checkpointing budget
    for key, record in networks.items():
        for variant in ("float16", "float16_checkpointed"):
            if variant in record:
                record[variant]["ratio_to_stock"] = round(record[variant]["total_bytes"] / stock, 3)
                record[variant]["within_budget"] = bool(record[variant]["total_bytes"] <= budget)
        record["checkpointing_needed"] = key != STOCK and not record["float16"]["within_budget"]
    entry["budget_bytes"] = int(budget)


def _gb(n: Optional[float]) -> str:
    return "" if n is None else f"{n / 1e9:.2f}"


def render(results: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/training_memory.py from benchmarks/results/training-memory.json: do not edit -->",
        "",
        "One training step's memory at the plans' own patch and batch size, counted on fake CUDA tensors (no GPU; "
        "GB = 1e9 bytes). saved: bytes autograd keeps for backward (forward with deep supervision + nnU-Net's "
        "loss); state: parameters + gradients + optimizer state (SGD momentum; AdamW for the bilateral network); "
        "total = saved + state. fp16: CUDA's fp16 autocast, as nnU-Net trains on a GPU. ckpt: activation "
        "checkpointing of the attention blocks on (the bilateral network: also its ResNeXt encoder blocks; plans "
        'setting `"activation_checkpointing": true`). Budget: '
        f"{memory.BUDGET_RATIO}x stock nnU-Net's fp16 total, at most the planner's 8 GB; a network over it trains "
        'with checkpointing on a GPU by default (the plans setting "auto"). Routed attention counted on its gather '
        "path (an upper bound for BSA/MDSA on a GPU, where flex attention keeps less).",
        "",
        "| plan (patch, batch) | network | saved fp32 | saved fp16 | state | total fp16 | x stock | "
        "saved fp16 ckpt | total fp16 ckpt | x stock ckpt | within budget (ckpt) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for plan_name, entry in results["plans"].items():
        where = f"{plan_name} ({'x'.join(map(str, entry['patch_size']))}, {entry['batch_size']})"
        for r in entry["networks"].values():
            f16, ck = r["float16"], r.get("float16_checkpointed")
            state = f16["params_bytes"] + f16["grads_bytes"] + f16["optimizer_bytes"]
            verdict = "yes" if f16.get("within_budget") else "no"
            if ck is not None:
                verdict += f" ({'yes' if ck.get('within_budget') else 'no'})"
            lines.append(
                f"| {where} | {r['label']} | {_gb(r['float32']['saved_bytes'])} | {_gb(f16['saved_bytes'])} | "
                f"{_gb(state)} | {_gb(f16['total_bytes'])} | {f16.get('ratio_to_stock', '')} | "
                f"{_gb(ck['saved_bytes']) if ck else ''} | {_gb(ck['total_bytes']) if ck else ''} | "
                f"{ck.get('ratio_to_stock', '') if ck else ''} | {verdict} |"
            )
    measured = [(p, r) for p, e in results["plans"].items() for r in e["networks"].values() if "measured_cpu" in r]
    if measured:
        lines += [
            "",
            f"The count held against the CPU (real float32 tensors, batch {MEASURE_BATCH}; torch.profiler's "
            "allocation events): bytes left allocated after forward + loss (the count should equal them) and the "
            "peak of a whole step plus the parameters and optimizer state held before it (predicted: count + "
            "state; the measured peak adds the transient workspace), and one step's CPU time (this process's, "
            "mean of 2 steps; steadier than wall time on 2 cores shared with other jobs): checkpointing's "
            "recomputation cost on the CPU.",
            "",
            "| plan | network | counted saved | allocated after forward | predicted total | measured step peak + "
            "state | CPU s/step | ckpt: counted | ckpt: after forward | ckpt: measured peak + state | "
            "ckpt: CPU s/step |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for plan_name, r in measured:
            m, c = r["measured_cpu"], r.get("measured_cpu_checkpointed")
            lines.append(
                f"| {plan_name} | {r['label']} | {_gb(m['counted_saved_bytes'])} | {_gb(m['forward_live_bytes'])} | "
                f"{_gb(m['predicted_total_bytes'])} | {_gb(m['step_peak_bytes'] + m['state_bytes'])} | "
                f"{m.get('step_cpu_s', m['step_s'])} | "
                f"{_gb(c['counted_saved_bytes']) if c else ''} | {_gb(c['forward_live_bytes']) if c else ''} | "
                f"{_gb(c['step_peak_bytes'] + c['state_bytes']) if c else ''} | "
                f"{c.get('step_cpu_s', c['step_s']) if c else ''} |"
            )
    lines += ["", f"torch {results['torch']}; `{results['command']}` ({results['wall_s']} s)."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", default=",".join(PLANS))
    parser.add_argument("--networks", default=",".join(NETWORKS))
    # ISIC's bilateral network at batch 2 under the memory profiler was OOM-killed on this 23 GB machine (12.7 GB RSS)
    parser.add_argument(
        "--measure", default="hippocampus_3d_fullres", help="plans also measured on the CPU at batch 2 ('' for none)"
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        help="the device check instead of the count: each plan's training step on this device against the "
        "prediction (gpu.sh; cpu: its dry run)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="with --device: the plans at dry-run size (features / 8, patch / 4, batch 1)",
    )
    add_publish_arguments(parser, RESULTS_FILE)
    args = parser.parse_args(argv)
    device_check = args.device is not None or (args.table is not None and "device" in _read(args.table))
    if device_check:
        if args.device == "cuda" and not torch.cuda.is_available():
            print(
                "training_memory: error: --device cuda needs a CUDA GPU (none visible): use --device cpu",
                file=sys.stderr,
            )
            return 2
        if args.table:
            results = _read(args.table)
        else:
            plans, networks = [p for p in args.plans.split(",") if p], [n for n in args.networks.split(",") if n]
            out = DEVICE_RESULTS_FILE if args.out == RESULTS_FILE else args.out
            results = run_device(plans, networks, args.device, args.tiny)
            write_results(out, results)
        publish(render_device(results), DEVICE_MARKERS, args.update_docs)
        return 0
    if args.table:
        results = json.loads(args.table.read_text())
    else:
        results = run(
            [p for p in args.plans.split(",") if p],
            [n for n in args.networks.split(",") if n],
            [p for p in args.measure.split(",") if p],
        )
        write_results(args.out, results)
    publish(render(results), MARKERS, args.update_docs)
    return 0


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


if __name__ == "__main__":
    sys.exit(main())

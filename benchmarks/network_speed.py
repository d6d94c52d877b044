"""Network speed: one nnU-Net training step of stock ``PlainConvUNet`` and of each of our networks, side by side.

    make bench-speed                     # = .venv/bin/python -m benchmarks.network_speed --update-docs (CPU)
    python -m benchmarks.network_speed --device cuda --mode eager      # nnU-Net's CUDA defaults without compile
    python -m benchmarks.network_speed --device cuda --mode compiled --plans hippocampus_3d_fullres,isic2017_2d
    python -m benchmarks.network_speed --table benchmarks/results/network-speed-cpu-eager.json   # print tables

Plans: ``benchmarks/plans/*.json``, written by nnU-Net's planner (``benchmarks.speed_plans``). Networks are built
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

This module is the command: its options and the run; the parts are in ``benchmarks/speed/`` (measuring, the
``--before`` worker, the tables). The names other benchmarks and the tests use are importable from here.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks.common import RESULTS, ROOT, command_line
from benchmarks.speed.before import BeforeTree, worker
from benchmarks.speed.measure import (
    NETWORKS,
    PLANNER_VRAM_BYTES,
    PLANS,
    PLANS_DIR,
    STOCK,
    NetworkSpec,
    Plan,
    Runner,
    Settings,
    TrainingStep,
    build_loss,
    build_network,
    build_optimizer,
    countable_attention,
    load_plan,
    measure_inference,
    measure_plan,
    sliding_window_logits,
    tiny_plan,
)
from benchmarks.speed.report import SCHEMA, before_table, ops_table, plan_table, render, split_table, update_docs

__all__ = [  # what other benchmarks and the tests import from here
    "NETWORKS",
    "PLANNER_VRAM_BYTES",
    "PLANS",
    "PLANS_DIR",
    "RESULTS",
    "STOCK",
    "NetworkSpec",
    "Plan",
    "Runner",
    "TrainingStep",
    "before_table",
    "build_loss",
    "build_network",
    "build_optimizer",
    "countable_attention",
    "load_plan",
    "main",
    "measure_inference",
    "ops_table",
    "plan_table",
    "render",
    "sliding_window_logits",
    "split_table",
    "tiny_plan",
]


def _commit() -> Optional[str]:
    """This checkout's commit (``+dirty`` with uncommitted changes to tracked files), None outside git."""
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


def _device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # nnU-Net's trainer and predictor set it
    return device


def _header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The results file's fields about the run (the plans are added as they are measured)."""
    from nnunet_sparseattn.harness.machine import describe_machine, load_average

    return {
        "schema": SCHEMA,
        "command": command_line("network_speed", args.argv or []),
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


def _settings(args: argparse.Namespace, device: torch.device, name: str, plan: Plan) -> Settings:
    """The plan's batch (capped on the CPU, ``--plan-batch`` first) and the options it is measured with."""
    cap = args.batch_cap if args.batch_cap is not None else (2 if device.type == "cpu" else None)
    caps = dict(c.split("=") for c in args.plan_batch.split(",") if "=" in c) if args.plan_batch else {}
    return Settings(
        device=device,
        mode=args.mode,
        batch=int(caps.get(name, min(plan.batch_size, cap) if cap else plan.batch_size)),
        repeats=args.repeats,
        steps=args.steps,
        profile=not args.no_profile,
        inference=args.inference and (not args.inference_plans or name in args.inference_plans.split(",")),
        compile_backend=args.compile_backend,
        tiny=args.tiny,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every plan of ``--plans``, written to the results file after every measurement (a killed run keeps them)."""
    from nnunet_sparseattn.harness.machine import load_average

    device = _device(args)
    keys = [k.strip() for k in args.networks.split(",") if k.strip()]
    unknown = [k for k in keys if k not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}: choose from {', '.join(NETWORKS)}")
    out = Path(args.out) if args.out else default_output(device, args.mode, args.tiny)
    result = _header(args, device)
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
            settings = _settings(args, device, name, plan)
            print(
                f"{name}: patch {'x'.join(map(str, plan.patch_size))}, batch {settings.batch} (plans: "
                f"{plan.batch_size}), {device.type} {args.mode}",
                flush=True,
            )
            measure_plan(plan, keys, settings, save(name), before)
            print(plan_table(result, name), flush=True)
    finally:
        if before is not None:
            before.close()
    print(f"wrote {out}")
    return result


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

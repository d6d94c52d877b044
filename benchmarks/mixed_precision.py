"""Mixed precision: each network trained a few steps under autocast float16 (with nnU-Net's gradient scaler) and
bfloat16, beside float32, on real images, on the CPU.

    python benchmarks/mixed_precision.py                  # ~5-10 min on 2 busy cores
    python benchmarks/mixed_precision.py --steps 100 --networks bilateral

nnU-Net trains on a GPU under fp16 autocast with a ``GradScaler``; torch's CPU autocast runs the same precisions
(its operator lists differ from CUDA's in places: CPU autocast leaves layer_norm in low precision, which is why our
norms compute in float32 by construction; ``tests/test_mixed_precision.py`` checks the float32 places). What this
shows: whether training under 16-bit autocast stays finite and follows float32, and how large activations get
against float16's range (65504).

Data: ISIC 2017 (``/work/shared/data/ISIC2017_256``: RGB images, lesion masks), the first ``--images`` cases,
resized to the patch, each channel z-scored per image (nnU-Net's ZScoreNormalization for non-CT data), masks
thresholded to 0/1; batches drawn in the same order for every run. Networks: ``benchmarks/network_speed.py``'s, from
the ISIC 2017 2d plans at dry-run size (``tiny_plan``: features / 8, patch 64x64), identical initial weights per
network across precisions. Loss: nnU-Net's Dice + CE with deep supervision; optimizer as each default trainer
(SGD momentum 0.99 Nesterov lr 1e-2 for stock/BSA/MDSA, AdamW lr 1e-3 for the bilateral network); gradient clip 12 as
``nnUNetTrainer.train_step`` (after the scaler's ``unscale_``).

Per run: losses per step; whether every loss, every (unscaled) gradient of a step the scaler did not skip, and the
final weights are finite; the steps the scaler skipped (it skips a step whose scaled gradients overflowed and lowers
its scale: by design); the largest |activation| per module (forward hooks, over all steps). Band: the mean loss of
the last quarter of the steps within ``--band`` x the fall of float32's loss (its first step to its last quarter) of
float32's (nnU-Net's loss crosses zero: a ratio of losses means nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from network_speed import NETWORKS, build_loss, build_network, load_plan, tiny_plan  # noqa: E402
from training_memory import optimizer_for, publish  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mixed-precision-cpu.json"
MARKERS = ("<!-- mixed-precision:begin -->", "<!-- mixed-precision:end -->")
DATA = Path("/work/shared/data/ISIC2017_256")
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
PRECISIONS = ("float32", "float16", "bfloat16")
SCHEMA = 1


def load_isic(root: Path, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, *size), z-scored per image and channel, and masks (N, 1, *size) of 0/1."""
    from PIL import Image

    images = sorted((root / "images").glob("*.jpg"))[:count]
    if len(images) < count:
        raise SystemExit(f"{root}/images holds {len(images)} images, fewer than --images {count}")
    xs, ys = [], []
    for path in images:
        mask = next((root / "masks").glob(f"{path.stem}*"))
        x = np.asarray(Image.open(path).convert("RGB").resize(size[::-1], Image.BILINEAR), dtype=np.float32)
        y = np.asarray(Image.open(mask).convert("L").resize(size[::-1], Image.NEAREST)) > 127
        x = (x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-8)
        xs.append(torch.from_numpy(x).permute(2, 0, 1))
        ys.append(torch.from_numpy(y)[None].float())
    return torch.stack(xs), torch.stack(ys)


def ds_targets(mask: torch.Tensor, scales: list[list[float]]) -> list[torch.Tensor]:
    """The deep-supervision targets: the mask at each output's size (nearest, as nnU-Net downsamples labels)."""
    return [
        F.interpolate(mask, size=[int(round(s * f)) for s, f in zip(mask.shape[2:], scale)], mode="nearest")
        for scale in scales
    ]


class ActivationMax:
    """Largest |output| per module (leaf modules and the network's attention blocks) over everything it sees."""

    def __init__(self, network: nn.Module) -> None:
        self.max: dict[str, float] = {}
        self.handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in network.named_modules()
            if name and not list(m.children())
        ]

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensors = (
                [output]
                if isinstance(output, torch.Tensor)
                else [t for t in (output if isinstance(output, (list, tuple)) else []) if isinstance(t, torch.Tensor)]
            )
            for t in tensors:
                if t.is_floating_point() and t.numel():
                    value = float(t.detach().abs().float().max())
                    self.max[name] = max(self.max.get(name, 0.0), value)

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def train(
    key: str, precision: str, data: torch.Tensor, masks: torch.Tensor, steps: int, batch: int, plan: Any
) -> dict[str, Any]:
    torch.manual_seed(0)
    network = build_network(key, plan, deep_supervision=True).train()
    loss_fn = build_loss(plan, compile_dice=False)
    optimizer = optimizer_for(key, network)
    dtype = None if precision == "float32" else getattr(torch, precision)
    scaler = torch.amp.GradScaler("cpu") if precision == "float16" else None
    recorder = ActivationMax(network)
    order = torch.Generator().manual_seed(1)
    losses, skipped, bad_grads = [], 0, 0
    t0 = time.perf_counter()
    for _ in range(steps):
        index = torch.randperm(len(data), generator=order)[:batch]
        x, targets = data[index], ds_targets(masks[index], plan.deep_supervision_scales())
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(network(x), targets)
        losses.append(float(loss.detach()))
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scale = scaler.get_scale()
            finite = all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            scaler.step(optimizer)
            scaler.update()
            skipped += int(scaler.get_scale() < scale)  # the scaler lowers its scale exactly when it skips
            bad_grads += int(not finite and scaler.get_scale() >= scale)  # non-finite and not skipped: a failure
        else:
            loss.backward()
            bad_grads += int(not all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None))
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
            optimizer.step()
    recorder.remove()
    top = sorted(recorder.max.items(), key=lambda item: -item[1])
    return {
        "losses": [round(v, 5) for v in losses],
        "losses_finite": bool(np.isfinite(losses).all()),
        "weights_finite": bool(all(torch.isfinite(p).all() for p in network.parameters())),
        "nonfinite_gradient_steps_not_skipped": bad_grads,
        "scaler_skipped_steps": skipped if scaler is not None else None,
        "max_activation": round(top[0][1], 2) if top else None,
        "max_activation_module": top[0][0] if top else None,
        "top_activations": {name: round(value, 2) for name, value in top[:5]},
        "modules_over_fp16_max": [name for name, value in top if value > FP16_MAX],
        "s_per_step": round((time.perf_counter() - t0) / steps, 3),
    }


def judge(runs: dict[str, dict[str, Any]], band: float) -> None:
    """Each run's last-quarter mean loss against float32's, relative to how far float32's loss fell (first step to
    its last quarter): nnU-Net's Dice + CE crosses zero, so a ratio of the losses themselves means nothing."""
    reference = runs["float32"]["losses"]
    tail = max(1, len(reference) // 4)
    ref = float(np.mean(reference[-tail:]))
    drop = abs(reference[0] - ref) or 1.0
    for run in runs.values():
        mean = float(np.mean(run["losses"][-tail:]))
        run["last_quarter_mean_loss"] = round(mean, 5)
        run["difference_over_float32_drop"] = round((mean - ref) / drop, 4)
        run["within_band"] = bool(abs(mean - ref) <= band * drop)
        run["max_abs_step_difference"] = round(float(np.max(np.abs(np.subtract(run["losses"], reference)))), 5)


def render(results: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/mixed_precision.py from benchmarks/results/mixed-precision-cpu.json: "
        "do not edit -->",
        "",
        f"ISIC 2017 ({results['images']} images at {results['patch']}), {results['steps']} steps of batch "
        f"{results['batch']}, networks at dry-run size. Band: the last-quarter mean loss within "
        f"{results['band']:.0%} of the fall of float32's loss (first step to last quarter) of float32's "
        "last-quarter mean. The same data order and initial weights in every run, so the band also holds the "
        "runs' divergence (16-bit rounding changes each step; a few steps change the trajectory): compare with "
        "stock nnU-Net's own. max |act|: the largest module output over all steps (float16's range: 65504).",
        "",
        "| network | precision | finite (loss, grads, weights) | scaler skips | last-quarter loss | "
        "minus fp32's, / fp32's fall | in band | max abs step diff | max abs act (module) | s/step |",
        "|---|---|---|--:|--:|--:|---|--:|---|--:|",
    ]
    for key, runs in results["networks"].items():
        for precision, r in runs.items():
            finite = r["losses_finite"] and r["weights_finite"] and not r["nonfinite_gradient_steps_not_skipped"]
            lines.append(
                f"| {NETWORKS[key].label} | {precision} | {'yes' if finite else 'NO'} | "
                f"{'' if r['scaler_skipped_steps'] is None else r['scaler_skipped_steps']} | "
                f"{r['last_quarter_mean_loss']} | {r['difference_over_float32_drop']:+.1%} | "
                f"{'yes' if r['within_band'] else 'no'} | {r['max_abs_step_difference']} | "
                f"{r['max_activation']} ({r['max_activation_module']}) | {r['s_per_step']} |"
            )
    lines += [
        "",
        f"torch {results['torch']}, {results['threads']} threads; `{results['command']}` ({results['wall_s']} s).",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--band", type=float, default=0.1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update-docs", action="store_true", help="write the BENCHMARKS.md section")
    parser.add_argument(
        "--table",
        type=Path,
        help="the section of an existing results JSON (with --update-docs: written to BENCHMARKS.md), then exit",
    )
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        for runs in results["networks"].values():
            judge(runs, results["band"])
    else:
        results = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    publish(render(results), MARKERS, args.update_docs)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = tiny_plan(load_plan("isic2017_2d"))
    data, masks = load_isic(args.data, args.images, tuple(plan.patch_size))
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": " ".join(["python", "benchmarks/mixed_precision.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "plan": plan.source,
        "patch": "x".join(map(str, plan.patch_size)),
        "images": args.images,
        "steps": args.steps,
        "batch": args.batch,
        "band": args.band,
        "networks": {},
    }
    t0 = time.perf_counter()
    for key in [k for k in args.networks.split(",") if k]:
        runs = {}
        for precision in PRECISIONS:
            runs[precision] = train(key, precision, data, masks, args.steps, args.batch, plan)
            print(
                f"{key} {precision}: loss {runs[precision]['losses'][0]} -> {runs[precision]['losses'][-1]}, "
                f"max act {runs[precision]['max_activation']}",
                flush=True,
            )
        judge(runs, args.band)
        results["networks"][key] = runs
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    return results


if __name__ == "__main__":
    sys.exit(main())

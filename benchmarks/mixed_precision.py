"""Mixed precision: each network trained a few hundred steps under autocast float16 (with nnU-Net's gradient scaler)
and bfloat16, beside float32, on real 2D (ISIC 2017) and 3D (MSD Hippocampus) data, on the CPU.

    python -m benchmarks.mixed_precision --update-docs          # the whole grid: ~1.5 h on 2 busy cores, resumable
    python -m benchmarks.mixed_precision --datasets hippocampus --networks bilateral --steps 20 --out /tmp/x.json
    python -m benchmarks.mixed_precision --table benchmarks/results/mixed-precision-cpu.json --update-docs

nnU-Net trains on a GPU under fp16 autocast with a ``GradScaler``; torch's CPU autocast runs the same precisions
(its operator lists differ from CUDA's in places: CPU autocast leaves layer_norm in low precision, which is why our
norms compute in float32 by construction; ``tests/test_mixed_precision.py`` checks the float32 places). What this
shows: whether training under 16-bit autocast stays finite and follows float32, and how large activations get
against float16's range (65504).

Data, batches drawn once per dataset (seeded) and fed identically to every run:

- ``isic``: ISIC 2017 (``/work/shared/data/ISIC2017_256``: RGB images, lesion masks), the first ``--images`` cases
  resized to the patch, each channel z-scored per image (nnU-Net's ZScoreNormalization for non-CT data), masks
  thresholded to 0/1. Plans: ISIC 2017 2d (7 stages, total stride 64).
- ``hippocampus``: MSD Task04 (``/work/shared/data/Task04_Hippocampus``: 1 mm isotropic MRI, labels 0/1/2), read
  as nnU-Net's SimpleITKIO reads it (z, y, x), the first ``--images`` cases, each z-scored over the whole image
  (ZScoreNormalization without a mask, as the plans say), padded with 0 to at least the patch, random patches of
  which the last third of each batch is centred on a random foreground voxel (nnU-Net's
  ``oversample_foreground_percent`` 0.33). Plans: Hippocampus 3d_fullres (patch 40x56x40, the whole volume).

Networks: ``benchmarks.network_speed``'s builders (as the trainers build them) on those plans with the features per
stage / ``--features-divisor`` (at least 8) and the patch / ``--isic-patch-divisor`` / ``--hippocampus-patch-divisor``
per axis in whole strides. Identical initial weights per network across precisions. Loss: nnU-Net's Dice + CE with
deep supervision; optimizer as each default trainer (SGD momentum 0.99 Nesterov lr 1e-2 for stock/BSA/MDSA, AdamW
lr 1e-3 for the bilateral network); gradient clip 12 as ``nnUNetTrainer.train_step`` (after the scaler's
``unscale_``); the scaler is ``GradScaler("cpu")`` with nnU-Net's (torch's default) settings.

Size (the defaults): 200 steps of batch 2 drawn from 200 cases, features / 8, both patches / 4 (ISIC 128x64, the
dry-run patch: 7 stages need 2 bottleneck voxels; Hippocampus 16x16x16). Why that small: float16 convolutions on a
CPU without AVX512-FP16 run far slower than float32 (measured on these 2 cores, Hippocampus stock nnU-Net at the
plans' 40x56x40, features / 8, batch 2: 7.9 s a float16 step against 1.3 in float32 and bfloat16; at 24x32x24 over
4 s), so the 24 runs of 200 steps fit the time only at this size. The activation maxima are this size's: a network
of full width and patch is not measured here.

Per run: losses per step; whether every loss, every (unscaled) gradient of a step the scaler did not skip, and the
final weights are finite; the steps the scaler skipped (it skips a step whose scaled gradients overflowed and lowers
its scale: by design); the largest |output| of every module (leaves and blocks, forward hooks, over all steps),
kept per module class and for the largest modules. Band: the mean loss of the last quarter of the steps within
``--band`` x the fall of float32's loss (its first step to its last quarter) of float32's (nnU-Net's loss crosses
zero: a ratio of losses means nothing). Stock nnU-Net is the control: the same precision effects with no attention.

Resumable: every (dataset, network, precision) run is written to ``--out`` as it finishes; a rerun with the same
settings skips the runs already there (other settings for a dataset discard that dataset's runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.common import DATA, RESULTS, add_publish_arguments, command_line, publish
from benchmarks.network_speed import NETWORKS, Plan, build_loss, build_network, load_plan, tiny_plan
from benchmarks.training_memory import optimizer_for

RESULTS_FILE = RESULTS / "mixed-precision-cpu.json"
MARKERS = ("<!-- mixed-precision:begin -->", "<!-- mixed-precision:end -->")
FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
PRECISIONS = ("float32", "float16", "bfloat16")
# bfloat16 with torch's oneDNN convolutions switched off (its native kernels instead): --bf16-without-onednn. oneDNN's
# bfloat16 Conv3d weight gradient on this CPU is sometimes non-finite for a 2x2x2 map (onednn_bf16_conv3d_check)
BF16_NO_ONEDNN = "bfloat16, oneDNN off"
SCHEMA = 2
OVERSAMPLE_FOREGROUND = 0.33  # nnUNetDataLoader's default
PLAIN = ("Sequential", "ModuleList")  # containers: their output is a child's, listed under the child's class


@dataclass(frozen=True)
class Settings:
    """What a dataset's runs depend on: a rerun with other settings starts that dataset again."""

    plan: str
    folder: str
    patch_divisor: int
    features_divisor: int
    images: int
    steps: int
    batch: int
    seed: int = 1


DATASETS = {"isic": ("isic2017_2d", "ISIC2017_256"), "hippocampus": ("hippocampus_3d_fullres", "Task04_Hippocampus")}
Batch = tuple[torch.Tensor, torch.Tensor]


def sized_plan(plan: Plan, features_divisor: int, patch_divisor: int) -> Plan:
    """``plan`` with features per stage / ``features_divisor`` (at least 8) and the patch / ``patch_divisor`` per
    axis in whole strides (4: ``network_speed.tiny_plan``'s patch, which keeps two bottleneck voxels)."""
    cfg = json.loads(json.dumps(plan.configuration))
    kw = cfg["architecture"]["arch_kwargs"]
    kw["features_per_stage"] = [max(8, f // features_divisor) for f in kw["features_per_stage"]]
    if patch_divisor == 4:
        cfg["patch_size"] = list(tiny_plan(plan).patch_size)
    else:
        total = np.prod(np.vstack(kw["strides"]), axis=0)
        cfg["patch_size"] = [int(max(t, -(-(p // patch_divisor) // t) * t)) for p, t in zip(cfg["patch_size"], total)]
    source = f"{plan.source} (features / {features_divisor}, patch / {patch_divisor} in whole strides)"
    return Plan(plan.name, source, cfg, plan.dataset_json)


# ------------------------------------------------------------------------------------------------------------ data
def isic_batches(root: Path, settings: Settings, patch: tuple[int, ...]) -> list[Batch]:
    """``settings.steps`` batches of ISIC images (B, 3, *patch), z-scored per image and channel, and 0/1 masks."""
    from PIL import Image

    images = sorted((root / "images").glob("*.jpg"))[: settings.images]
    if len(images) < settings.images:
        raise SystemExit(f"{root}/images holds {len(images)} images, fewer than --images {settings.images}")
    xs, ys = [], []
    size = (patch[1], patch[0])  # PIL's (width, height)
    for path in images:
        mask = next((root / "masks").glob(f"{path.stem}*"))
        x = np.asarray(Image.open(path).convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
        y = np.asarray(Image.open(mask).convert("L").resize(size, Image.Resampling.NEAREST)) > 127
        x = (x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-8)
        xs.append(torch.from_numpy(x).permute(2, 0, 1))
        ys.append(torch.from_numpy(y)[None].float())
    data, masks = torch.stack(xs), torch.stack(ys)
    order = torch.Generator().manual_seed(settings.seed)
    batches = []
    for _ in range(settings.steps):
        index = torch.randperm(len(data), generator=order)[: settings.batch]
        batches.append((data[index], masks[index]))
    return batches


def load_hippocampus(root: Path, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first ``count`` training cases as (image z-scored over the whole image, labels), both (z, y, x)."""
    import SimpleITK as sitk

    cases = sorted((root / "imagesTr").glob("hippocampus_*.nii.gz"))[:count]
    if len(cases) < count:
        raise SystemExit(f"{root}/imagesTr holds {len(cases)} cases, fewer than --images {count}")
    out = []
    for path in cases:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / path.name)))
        out.append(((image - image.mean()) / max(float(image.std()), 1e-8), np.rint(labels).astype(np.int64)))
    return out


def random_patch(
    image: np.ndarray, labels: np.ndarray, patch: tuple[int, ...], rng: np.random.Generator, foreground: bool
) -> Batch:
    """One patch (1, *patch) of image and labels, padded with 0 where the case is smaller; centred on a random
    foreground voxel when ``foreground`` (and the case has one), anywhere otherwise."""
    pad = [(max(0, p - s) // 2, max(0, p - s) - max(0, p - s) // 2) for p, s in zip(patch, image.shape)]
    image, labels = np.pad(image, pad), np.pad(labels, pad)
    voxels = np.argwhere(labels > 0) if foreground else np.empty((0, image.ndim))
    if len(voxels):
        centre = voxels[rng.integers(len(voxels))]
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, patch, image.shape)]
    else:
        start = [int(rng.integers(s - p + 1)) for p, s in zip(patch, image.shape)]
    window = tuple(slice(b, b + p) for b, p in zip(start, patch))
    return torch.from_numpy(image[window].copy())[None], torch.from_numpy(labels[window].astype(np.float32))[None]


def hippocampus_batches(root: Path, settings: Settings, patch: tuple[int, ...]) -> list[Batch]:
    cases = load_hippocampus(root, settings.images)
    rng = np.random.default_rng(settings.seed)
    plain = int(round(settings.batch * (1 - OVERSAMPLE_FOREGROUND)))
    batches = []
    for _ in range(settings.steps):
        pairs = [
            random_patch(*cases[int(rng.integers(len(cases)))], patch, rng, foreground=i >= plain)
            for i in range(settings.batch)
        ]
        batches.append((torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])))
    return batches


BATCHES: dict[str, Callable[[Path, Settings, tuple[int, ...]], list[Batch]]] = {
    "isic": isic_batches,
    "hippocampus": hippocampus_batches,
}


def ds_targets(mask: torch.Tensor, scales: list[list[float]]) -> list[torch.Tensor]:
    """The deep-supervision targets: the mask at each output's size (nearest, as nnU-Net downsamples labels)."""
    return [
        F.interpolate(mask, size=[int(round(s * f)) for s, f in zip(mask.shape[2:], scale)], mode="nearest")
        for scale in scales
    ]


# -------------------------------------------------------------------------------------------------------- training
class ActivationMax:
    """Largest |output| of every module (leaves and the blocks around them) over everything it sees."""

    def __init__(self, network: nn.Module) -> None:
        self.max: dict[str, float] = {}
        self.kind = {name: type(m).__name__ for name, m in network.named_modules() if name}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in network.named_modules() if name]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensors = output if isinstance(output, (list, tuple)) else [output]
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                    value = float(t.detach().abs().max())
                    self.max[name] = max(self.max.get(name, 0.0), value)

        return hook

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, value in self.max.items():
            out[self.kind[name]] = max(out.get(self.kind[name], 0.0), value)
        return dict(sorted(out.items(), key=lambda item: -item[1]))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def finite_grads(network: nn.Module) -> bool:
    return all(bool(torch.isfinite(p.grad).all()) for p in network.parameters() if p.grad is not None)


def train(key: str, precision: str, batches: list[Batch], plan: Plan) -> dict[str, Any]:
    torch.manual_seed(0)
    network = build_network(key, plan, deep_supervision=True).train()
    loss_fn = build_loss(plan, compile_dice=False)
    optimizer = optimizer_for(key, network)
    dtype = None if precision == "float32" else getattr(torch, precision.split(",")[0])
    onednn = torch.backends.mkldnn.flags(enabled=precision != BF16_NO_ONEDNN)
    scaler = torch.amp.GradScaler("cpu") if precision == "float16" else None
    recorder = ActivationMax(network)
    scales = plan.deep_supervision_scales()
    losses, skipped, bad_grads = [], 0, 0
    t0 = time.perf_counter()
    with onednn:
        for x, mask in batches:
            optimizer.zero_grad(set_to_none=True)
            autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
            with autocast:
                loss = loss_fn(network(x), ds_targets(mask, scales))
            losses.append(float(loss.detach()))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                scale = scaler.get_scale()
                finite = finite_grads(network)
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
                scaler.step(optimizer)
                scaler.update()
                skipped += int(scaler.get_scale() < scale)  # the scaler lowers its scale exactly when it skips
                bad_grads += int(not finite and scaler.get_scale() >= scale)  # non-finite and not skipped: a failure
            else:
                loss.backward()
                bad_grads += int(not finite_grads(network))
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
        "final_scale": scaler.get_scale() if scaler is not None else None,
        "max_activation": round(top[0][1], 2) if top else None,
        "max_activation_module": top[0][0] if top else None,
        "top_activations": {name: round(value, 2) for name, value in top[:8]},
        "max_activation_by_module_class": {name: round(value, 2) for name, value in recorder.by_kind().items()},
        "modules_over_fp16_max": [name for name, value in top if value > FP16_MAX],
        "s_per_step": round((time.perf_counter() - t0) / len(batches), 3),
    }


def onednn_bf16_conv3d_check(shape: tuple[int, ...] = (2, 32, 2, 2, 2), iterations: int = 300) -> dict[str, Any]:
    """How often one bfloat16 Conv3d (3x3x3, padding 1, as nnU-Net's) on a ``shape`` input gives a non-finite weight
    gradient from finite inputs under CPU autocast, with torch's oneDNN convolutions and without (its native ones).
    ``shape``: the Hippocampus bottleneck at this benchmark's size (2x2x2 voxels, 32 features, batch 2)."""
    out: dict[str, Any] = {"input": "x".join(map(str, shape)), "iterations": iterations}
    for onednn in (True, False):
        torch.manual_seed(0)
        conv = nn.Conv3d(shape[1], shape[1], 3, padding=1)
        bad = 0
        with torch.backends.mkldnn.flags(enabled=onednn):
            for _ in range(iterations):
                x = torch.randn(*shape)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = conv(x)
                conv.zero_grad(set_to_none=True)
                y.backward(torch.randn_like(y))
                bad += int(not finite_grads(conv))
        out["nonfinite_weight_grad_onednn" if onednn else "nonfinite_weight_grad_native"] = bad
    return out


def judge(runs: dict[str, dict[str, Any]], band: float) -> None:
    """Each run's last-quarter mean loss against float32's, relative to how far float32's loss fell (first step to
    its last quarter): nnU-Net's Dice + CE crosses zero, so a ratio of the losses themselves means nothing."""
    if "float32" not in runs:
        return
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


def passed(run: dict[str, Any]) -> bool:
    """Finite everywhere (a step the scaler skipped is by design) and within the band."""
    finite = run["losses_finite"] and run["weights_finite"] and not run["nonfinite_gradient_steps_not_skipped"]
    return bool(finite and run.get("within_band"))


# --------------------------------------------------------------------------------------------------------- report
def _share(value: float) -> str:
    return f"{value:+.1%}" if np.isfinite(value) else "NaN"


def render(results: dict[str, Any]) -> str:
    lines = [
        "<!-- written by benchmarks/mixed_precision.py from benchmarks/results/mixed-precision-cpu.json: "
        "do not edit -->",
        "",
        f"Band: the last-quarter mean loss within {results['band']:.0%} of the fall of float32's loss (first step "
        "to last quarter) of float32's last-quarter mean. The same batches and initial weights in every run of a "
        "network, so the band also holds the runs' divergence (16-bit rounding changes each step, and a few steps "
        "change the trajectory): stock nnU-Net, with no attention, is the control. Scaler skips: steps "
        "`GradScaler` skipped because the scaled gradients overflowed (by design; it then halves its scale). "
        "max |act|: the largest module output over all steps, against float16's 65504.",
    ]
    for dataset, entry in results["datasets"].items():
        s, missing = entry["settings"], []
        lines += [
            "",
            f"**{dataset}** ({entry['plan_source']}): patch {entry['patch']}, features per stage "
            f"{entry['features_per_stage']}, {s['steps']} steps of batch {s['batch']} from {s['images']} cases.",
            "",
            "| network | precision | finite (loss, grads, weights) | scaler skips | last-quarter loss | "
            "minus fp32's, / fp32's fall | in band | max abs step diff | max abs act (module) | s/step |",
            "|---|---|---|--:|--:|--:|---|--:|---|--:|",
        ]
        for key in NETWORKS:
            runs = entry["networks"].get(key, {})
            missing += [f"{dataset} {key} {p}" for p in PRECISIONS if p not in runs]
            for precision in (p for p in (*PRECISIONS, BF16_NO_ONEDNN) if p in runs):
                r = runs[precision]
                finite = r["losses_finite"] and r["weights_finite"] and not r["nonfinite_gradient_steps_not_skipped"]
                band = "yes" if r.get("within_band") else "no" if "within_band" in r else "n/a"
                lines.append(
                    f"| {NETWORKS[key].label} | {precision} | {'yes' if finite else 'NO'} | "
                    f"{'' if r['scaler_skipped_steps'] is None else r['scaler_skipped_steps']} | "
                    f"{r.get('last_quarter_mean_loss', '')} | {_share(r.get('difference_over_float32_drop', 0.0))} | "
                    f"{band} | {r.get('max_abs_step_difference', '')} | "
                    f"{r['max_activation']} ({r['max_activation_module']}) | {r['s_per_step']} |"
                )
        lines += [
            "",
            "Largest |output| per module class in the float16 runs (share of float16's range in brackets; a block's "
            "figure is its own output, `Sequential` left out):",
            "",
            "| network | module classes, largest first |",
            "|---|---|",
        ]
        for key, runs in entry["networks"].items():
            if "float16" in runs:
                kinds = [kv for kv in runs["float16"]["max_activation_by_module_class"].items() if kv[0] not in PLAIN]
                kinds = kinds[:8]
                text = ", ".join(f"{k} {v:g} ({v / FP16_MAX:.2%})" for k, v in kinds)
                lines.append(f"| {NETWORKS[key].label} | {text} |")
        lines += ["", f"`{entry['command']}`" + (f"; not run yet: {', '.join(missing)}." if missing else ".")]
    check = results.get("onednn_bf16_conv3d_check")
    if check:
        lines += [
            "",
            "Hippocampus bfloat16 failures: torch's oneDNN bfloat16 Conv3d. One 3x3x3 convolution on a "
            f"{check['input']} input (stock nnU-Net's Hippocampus bottleneck at this size) under CPU bfloat16 "
            "autocast, with finite inputs and output gradient, gave a non-finite weight gradient in "
            f"{check['nonfinite_weight_grad_onednn']} of {check['iterations']} backward passes with torch's oneDNN "
            f"convolutions (the count varies from run to run), {check['nonfinite_weight_grad_native']} with them off. "
            f"Rows `{BF16_NO_ONEDNN}`: the same bfloat16 runs on torch's native convolutions. Without a gradient "
            "scaler nothing skips such a step: the clip turns the gradient into NaN and the weights follow. A CPU "
            "kernel's fault, stock nnU-Net's control included; CUDA's bfloat16 runs other kernels.",
        ]
    lines += ["", f"torch {results['torch']}, {results['threads']} thread(s) per run, on a CPU shared with other jobs."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"of {', '.join(DATASETS)}")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=200, help="cases per dataset the batches are drawn from")
    parser.add_argument("--features-divisor", type=int, default=8)
    parser.add_argument("--isic-patch-divisor", type=int, default=4, help="ISIC's patch: the plans' / this")
    parser.add_argument("--hippocampus-patch-divisor", type=int, default=4, help="Hippocampus's: the plans' / this")
    parser.add_argument("--band", type=float, default=0.1)
    parser.add_argument(
        "--bf16-without-onednn", action="store_true", help=f"also run '{BF16_NO_ONEDNN}' (oneDNN's convolutions off)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the folder holding the datasets")
    add_publish_arguments(parser, RESULTS_FILE)
    args = parser.parse_args(argv)
    if args.table:
        results = json.loads(args.table.read_text())
        for entry in results["datasets"].values():
            for runs in entry["networks"].values():
                judge(runs, results["band"])
    else:
        results = run(args, argv if argv is not None else sys.argv[1:])
    publish(render(results), MARKERS, args.update_docs)
    return 0


def write(path: Path, results: dict[str, Any], dataset: str) -> None:
    """``results``' runs of ``dataset`` into ``path`` beside the other datasets' runs there (a run of another dataset
    may write the same file at the same time: under a lock, re-read first), atomically."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock: the folder itself (no lock file left behind)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        current = json.loads(path.read_text()) if path.is_file() else {}
        if current.get("schema") != SCHEMA or current.get("band") != results["band"]:
            current = {}
        datasets = {**current.get("datasets", {}), dataset: results["datasets"][dataset]}
        merged = {**current, **results, "datasets": datasets}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        os.close(folder)  # releases the lock


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if previous.get("schema") != SCHEMA or previous.get("band") != args.band:
        previous = {}
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command_line("mixed_precision", argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "band": args.band,
        "onednn_bf16_conv3d_check": onednn_bf16_conv3d_check(),
        "datasets": previous.get("datasets", {}),
    }
    precisions = (*PRECISIONS, BF16_NO_ONEDNN) if args.bf16_without_onednn else PRECISIONS
    for dataset in [d for d in args.datasets.split(",") if d]:
        plan_name, folder = DATASETS[dataset]
        patch = getattr(args, f"{dataset}_patch_divisor")
        settings = Settings(plan_name, folder, patch, args.features_divisor, args.images, args.steps, args.batch)
        plan = sized_plan(load_plan(plan_name), args.features_divisor, patch)
        entry = results["datasets"].get(dataset, {})
        if entry.get("settings") != asdict(settings):
            entry = {
                "settings": asdict(settings),
                "plan_source": plan.source,
                "patch": "x".join(map(str, plan.patch_size)),
                "features_per_stage": plan.arch_kwargs["features_per_stage"],
                "networks": {},
            }
        entry["command"] = results["command"]
        results["datasets"][dataset] = entry
        batches = BATCHES[dataset](args.data / folder, settings, plan.patch_size)
        for key in [k for k in args.networks.split(",") if k]:
            runs = entry["networks"].setdefault(key, {})
            for precision in (p for p in precisions if p not in runs):
                runs[precision] = train(key, precision, batches, plan)
                judge(runs, args.band)
                write(args.out, results, dataset)
                r = runs[precision]
                print(
                    f"{dataset} {key} {precision}: loss {r['losses'][0]} -> {r['losses'][-1]}, max act "
                    f"{r['max_activation']}, skips {r['scaler_skipped_steps']}, {r['s_per_step']} s/step",
                    flush=True,
                )
        write(args.out, results, dataset)  # also when every run was there already (this run's check, command)
    return json.loads(args.out.read_text())


if __name__ == "__main__":
    sys.exit(main())

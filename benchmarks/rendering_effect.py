"""Effect of the attention rendering module: the bilateral network trained with and without it, same data, same
schedule, same seed; boundary metrics of nnU-Net's own fold-0 validation predictions.

    .venv/bin/python benchmarks/rendering_effect.py                     # ISIC 2017 subset, CPU: 9.5 min
    .venv/bin/python benchmarks/rendering_effect.py --cases 400 --epochs 40 --device cuda

Data: the first ``--cases`` ISIC 2017 images of ``../shared/data/ISIC2017_256``, downsized to ``--size`` pixels
(so that a CPU trains a few hundred steps), converted with ``convert_2d``, planned and preprocessed by nnU-Net.
Training is nnU-Net's own loop (``run_training``: augmentation, poly learning rate, final sliding-window validation
of fold 0) with ``nnUNetTrainerBilateral`` and ``nnUNetTrainerBilateral_noRendering``, both cut to the same
``--epochs`` x ``--iterations``.

Metrics per validation case, averaged (foreground = lesion):
- Dice;
- boundary IoU (Cheng et al., CVPR 2021): IoU of the parts of prediction and ground truth within ``d`` pixels of
  their own contours (d = 2% of the image diagonal, at least 1 pixel);
- boundary F1 (Csurka et al., BMVC 2013): F1 of contour pixels matched within ``d`` pixels;
- HD95: 95th percentile of the symmetric contour-to-contour distances, in pixels.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
ISIC = ROOT.parent / "shared" / "data" / "ISIC2017_256"
DATASET_ID = 972


def contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred, gt = pred.astype(bool), gt.astype(bool)
    d = max(1.0, 0.02 * float(np.hypot(*gt.shape)))
    inter, total = (pred & gt).sum(), pred.sum() + gt.sum()
    out = {"dice": 1.0 if total == 0 else 2.0 * inter / total}
    if not pred.any() or not gt.any():  # a missing object: worst boundary scores (both empty: perfect)
        both = not pred.any() and not gt.any()
        out.update(boundary_iou=float(both), boundary_f1=float(both), hd95=0.0 if both else float(np.hypot(*gt.shape)))
        return out
    cp, cg = contour(pred), contour(gt)
    dist_to_gt = ndimage.distance_transform_edt(~cg)  # distance of every pixel to the GT contour
    dist_to_pred = ndimage.distance_transform_edt(~cp)
    band_p = pred & (dist_to_pred <= d)
    band_g = gt & (dist_to_gt <= d)
    out["boundary_iou"] = float((band_p & band_g).sum() / max(1, (band_p | band_g).sum()))
    precision = float((dist_to_gt[cp] <= d).mean())
    recall = float((dist_to_pred[cg] <= d).mean())
    out["boundary_f1"] = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    out["hd95"] = float(np.percentile(np.concatenate([dist_to_gt[cp], dist_to_pred[cg]]), 95))
    return out


def prepare(work: Path, cases: int, size: int) -> Path:
    """The first ``cases`` ISIC images and masks at ``size`` x ``size`` in ``work/small``; returns that folder."""
    small = work / "small"
    (small / "images").mkdir(parents=True), (small / "masks").mkdir(parents=True)
    for image_path in sorted((ISIC / "images").glob("*.jpg"))[:cases]:
        mask_path = ISIC / "masks" / f"{image_path.stem}_segmentation.png"
        Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR).save(
            small / "images" / f"{image_path.stem}.png")
        Image.open(mask_path).convert("L").resize((size, size), Image.NEAREST).save(
            small / "masks" / f"{image_path.stem}_segmentation.png")
    return small


def schedule(trainer: type, epochs: int, iterations: int) -> type:
    """``trainer`` cut to ``epochs`` x ``iterations`` (and a fifth as many validation iterations)."""

    import torch

    class Scheduled(trainer):
        # nnU-Net rebuilds its init arguments from this signature: keep it the base's
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(1, iterations // 5)

    Scheduled.__name__ = Scheduled.__qualname__ = trainer.__name__ + "_bench"
    return Scheduled


def train_and_measure(trainer_cls: type, plans: dict, dataset_json: dict, device: str, seed: int) -> dict:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    import random

    random.seed(seed)
    trainer = trainer_cls(dict(plans, continue_training=False), "2d", 0, dataset_json, device=torch.device(device))
    started = time.perf_counter()
    trainer.run_training()  # nnU-Net's loop
    trainer.perform_actual_validation()  # its sliding-window validation of fold 0 (as nnUNetv2_train does)
    seconds = time.perf_counter() - started
    validation = Path(trainer.output_folder) / "validation"
    gt_folder = Path(trainer.preprocessed_dataset_folder_base) / "gt_segmentations"
    per_case = []
    for pred_path in sorted(validation.glob("*.png")):
        pred = np.asarray(Image.open(pred_path)) == 1
        gt = np.asarray(Image.open(gt_folder / pred_path.name)) == 1
        per_case.append(boundary_metrics(pred, gt))
    mean = {k: float(np.mean([c[k] for c in per_case])) for k in per_case[0]}
    train_losses = trainer.logger.get_value("train_losses", None)
    return {"cases": len(per_case), "seconds": round(seconds, 1), "final_train_loss": round(float(train_losses[-1]), 4),
            **{k: round(v, 4) for k, v in mean.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=160, help="ISIC cases used (fold 0 validates a fifth)")
    parser.add_argument("--size", type=int, default=64, help="images are downsized to size x size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--runs", default="with,without",
                        help="which runs: with, without or both (results are merged into --out)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "rendering_effect.json")
    args = parser.parse_args()
    if not ISIC.is_dir():
        print(f"{ISIC} is absent: this benchmark needs the ISIC 2017 data of ../shared/data", file=sys.stderr)
        return 1

    work = args.work or Path(tempfile.mkdtemp(prefix="rendering_effect_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)
    # before torch loads OpenMP: on a shared CPU, spinning OpenMP threads made a step 10x slower here
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 4)))

    from nnunet_sparseattn.convert2d import convert_2d
    from nnunet_sparseattn.demo import pipeline
    from nnunet_sparseattn.trainers import (
        nnUNetTrainerBilateral,
        nnUNetTrainerBilateral_noRendering,
    )

    raw = Path(os.environ["nnUNet_raw"])
    if pipeline.dataset_folder(raw, DATASET_ID) is None:
        small = prepare(work, args.cases, args.size)
        convert_2d(small / "images", small / "masks", DATASET_ID, name="ISICsmall", raw_root=raw)
        env = dict(os.environ)
        env.pop("nnUNet_n_proc_DA")  # it breaks planning
        pipeline.plan_and_preprocess(DATASET_ID, "2d", env)
    preprocessed = next(Path(os.environ["nnUNet_preprocessed"]).glob(f"Dataset{DATASET_ID:03d}_*"))
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["configurations"]["2d"]["batch_size"] = args.batch
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())

    setting = {k: v for k, v in vars(args).items() if k not in ("runs", "out", "work")}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results.get("setting") != setting:  # results of another setting are not mixed in
        results = {"setting": setting}
    results["patch_size"] = plans["configurations"]["2d"]["patch_size"]
    for key, trainer in (("with", nnUNetTrainerBilateral), ("without", nnUNetTrainerBilateral_noRendering)):
        if key not in args.runs.split(","):
            continue
        results[f"{key}_rendering"] = train_and_measure(schedule(trainer, args.epochs, args.iterations), plans,
                                                        dataset_json, args.device, args.seed)
        print(key, json.dumps(results[f"{key}_rendering"]), flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # after each run: a long benchmark keeps its part
    print(f"written {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

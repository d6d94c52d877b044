"""Effect of the attention rendering module: ``compare`` of the bilateral network with and without it (same data,
budget and seed), scored with boundary metrics on fold 0's validation cases.

    .venv/bin/python -m benchmarks.rendering_effect                     # ISIC 2017 subset, CPU
    .venv/bin/python -m benchmarks.rendering_effect --cases 400 --epochs 40 --device cuda

Data: the first ``--cases`` ISIC 2017 images of ``../shared/data/ISIC2017_256``, downsized to ``--size`` pixels
(so that a CPU trains a few hundred steps; ``harness.datasets.downsize_2d_pairs``), converted with ``convert_2d``.
``nnunet-sparseattn compare`` then plans with nnU-Net's planner, trains ``nnUNetTrainerBilateral`` and
``nnUNetTrainerBilateral_noRendering`` under the budget ``EPOCHSxITERATIONSbBATCH`` (nnU-Net's own loop through
``nnUNetv2_train``; batches capped at ``--batch``), predicts fold 0's validation cases with ``nnUNetv2_predict``
(no test-time mirroring) and scores Dice; the paired test compares the two per case.

Metrics per validation case, averaged (foreground = lesion), from compare's predictions:
- Dice and HD95 (in pixels): compare's own scores (``harness.scoring``: nnU-Net's Dice, MONAI's HD95, the one HD95 of
  the project); HD95 is undefined where a prediction or its reference is empty, and such cases are counted;
- boundary IoU (Cheng et al., CVPR 2021): IoU of the parts of prediction and ground truth within ``d`` pixels of
  their own contours (d = 2% of the image diagonal, at least 1 pixel);
- boundary F1 (Csurka et al., BMVC 2013): F1 of contour pixels matched within ``d`` pixels.
Boundary IoU and F1 are written here: no maintained library the project uses computes them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmarks.common import DATA, ROOT, command_line

ISIC = DATA / "ISIC2017_256"
DATASET_ID = 972
RUNS = {"with_rendering": "nnUNetTrainerBilateral", "without_rendering": "nnUNetTrainerBilateral_noRendering"}


def contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def boundary_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    pred, gt = pred.astype(bool), gt.astype(bool)
    d = max(1.0, 0.02 * float(np.hypot(*gt.shape)))
    if not pred.any() or not gt.any():  # a missing object: worst boundary scores (both empty: perfect)
        both = float(not pred.any() and not gt.any())
        return {"boundary_iou": both, "boundary_f1": both}
    cp, cg = contour(pred), contour(gt)
    dist_to_gt = ndimage.distance_transform_edt(~cg)  # distance of every pixel to the GT contour
    dist_to_pred = ndimage.distance_transform_edt(~cp)
    band_p = pred & (dist_to_pred <= d)
    band_g = gt & (dist_to_gt <= d)
    precision = float((dist_to_gt[cp] <= d).mean())
    recall = float((dist_to_pred[cg] <= d).mean())
    return {
        "boundary_iou": float((band_p & band_g).sum() / max(1, (band_p | band_g).sum())),
        "boundary_f1": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
    }


def score_run(run: dict, predictions: Path, labels: Path, cases: list[str]) -> dict:
    """compare's Dice and HD95 of one run (its record ``run``), and the boundary metrics of its predictions."""
    per_case = [
        boundary_metrics(
            np.asarray(Image.open(predictions / f"{c}.png")) == 1, np.asarray(Image.open(labels / f"{c}.png")) == 1
        )
        for c in cases
    ]
    return {
        "cases": len(per_case),
        "dice": round(run["mean_dice"], 4),
        "hd95": None if run["mean_hd95"] is None else round(run["mean_hd95"], 4),
        "hd95_undefined_cases": sum(run["hd95_undefined_cases"].values()),
        **{k: round(float(np.mean([c[k] for c in per_case])), 4) for k in per_case[0]},
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=160, help="ISIC cases used (fold 0 validates a fifth)")
    parser.add_argument("--size", type=int, default=64, help="images are downsized to size x size")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    parser.add_argument("--batch", type=int, default=4, help="batches of at most this many images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_work" / "rendering_effect")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "rendering_effect.json")
    return parser


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The downsized data converted once, then ``compare`` of both trainers (resumed where it stopped)."""
    from nnunet_sparseattn.compare.run import CompareRequest, run_compare
    from nnunet_sparseattn.convert2d import convert_2d
    from nnunet_sparseattn.harness import commands, datasets

    work = args.work.resolve()
    env = commands.work_environment(work)
    if datasets.dataset_folder(env["nnUNet_raw"], DATASET_ID) is None:
        small = datasets.downsize_2d_pairs(ISIC / "images", ISIC / "masks", work / "small", args.cases, args.size)
        convert_2d(small / "images", small / "masks", DATASET_ID, name="ISICsmall", raw_root=Path(env["nnUNet_raw"]))
    return run_compare(
        CompareRequest(
            DATASET_ID,
            "2d",
            work / f"compare-{args.cases}x{args.size}",
            trainers=list(RUNS.values()),
            baselines=[],
            budget=f"{args.epochs}x{args.iterations}b{args.batch}",
            folds=[0],
            device=args.device,
            raw=Path(env["nnUNet_raw"]),
            preprocessed=Path(env["nnUNet_preprocessed"]),
            command=command,
        )
    )


def summary(args: argparse.Namespace, results: dict[str, Any], command: str) -> dict[str, Any]:
    """Both runs scored with the boundary metrics, their cost, and the paired Dice test."""
    from nnunet_sparseattn.compare.results import paired_test

    setting = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
    output = args.work.resolve() / f"compare-{args.cases}x{args.size}"
    cases = sorted(c for group in results["heldout"]["cases"].values() for c in group)
    out = {"setting": setting, "command": command, "budget_text": results["budget_text"], "machine": results["machine"]}
    for key, trainer in RUNS.items():
        run = results["runs"][f"{trainer}__nnUNetPlans"]
        out[key] = {
            **score_run(run, output / "predictions" / f"{trainer}__nnUNetPlans", output / "heldout" / "labels", cases),
            "s_per_iter": round(run["s_per_iter"], 4),
            "final_train_loss": round(run["folds"]["0"]["curve"]["train_loss"][-1], 4),
        }
    with_, without = (results["runs"][f"{t}__nnUNetPlans"]["per_case"] for t in RUNS.values())
    out["dice_with_minus_without"] = paired_test(
        {c: v["mean_dice"] for c, v in with_.items()}, {c: v["mean_dice"] for c, v in without.items()}
    )
    return out


def main(argv: list[str] | None = None) -> int:
    from nnunet_sparseattn.errors import UserError

    args = parser().parse_args(argv)
    if not ISIC.is_dir():
        print(f"{ISIC} is absent: this benchmark needs the ISIC 2017 data of ../shared/data", file=sys.stderr)
        return 1
    command = command_line("rendering_effect", sys.argv[1:] if argv is None else argv)
    try:
        results = run(args, command)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = summary(args, results, command)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in (*RUNS, "dice_with_minus_without")}, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

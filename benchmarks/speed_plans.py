"""The nnU-Net plans the network speed benchmark runs on, made by nnU-Net's own planner (run once; the JSON is kept).

    .venv/bin/python -m benchmarks.speed_plans [--work bench_work/speed-plans]   # ~5 min on 2 cores

Writes ``benchmarks/plans/<name>.json``, one configuration each, as ``{"source", "configuration", "plans",
"dataset_json"}`` (``plans`` is nnU-Net's plans file with only that configuration kept; ``dataset_json`` only
the fields a trainer reads):

- ``hippocampus_3d_fullres``: MSD Task04 Hippocampus, all 260 training cases, ``nnUNetv2_convert_MSD_dataset`` then
  ``nnUNetv2_extract_fingerprint`` and ``nnUNetv2_plan_experiment`` (nnU-Net's default planner), ``3d_fullres``.
- ``isic2017_2d``: ISIC 2017 (all 2000 images, 256 x 256 RGB) through ``nnunet-sparseattn convert-2d``, then the
  same two commands, ``2d``.
- ``six_stage_128_3d``: the planner run on a fingerprint written here, of an abdominal-CT-like dataset (200 cases,
  1 mm isotropic, every case 256 x 256 x 256 voxels, 13 organs): nnU-Net plans it as a six-stage U-Net on 128^3
  patches, the typical large-organ ``3d_fullres`` plan. Only the fingerprint is made up; the plan is the planner's.
  (nnU-Net's planner reads one image of the raw folder to pick its reader: a 4^3 image is written for that.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DATA, PLANS_DIR, ROOT
from nnunet_sparseattn.harness import commands, datasets

ISIC_ID, CT_ID = 917, 918
CT_CASES, CT_SHAPE, CT_LABELS = 200, (256, 256, 256), 13
# what the trainers read from dataset.json (labels, regions, ignore label, channels, file ending)
DATASET_KEYS = ("channel_names", "labels", "numTraining", "file_ending", "regions_class_order")


def _fingerprint_and_plan(dataset_id: int, env: dict[str, str], log: Path) -> None:
    commands.run_command(["nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", "2"], env, log)
    commands.run_command(["nnUNetv2_plan_experiment", "-d", dataset_id], env, log)


def _synthetic_ct(env: dict[str, str]) -> None:
    """Raw folder (dataset.json, one tiny image for the reader check) and fingerprint of the made-up CT dataset."""
    import numpy as np
    import SimpleITK as sitk

    name = f"Dataset{CT_ID:03d}_SyntheticAbdomenCT"
    raw = Path(env["nnUNet_raw"]) / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for folder, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        sitk.WriteImage(
            sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(raw / folder / f"ct_000{suffix}.nii.gz")
        )
    labels = {"background": 0, **{f"organ_{i}": i for i in range(1, CT_LABELS + 1)}}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": CT_CASES, "file_ending": ".nii.gz"}
    (raw / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    intensity = {
        "max": 3000.0,
        "mean": 100.0,
        "median": 90.0,
        "min": -1000.0,
        "percentile_00_5": -980.0,
        "percentile_99_5": 1500.0,
        "std": 150.0,
    }
    fingerprint = {
        "foreground_intensity_properties_per_channel": {"0": intensity},
        "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(CT_SHAPE)] * CT_CASES,
        "spacings": [[1.0, 1.0, 1.0]] * CT_CASES,
    }
    pre = Path(env["nnUNet_preprocessed"]) / name
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))


def _keep(env: dict[str, str], dataset_id: int, configuration: str, out: str, source: str) -> None:
    pre = datasets.require_dataset(env["nnUNet_preprocessed"], dataset_id, "nnUNet_preprocessed")
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["configurations"] = {configuration: plans["configurations"][configuration]}
    raw = datasets.require_dataset(env["nnUNet_raw"], dataset_id, "nnUNet_raw")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    record = {
        "source": source,
        "configuration": configuration,
        "plans": plans,
        "dataset_json": {k: dataset_json[k] for k in DATASET_KEYS if k in dataset_json},
    }
    PLANS_DIR.mkdir(parents=True, exist_ok=True)
    (PLANS_DIR / f"{out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", PLANS_DIR / f"{out}.json")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench_work" / "speed-plans")
    args = ap.parse_args(argv)
    env = commands.work_environment(args.work)
    log = args.work / "nnunet.log"

    hippocampus = datasets.convert_msd(DATA / "Task04_Hippocampus", env, log)
    _fingerprint_and_plan(hippocampus, env, log)
    _keep(
        env,
        hippocampus,
        "3d_fullres",
        "hippocampus_3d_fullres",
        "MSD Task04_Hippocampus, 260 training cases: nnUNetv2_convert_MSD_dataset, nnUNetv2_extract_fingerprint, "
        "nnUNetv2_plan_experiment (nnU-Net 2.8.1 default planner)",
    )

    from nnunet_sparseattn.convert2d import convert_2d

    if datasets.dataset_folder(env["nnUNet_raw"], ISIC_ID) is None:
        isic = DATA / "ISIC2017_256"
        convert_2d(isic / "images", isic / "masks", ISIC_ID, raw_root=Path(env["nnUNet_raw"]))
    _fingerprint_and_plan(ISIC_ID, env, log)
    _keep(
        env,
        ISIC_ID,
        "2d",
        "isic2017_2d",
        "ISIC 2017 task 1, 2000 training images at 256 x 256: nnunet-sparseattn convert-2d, "
        "nnUNetv2_extract_fingerprint, nnUNetv2_plan_experiment (nnU-Net 2.8.1 default planner)",
    )

    _synthetic_ct(env)
    commands.run_command(["nnUNetv2_plan_experiment", "-d", CT_ID], env, log)
    _keep(
        env,
        CT_ID,
        "3d_fullres",
        "six_stage_128_3d",
        f"nnUNetv2_plan_experiment (nnU-Net 2.8.1 default planner) on a fingerprint written by "
        f"benchmarks/speed_plans.py: {CT_CASES} CT cases of {'x'.join(map(str, CT_SHAPE))} voxels at 1 mm, "
        f"{CT_LABELS} labels",
    )


if __name__ == "__main__":
    main()

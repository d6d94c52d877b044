"""The GPU run's optional second command: one short ``nnUNetv2_train`` of nnUNetTrainerBSA through nnU-Net's CLI
with ``torch.compile`` on (nnU-Net's CUDA default), then ``nnUNetv2_predict``, on data preprocessed beforehand.

    python -m benchmarks.gpu_nnunet prepare --data .gpu-data          # here, once (~1 min): MSD Hippocampus subset
    python -m benchmarks.gpu_nnunet train --data .gpu-data --device cuda --out train.json
    python -m benchmarks.gpu_nnunet predict --data .gpu-data --device cuda --out predict.json

``benchmarks/gpu.sh nnunet`` runs ``train`` and ``predict`` (each under its own time cap). ``prepare`` converts MSD
Task04_Hippocampus with nnU-Net's converter, keeps ``--cases`` training cases and runs ``nnUNetv2_plan_and_preprocess``
(3d_fullres); ``--predict-cases`` further cases go to ``predict_input/`` with their labels in ``predict_labels/``. Only
what training and prediction read is kept (the preprocessed folder and those images: ~1 MB a case), so the folder can
travel with the GPU command. Training runs the budgeted trainer ``<trainer>_bench<budget>`` (``harness.budgets``: the
schedule, a seed, per-iteration timing in ``benchmark_timing.json``, nnU-Net's final validation skipped: the
prediction replaces it). Each command writes a JSON summary (``--out``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, ROOT, write_results

CONFIGURATION = "3d_fullres"


def _env(data: Path) -> dict[str, str]:
    from nnunet_sparseattn.harness import commands

    return commands.work_environment(data / "work", budgeted=True)


def _dataset_id(data: Path) -> int:
    return int(json.loads((data / "dataset.json").read_text())["id"])


def prepare(data: Path, cases: int, predict_cases: int, msd: Path) -> dict[str, Any]:
    from nnunet_sparseattn.harness import commands, datasets

    if data.exists():
        shutil.rmtree(data)
    env = _env(data)
    log = data / "prepare.log"
    dataset_id = datasets.convert_msd(msd, env, log)
    raw = datasets.dataset_folder(Path(env["nnUNet_raw"]), dataset_id)
    assert raw is not None
    names = datasets.labelled_cases(raw / "labelsTr", ".nii.gz")
    held_out = names[cases : cases + predict_cases]
    training = datasets.HeldOut("training", raw / "imagesTr", raw / "labelsTr")
    datasets.copy_cases(held_out, training, data / "predict_input", data / "predict_labels", ".nii.gz")
    datasets.keep_training_cases(raw, cases)
    commands.plan_and_preprocess(dataset_id, CONFIGURATION, env, log, echo=False)
    shutil.rmtree(env["nnUNet_raw"])  # training and prediction read the preprocessed folder and the copied images
    for name in ("nnUNet_raw", "nnUNet_results"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    (data / "prepare.log").unlink(missing_ok=True)
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    record = {"id": dataset_id, "training_cases": cases, "predict_cases": held_out, "bytes": size}
    (data / "dataset.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def train(data: Path, trainer: str, budget: str, device: str, compile: bool) -> dict[str, Any]:
    import math

    from nnunet_sparseattn.harness import budgets, commands

    env = _env(data)
    name = budgets.budgeted_name(trainer, budget)
    t0 = time.perf_counter()
    commands.train(_dataset_id(data), CONFIGURATION, 0, name, env, data / "train.log", device=device, compile=compile)
    wall = time.perf_counter() - t0
    fold = next(Path(env["nnUNet_results"]).glob(f"*/{name}__nnUNetPlans__{CONFIGURATION}/fold_0"))
    timing = json.loads((fold / budgets.TIMING_FILE).read_text())
    iterations = timing["iterations"]
    losses = [it["loss"] for it in iterations]
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    # the trainer's "auto" activation checkpointing: its prediction and decision, as the log states them
    decision = [
        x.split(": ", 1)[-1] for x in log.splitlines() if "Training memory predicted" in x or "checkpointing:" in x
    ]
    return {
        "trainer": name,
        "compile": compile,
        "device": device,
        "wall_s": round(wall, 1),
        "iterations": len(iterations),
        "losses_finite": all(math.isfinite(x) for x in losses),
        "first_step_s": iterations[0]["step_s"] if iterations else None,  # compile included when on
        **budgets.summarize_iterations(iterations),
        **budgets.peak_memory(timing),
        "checkpoint_final": (fold / "checkpoint_final.pth").is_file(),
        "activation_checkpointing": decision[-1] if decision else None,
    }


def predict(data: Path, trainer: str, budget: str, device: str) -> dict[str, Any]:
    import numpy as np
    import SimpleITK as sitk

    from nnunet_sparseattn.harness import budgets, commands

    env = _env(data)
    name = budgets.budgeted_name(trainer, budget)
    output = data / "predictions"
    shutil.rmtree(output, ignore_errors=True)
    t0 = time.perf_counter()
    commands.predict(
        data / "predict_input",
        output,
        _dataset_id(data),
        CONFIGURATION,
        0,
        name,
        env,
        data / "predict.log",
        device=device,
        sequential=device == "cpu",  # the dry run: nnU-Net's sequential predictor, no worker start-ups to wait for
    )
    wall = time.perf_counter() - t0
    cases: dict[str, Any] = {}
    for label in sorted((data / "predict_labels").glob("*.nii.gz")):
        predicted = output / label.name
        if not predicted.is_file():
            cases[label.name] = {"status": "missing"}
            continue
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
        cases[label.name] = {
            "status": "done",
            "shape_matches": a.shape == b.shape,
            "labels": sorted(int(v) for v in np.unique(a)),
        }
    return {
        "trainer": name,
        "device": device,
        "wall_s": round(wall, 1),
        "cases": cases,
        "all_predicted": bool(cases) and all(c["status"] == "done" and c["shape_matches"] for c in cases.values()),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=("prepare", "train", "predict"))
    ap.add_argument("--data", type=Path, default=ROOT / ".gpu-data")
    ap.add_argument("--out", type=Path, default=None, help="the JSON summary (default: printed only)")
    ap.add_argument("--trainer", default="nnUNetTrainerBSA")
    ap.add_argument("--budget", default="1x20", help="EPOCHSxITERATIONS[bBATCH] (harness.budgets), default 1x20")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-compile", action="store_true", help="train without torch.compile (nnU-Net's CUDA default)")
    ap.add_argument("--cases", type=int, default=10, help="prepare: training cases kept (default 10)")
    ap.add_argument("--predict-cases", type=int, default=2, help="prepare: cases to predict (default 2)")
    ap.add_argument("--msd", type=Path, default=DATA / "Task04_Hippocampus")
    args = ap.parse_args(argv)
    data = args.data.resolve()
    if args.command == "prepare":
        result = prepare(data, args.cases, args.predict_cases, args.msd)
    elif args.command == "train":
        result = train(data, args.trainer, args.budget, args.device, not args.no_compile)
    else:
        result = predict(data, args.trainer, args.budget, args.device)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        write_results(args.out, result)


if __name__ == "__main__":
    main()

"""``nnunet-sparseattn demo``: the whole nnU-Net workflow with our best trainer, on the CPU, in minutes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from nnunet_sparseattn.demo.dataset import DEMO_DATASET_ID, make_demo_dataset
from nnunet_sparseattn.demo.report import dice_table, save_comparison_png
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness import commands, datasets


def _stage(message: str, started: float) -> None:
    print(f"\n[{time.monotonic() - started:5.0f} s] == {message}", flush=True)


def run_demo(
    work: str | Path,
    msd: str | Path | None = None,
    trainer: str | None = None,
    configuration: str = "3d_fullres",
    fold: int = 0,
    num_heldout: int = 6,
) -> dict:
    """Plan, train (short schedule), predict held-out cases, evaluate, print Dice per structure, save a PNG."""
    from nnunet_sparseattn.trainers import DEMO_TRAINER

    started = time.monotonic()
    trainer = trainer or f"{DEMO_TRAINER.__name__}_demo"
    if msd is not None:
        datasets.check_msd_folder(msd)  # fail before any work
    work = Path(work).resolve()
    env = commands.work_environment(work)
    commands.check_trainer(trainer, env)
    raw = Path(env["nnUNet_raw"])
    print(f"demo working folder: {work}; the commands below run with:")
    for name in (
        "nnUNet_raw",
        "nnUNet_preprocessed",
        "nnUNet_results",
        "nnUNet_extTrainer",
        "nnUNet_compile",
        "nnUNet_def_n_proc",
    ):
        print(
            f"   export {name}={env[name]}"
            if name in env
            else f"   ({name} not set: the startup hook adds our trainers in each command)"
        )

    if msd is None:
        _stage("writing the synthetic demo dataset", started)
        dataset = make_demo_dataset(raw, DEMO_DATASET_ID)
        dataset_id = DEMO_DATASET_ID
        print(f"   {dataset}")
    else:
        _stage(f"converting {msd} with nnU-Net's MSD converter", started)
        dataset_id = datasets.convert_msd(Path(msd), env)
        dataset = datasets.require_dataset(raw, dataset_id, "nnUNet_raw")

    _stage("planning and preprocessing", started)
    commands.plan_and_preprocess(dataset_id, configuration, env)

    _stage(f"training {trainer} on the CPU (fold {fold})", started)
    commands.train(dataset_id, configuration, fold, trainer, env)

    _stage("predicting held-out cases", started)
    heldout_images, heldout_labels = work / "heldout" / "images", work / "heldout" / "labels"
    shutil.rmtree(work / "heldout", ignore_errors=True)
    file_ending = json.loads((dataset / "dataset.json").read_text())["file_ending"]
    # the synthetic dataset keeps labelled test cases apart; an MSD task has none: the cases held out of this fold
    source = datasets.heldout_source(dataset)
    if source.kind == "test":
        cases = datasets.labelled_cases(source.labels, file_ending)
    else:
        preprocessed = datasets.require_dataset(env["nnUNet_preprocessed"], dataset_id, "nnUNet_preprocessed")
        cases = datasets.validation_cases(preprocessed, fold)
    cases = datasets.copy_cases(cases[:num_heldout], source, heldout_images, heldout_labels, file_ending)
    predictions = work / "heldout" / "predictions"
    commands.predict(heldout_images, predictions, dataset_id, configuration, fold, trainer, env)

    _stage("evaluating", started)
    summary = commands.evaluate(
        heldout_labels, predictions, datasets.model_folder(env, dataset_id, trainer, configuration), env
    )
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    if not isinstance(next(iter(labels.values())), int):
        raise UserError("the demo report handles label datasets, not region-based ones")
    print(f"\nDice on {len(cases)} held-out cases ({trainer}, {configuration}, fold {fold}):")
    print(dice_table(summary, labels))

    figure = save_comparison_png(
        [
            (
                heldout_images / f"{c}_0000{file_ending}",
                heldout_labels / f"{c}{file_ending}",
                predictions / f"{c}{file_ending}",
            )
            for c in cases[:3]
        ],
        work / "demo.png",
        num_labels=len(labels),
    )
    _stage(f"done: summary {predictions / 'summary.json'}, picture {figure}", started)
    return summary

"""``nnunet-sparseattn demo``: the whole nnU-Net workflow with our flagship trainer on the CPU, in minutes, and what
its sparse attention routes to (``nnunet-sparseattn explain``)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from nnunet_sparseattn.demo.dataset import DEMO_DATASET_ID, make_demo_dataset
from nnunet_sparseattn.demo.report import budget_line, dice_table, routing_table, save_comparison_png
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness import commands, datasets


def _time_budget(env: dict, dataset_id: int, trainer: str, configuration: str, fold: int) -> dict | None:
    """The fold's record of what the short schedule's time budget allowed (None without a budget)."""
    from nnunet_sparseattn.trainers.short_schedule import TIME_BUDGET_RECORD

    path = datasets.model_folder(env, dataset_id, trainer, configuration) / f"fold_{fold}" / TIME_BUDGET_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def _stage(message: str, started: float) -> None:
    print(f"\n[{time.monotonic() - started:5.0f} s] == {message}", flush=True)


def run_demo(
    work: str | Path,
    msd: str | Path | None = None,
    trainer: str | None = None,
    configuration: str = "3d_fullres",
    fold: int = 0,
    num_heldout: int = 6,
    compare: bool = False,
) -> dict:
    """Plan, train (short schedule), predict held-out cases, evaluate, print Dice per structure, save a PNG, explain
    the attention on the held-out cases; with ``compare``, stock nnU-Net under the same schedule beside it."""
    from nnunet_sparseattn.trainers import DEMO_TRAINER, STOCK_TRAINER

    started = time.monotonic()
    trainer = trainer or f"{DEMO_TRAINER.__name__}_demo"
    trainers = [trainer] + ([f"{STOCK_TRAINER.__name__}_demo"] if compare else [])
    if msd is not None:
        datasets.check_msd_folder(msd)  # fail before any work
    work = Path(work).resolve()
    env = commands.work_environment(work)
    for name in trainers:
        commands.check_trainer(name, env)
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
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    if not isinstance(next(iter(labels.values())), int):
        raise UserError("the demo report handles label datasets, not region-based ones")

    _stage("planning and preprocessing", started)
    commands.plan_and_preprocess(dataset_id, configuration, env)

    for name in trainers:
        _stage(f"training {name} on the CPU (fold {fold})", started)
        commands.train(dataset_id, configuration, fold, name, env)

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
    predictions = {name: work / "heldout" / f"predictions_{name}" for name in trainers}
    for name in trainers:
        commands.predict(heldout_images, predictions[name], dataset_id, configuration, fold, name, env)

    _stage("evaluating", started)
    summaries = [
        (
            name,
            commands.evaluate(
                heldout_labels, predictions[name], datasets.model_folder(env, dataset_id, name, configuration), env
            ),
        )
        for name in trainers
    ]
    print(f"\nDice on {len(cases)} held-out cases ({configuration}, fold {fold}; each trainer's _demo schedule):")
    print(dice_table(summaries, labels))
    cut = [budget_line(name, _time_budget(env, dataset_id, name, configuration, fold)) for name in trainers]
    for line in filter(None, cut):
        print(line)

    figure = save_comparison_png(
        [
            (
                heldout_images / f"{c}_0000{file_ending}",
                heldout_labels / f"{c}{file_ending}",
                [predictions[name] / f"{c}{file_ending}" for name in trainers],
            )
            for c in cases[:3]
        ],
        work / "demo.png",
        labels,
        [f"prediction, {name}" for name in trainers],
    )

    _stage(f"what the attention of {trainer} routes to: nnunet-sparseattn explain on the held-out cases", started)
    explained = work / "explain"
    commands.run_command(
        [
            "nnunet-sparseattn",
            "explain",
            "-d",
            dataset_id,
            "-c",
            configuration,
            "-tr",
            trainer,
            "-f",
            fold,
            "-i",
            heldout_images,
            "--reference",
            heldout_labels,
            "-o",
            explained,
        ],
        env,
    )
    summary = json.loads((explained / "explain.json").read_text())
    # the overview of the first case (case.png alone when the trainer's network has no attention to show)
    shown = next(p for p in (explained / cases[0] / "overview.png", explained / cases[0] / "case.png") if p.is_file())
    picture = work / "demo_explain.png"
    shutil.copy(shown, picture)
    table = routing_table(summary, len(cases))
    if table:
        print(f"\nrouting at work, {trainer}:")
        print(table)
    for line in filter(None, cut):  # again at the end, where the summary is read
        print(line)
    _stage(
        f"done: Dice tables in {', '.join(str(p / 'summary.json') for p in predictions.values())}; pictures "
        f"{figure} and {picture}; every explanation in {explained}",
        started,
    )
    return dict(summaries[0][1], routing=summary.get("routing_foreground", {}))

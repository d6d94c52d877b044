"""``nnunet-sparseattn demo``: the whole nnU-Net workflow with our flagship trainer on the CPU, in minutes, and what
its sparse attention routes to (``nnunet-sparseattn explain``)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
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


@dataclass
class _Demo:
    """One demo run: where it works, with which variables, on which dataset, with which trainers."""

    work: Path
    env: dict
    trainers: list[str]
    configuration: str
    fold: int
    started: float
    dataset_id: int = 0
    dataset: Path = Path()

    def stage(self, message: str) -> None:
        _stage(message, self.started)

    @property
    def dataset_json(self) -> dict:
        return json.loads((self.dataset / "dataset.json").read_text())


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
    demo = _Demo(work, commands.work_environment(work), trainers, configuration, fold, started)
    for name in trainers:
        commands.check_trainer(name, demo.env)
    _print_environment(demo)
    labels = _write_dataset(demo, msd)

    demo.stage("planning and preprocessing")
    commands.plan_and_preprocess(demo.dataset_id, configuration, demo.env)
    for name in trainers:
        demo.stage(f"training {name} on the CPU (fold {fold})")
        commands.train(demo.dataset_id, configuration, fold, name, demo.env)

    demo.stage("predicting held-out cases")
    cases, predictions = _predict_heldout(demo, num_heldout)

    demo.stage("evaluating")
    summaries, cut = _evaluate(demo, predictions, labels, len(cases))
    figure = _comparison_png(demo, cases, predictions, labels)

    demo.stage(f"what the attention of {trainer} routes to: nnunet-sparseattn explain on the held-out cases")
    summary, picture = _explain(demo, trainer, cases)
    table = routing_table(summary, len(cases))
    if table:
        print(f"\nrouting at work, {trainer}:")
        print(table)
    for line in filter(None, cut):  # again at the end, where the summary is read
        print(line)
    demo.stage(
        f"done: Dice tables in {', '.join(str(p / 'summary.json') for p in predictions.values())}; pictures "
        f"{figure} and {picture}; every explanation in {work / 'explain'}"
    )
    return dict(summaries[0][1], routing=summary.get("routing_foreground", {}))


def _print_environment(demo: _Demo) -> None:
    print(f"demo working folder: {demo.work}; the commands below run with:")
    for name in (
        "nnUNet_raw",
        "nnUNet_preprocessed",
        "nnUNet_results",
        "nnUNet_extTrainer",
        "nnUNet_compile",
        "nnUNet_def_n_proc",
    ):
        print(
            f"   export {name}={demo.env[name]}"
            if name in demo.env
            else f"   ({name} not set: the startup hook adds our trainers in each command)"
        )


def _write_dataset(demo: _Demo, msd: str | Path | None) -> dict:
    """The synthetic dataset, or the MSD task converted, into nnUNet_raw; returns its labels."""
    raw = Path(demo.env["nnUNet_raw"])
    if msd is None:
        demo.stage("writing the synthetic demo dataset")
        demo.dataset = make_demo_dataset(raw, DEMO_DATASET_ID)
        demo.dataset_id = DEMO_DATASET_ID
        print(f"   {demo.dataset}")
    else:
        demo.stage(f"converting {msd} with nnU-Net's MSD converter")
        demo.dataset_id = datasets.convert_msd(Path(msd), demo.env)
        demo.dataset = datasets.require_dataset(raw, demo.dataset_id, "nnUNet_raw")
    labels = demo.dataset_json["labels"]
    if not isinstance(next(iter(labels.values())), int):
        raise UserError("the demo report handles label datasets, not region-based ones")
    return labels


def _predict_heldout(demo: _Demo, num_heldout: int) -> tuple[list[str], dict[str, Path]]:
    """Held-out cases copied into ``heldout/`` and each trainer's predictions of them."""
    heldout = demo.work / "heldout"
    shutil.rmtree(heldout, ignore_errors=True)
    file_ending = demo.dataset_json["file_ending"]
    # the synthetic dataset keeps labelled test cases apart; an MSD task has none: the cases held out of this fold
    source = datasets.heldout_source(demo.dataset)
    if source.kind == "test":
        cases = datasets.labelled_cases(source.labels, file_ending)
    else:
        preprocessed = datasets.require_dataset(demo.env["nnUNet_preprocessed"], demo.dataset_id, "nnUNet_preprocessed")
        cases = datasets.validation_cases(preprocessed, demo.fold)
    cases = datasets.copy_cases(cases[:num_heldout], source, heldout / "images", heldout / "labels", file_ending)
    predictions = {name: heldout / f"predictions_{name}" for name in demo.trainers}
    for name in demo.trainers:
        commands.predict(
            heldout / "images", predictions[name], demo.dataset_id, demo.configuration, demo.fold, name, demo.env
        )
    return cases, predictions


def _evaluate(
    demo: _Demo, predictions: dict[str, Path], labels: dict, num_cases: int
) -> tuple[list[tuple[str, dict]], list[str]]:
    """nnU-Net's evaluation of each trainer's predictions, printed as a Dice table with the time budgets' cuts."""
    summaries = [
        (
            name,
            commands.evaluate(
                demo.work / "heldout" / "labels",
                predictions[name],
                datasets.model_folder(demo.env, demo.dataset_id, name, demo.configuration),
                demo.env,
            ),
        )
        for name in demo.trainers
    ]
    print(
        f"\nDice on {num_cases} held-out cases ({demo.configuration}, fold {demo.fold}; each trainer's _demo schedule):"
    )
    print(dice_table(summaries, labels))
    cut = [
        budget_line(name, _time_budget(demo.env, demo.dataset_id, name, demo.configuration, demo.fold))
        for name in demo.trainers
    ]
    for line in filter(None, cut):
        print(line)
    return summaries, cut


def _comparison_png(demo: _Demo, cases: list[str], predictions: dict[str, Path], labels: dict) -> Path:
    heldout, file_ending = demo.work / "heldout", demo.dataset_json["file_ending"]
    return save_comparison_png(
        [
            (
                heldout / "images" / f"{c}_0000{file_ending}",
                heldout / "labels" / f"{c}{file_ending}",
                [predictions[name] / f"{c}{file_ending}" for name in demo.trainers],
            )
            for c in cases[:3]
        ],
        demo.work / "demo.png",
        labels,
        [f"prediction, {name}" for name in demo.trainers],
    )


def _explain(demo: _Demo, trainer: str, cases: list[str]) -> tuple[dict, Path]:
    """``nnunet-sparseattn explain`` on the held-out cases with their references; its summary and the picture
    ``demo_explain.png`` (the first case's overview, or case.png alone when the network has no attention to show)."""
    explained = demo.work / "explain"
    heldout = demo.work / "heldout"
    commands.run_command(
        [
            "nnunet-sparseattn",
            "explain",
            "-d",
            demo.dataset_id,
            "-c",
            demo.configuration,
            "-tr",
            trainer,
            "-f",
            demo.fold,
            "-i",
            heldout / "images",
            "--reference",
            heldout / "labels",
            "-o",
            explained,
        ],
        demo.env,
    )
    summary = json.loads((explained / "explain.json").read_text())
    shown = next(p for p in (explained / cases[0] / "overview.png", explained / cases[0] / "case.png") if p.is_file())
    picture = demo.work / "demo_explain.png"
    shutil.copy(shown, picture)
    return summary, picture

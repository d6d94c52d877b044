"""Accuracy and cost of every trainer on real data, through nnU-Net's own commands, under one training budget.

Usage (``make bench-accuracy`` = ``--budget cpu``; ``make bench-accuracy BUDGET=gpu`` on a CUDA machine):

    .venv/bin/python benchmarks/accuracy.py --budget cpu|gpu|tiny [--datasets hippocampus,isic2017]
        [--trainers nnUNetTrainer,nnUNetTrainerNB,...] [--work DIR] [--update-docs] [--report-only]

For each dataset (MSD Hippocampus 3d_fullres, ISIC 2017 2d, read from ``../shared/data``) it converts the data,
plans and preprocesses once (``nnUNetv2_plan_and_preprocess``), then, for each trainer, trains the budgeted trainer
``<Trainer>_bench<budget>`` (``benchmarks/budgets.py``: the same epochs x iterations, seed and fold for all, nnU-Net's
stock ``nnUNetTrainer`` included) with ``nnUNetv2_train``, predicts the fold's validation cases with
``nnUNetv2_predict``, scores them with ``nnUNetv2_evaluate_folder`` and records:

- Dice per class and its mean over classes: nnU-Net's evaluation (``summary.json``: ``mean`` and ``foreground_mean``);
- HD95 per class: MONAI's, through ``nnunet_sparseattn.evaluation.metrics.hd95`` (the larger of the two directed
  95th percentiles of the distances between the masks' edge pixels/voxels), spacing-aware (mm on Hippocampus,
  pixels on ISIC, whose images were resized), averaged over the cases where both the reference and the prediction
  contain the class; the other cases are counted, not scored;
- training time per iteration: timed inside the training process by the budgeted trainer, per epoch, from the
  first to the last training iteration (data loading, forward, backward, optimiser step; nnU-Net's validation
  iterations excluded), summed over the epochs that were not the first of their process (warm-up) and divided
  by their iterations;
- inference time per case: ``nnUNetv2_predict``'s output is timestamped as it arrives; nnU-Net's prediction loop
  from its first ``Predicting <case>:`` line to its last ``done with <case>`` line, over the number of cases
  (sliding-window inference; the next case is preprocessed meanwhile in nnU-Net's background process); process
  start-up, model loading, the first case's preprocessing and the export after the loop excluded (recorded as
  ``predict_startup_s`` and ``export_tail_s``);
- peak memory of the training process: ``torch.cuda.max_memory_allocated`` on CUDA, peak RSS (``getrusage``) on
  the CPU;
- parameters and forward FLOPs at the plans' patch size, batch 1, of the inference network built by the
  trainer's own ``build_network_architecture`` (``nnunet_sparseattn.complexity``: FLOPs = 2 x multiply-adds).

Results go to ``benchmarks/results/accuracy-<device>-<budget>.json`` (rewritten atomically after every step) and a
plot of mean Dice against training time per iteration to ``accuracy-<device>-<budget>.png``; the section text for
BENCHMARKS.md to ``benchmarks/accuracy_section.md``; ``--update-docs`` also rewrites BENCHMARKS.md between the
markers ``<!-- accuracy:begin -->`` and ``<!-- accuracy:end -->``.

Resuming: run the same command again. A finished run is never redone; a killed training continues with nnU-Net's
``--c`` from its last epoch (the budgeted trainers checkpoint every epoch); a trained model that was not yet scored
is only predicted and scored. Trainers that do not exist yet are recorded as ``absent`` with the reason.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a script; nnU-Net's processes get ROOT through PYTHONPATH
    sys.path.insert(0, str(ROOT))

from benchmarks.attention import _loadavg, _machine
from benchmarks.budgets import (
    BUDGETS,
    TIMING_FILE,
    TRAINERS,
    Budget,
    budgeted_name,
    find_base_trainer,
    peak_memory,
    seconds_per_iteration,
    write_json_atomic,
)
from nnunet_sparseattn.discovery import ext_trainer_path
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.evaluation.metrics import hd95  # the one HD95 of the project (MONAI's), as `evaluate` reports it

RESULTS = ROOT / "benchmarks" / "results"
SECTION = ROOT / "benchmarks" / "accuracy_section.md"
DOCS = ROOT / "BENCHMARKS.md"
DATA = ROOT.parent / "shared" / "data"
MARKERS = ("<!-- accuracy:begin -->", "<!-- accuracy:end -->")
PLANS = "nnUNetPlans"
SCHEMA = 1


# ---------------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetSpec:
    key: str
    title: str
    configuration: str
    source: str  # folder under the data root
    distance_unit: str  # HD95's unit: the images' spacing unit


DATASETS: dict[str, DatasetSpec] = {
    "hippocampus": DatasetSpec("hippocampus", "MSD Hippocampus", "3d_fullres", "Task04_Hippocampus", "mm"),
    "isic2017": DatasetSpec("isic2017", "ISIC 2017", "2d", "ISIC2017_256", "px"),
}
ISIC_DATASET_ID = 917


def convert_dataset(spec: DatasetSpec, data_root: Path, env: dict[str, str], keep: int | None) -> int:
    """Convert ``spec``'s data into nnU-Net's raw folder, keeping its first ``keep`` training cases (None: all);
    return the nnU-Net dataset id."""
    from nnunet_sparseattn.demo import pipeline

    source = data_root / spec.source
    if not source.is_dir():
        raise UserError(f"{spec.title} is not at {source}: pass --data with the folder that holds {spec.source}")
    raw = Path(env["nnUNet_raw"])
    if spec.key == "hippocampus":
        dataset_id = pipeline.convert_msd(source, env)
        if keep is not None:
            pipeline.keep_training_cases(pipeline.dataset_folder(raw, dataset_id), keep)
        return dataset_id
    if spec.key == "isic2017":
        from nnunet_sparseattn.convert2d import convert_2d

        # overwrite: a conversion cut short by a kill is redone (the dataset is not prepared until planned)
        convert_2d(source / "images", source / "masks", ISIC_DATASET_ID, name="ISIC2017", raw_root=raw,
                   limit=keep, label_names=["lesion"], overwrite=True)
        return ISIC_DATASET_ID
    raise UserError(f"no converter for dataset {spec.key}")


# ------------------------------------------------------------------------------------------------ the metric
def drop_singleton_axes(seg: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    """nnU-Net reads a segmentation as (1, *spatial) with one spacing per spatial axis, a 2D image as (1, 1, X, Y)
    with a dummy spacing (999) for the dummy axis: keep the real spatial axes and their spacings."""
    spatial = seg[0]
    keep = [i for i, n in enumerate(spatial.shape) if n > 1]
    return spatial.squeeze(tuple(i for i in range(spatial.ndim) if i not in keep)), tuple(spacing[i] for i in keep)


def boundary_metrics(prediction_folder: Path, reference_folder: Path, dataset_json: dict,
                     cases: list[str]) -> dict[str, Any]:
    """HD95 per label over ``cases`` (files named ``<case><file_ending>`` in both folders), read with the reader
    nnU-Net uses for the dataset."""
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
    )

    ending = dataset_json["file_ending"]
    labels = {name: value for name, value in dataset_json["labels"].items() if name != "background"}
    if any(not isinstance(v, int) for v in labels.values()):
        raise UserError("the benchmark scores label datasets, not region-based ones")
    reader = determine_reader_writer_from_dataset_json(dataset_json, str(reference_folder / f"{cases[0]}{ending}"),
                                                       verbose=False)()
    values: dict[str, list[float]] = {name: [] for name in labels}
    undefined = {name: 0 for name in labels}
    for case in cases:
        ref, ref_props = reader.read_seg(str(reference_folder / f"{case}{ending}"))
        pred, _ = reader.read_seg(str(prediction_folder / f"{case}{ending}"))
        ref, spacing = drop_singleton_axes(ref, tuple(ref_props["spacing"]))
        pred, _ = drop_singleton_axes(pred, tuple(ref_props["spacing"]))
        for name, value in labels.items():
            in_ref, in_pred = ref == value, pred == value
            if not in_ref.any() and not in_pred.any():
                continue  # absent and not predicted: nothing to score (nnU-Net's Dice is NaN there too)
            d = hd95(in_pred, in_ref, spacing)
            if math.isnan(d):
                undefined[name] += 1
            else:
                values[name].append(d)
    per_class = {name: (float(np.mean(v)) if v else None) for name, v in values.items()}
    scored = [v for v in per_class.values() if v is not None]
    return {"hd95": per_class, "mean_hd95": float(np.mean(scored)) if len(scored) == len(per_class) else None,
            "hd95_scored_cases": {name: len(v) for name, v in values.items()},
            "hd95_undefined_cases": undefined}


# ------------------------------------------------------------------------------------------------ the results
def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


class ResultsStore:
    """The results file of one (device, budget): loaded if it exists, rewritten atomically on every change."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("budget") != header["budget"]:
                raise UserError(f"{self.path} was made with another budget ({self.data.get('budget')}): move it "
                                "away, or pass another --out-dir, to start afresh")
            if self.data.get("machine") != header["machine"]:
                raise UserError(f"{self.path} was measured on {self.data.get('machine')}, this is "
                                f"{header['machine']}: timings would mix machines; move it away or pass another "
                                "--out-dir")
            self.data.update({k: v for k, v in header.items() if k != "started"})
        else:
            self.data = dict(header, datasets={})
        self.save()

    def dataset(self, key: str) -> dict[str, Any]:
        return self.data["datasets"].setdefault(key, {"runs": {}})

    def run(self, dataset: str, trainer: str) -> dict[str, Any] | None:
        return self.dataset(dataset)["runs"].get(trainer)

    def set_run(self, dataset: str, trainer: str, record: dict[str, Any]) -> None:
        runs = self.dataset(dataset)["runs"]
        runs[trainer] = record
        # keep the table order whatever order the runs finished in
        self.dataset(dataset)["runs"] = {t: runs[t] for t in sorted(runs, key=_trainer_order)}
        self.save()

    def save(self) -> None:
        self.data["updated"] = now()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data)


def _trainer_order(name: str) -> tuple[int, str]:
    return (TRAINERS.index(name) if name in TRAINERS else len(TRAINERS), name)


def training_state(fold_dir: Path) -> str:
    """``done`` (nnU-Net wrote the final checkpoint), ``resume`` (a killed run left a checkpoint: ``--c``) or
    ``fresh``."""
    if (fold_dir / "checkpoint_final.pth").is_file():
        return "done"
    if any((fold_dir / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_best.pth")):
        return "resume"
    return "fresh"


def pending_runs(store: ResultsStore, datasets: list[str], trainers: list[str],
                 find: Callable[[str], type | None] = find_base_trainer) -> list[tuple[str, str]]:
    """The (dataset, trainer) runs still to do; trainers that do not exist are recorded ``absent`` (and looked for
    again next time), finished runs are skipped."""
    todo = []
    for dataset in datasets:
        for trainer in trainers:
            record = store.run(dataset, trainer)
            if record is not None and record.get("status") == "done":
                continue
            if find(trainer) is None:
                store.set_run(dataset, trainer, {
                    "status": "absent",
                    "reason": f"no trainer {trainer} in nnunet_sparseattn.trainers yet (not built), checked "
                              f"{now()}"})
                continue
            todo.append((dataset, trainer))
    return todo


# --------------------------------------------------------------------------------------------------- the runs
def bench_environment(work: Path, budget: Budget) -> dict[str, str]:
    """nnU-Net's environment for the benchmark's commands (``pipeline.nnunet_environment``), plus the budgeted
    trainers: a shim in ``work/ext_trainers`` imports them from ``benchmarks.budgets``, which stays importable in
    nnU-Net's processes (``PYTHONPATH``), so the class nnU-Net finds is the object that pickles."""
    from nnunet_sparseattn.demo import pipeline

    env = pipeline.nnunet_environment(work)
    shim = Path(work).resolve() / "ext_trainers"
    shim.mkdir(exist_ok=True)
    (shim / "nnunet_sparseattn_bench_shim.py").write_text(
        "# written by benchmarks/accuracy.py: the budgeted benchmark trainers\n"
        "from benchmarks.budgets import *  # noqa: F401,F403\n")
    env["nnUNet_extTrainer"] = os.pathsep.join([str(ext_trainer_path()), str(shim)])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # nnU-Net's predictor compiles only when asked: the budget's compile applies to training (see _train)
    env["nnUNet_compile"] = "f"
    return env


class Harness:
    def __init__(self, budget: Budget, work: Path, data_root: Path, store: ResultsStore):
        self.budget, self.work, self.data_root, self.store = budget, Path(work).resolve(), data_root, store
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = bench_environment(self.work, budget)

    # ---- one dataset, once
    def prepare(self, spec: DatasetSpec) -> int:
        from nnunet_sparseattn.demo import pipeline

        record = self.store.dataset(spec.key)
        if record.get("prepared"):
            return record["dataset_id"]
        started = time.monotonic()
        dataset_id = convert_dataset(spec, self.data_root, self.env, self.budget.training_cases.get(spec.key))
        folder = pipeline.dataset_folder(Path(self.env["nnUNet_raw"]), dataset_id)
        pipeline.plan_and_preprocess(dataset_id, spec.configuration, self.env, self.logs / f"{spec.key}-prepare.log")
        plans = json.loads((self._preprocessed(dataset_id) / f"{PLANS}.json").read_text())
        configuration = plans["configurations"][spec.configuration]
        record.update({
            "title": spec.title, "dataset_id": dataset_id, "configuration": spec.configuration,
            "training_cases": json.loads((folder / "dataset.json").read_text())["numTraining"],
            "patch_size": configuration["patch_size"], "batch_size": configuration["batch_size"],
            "spacing": configuration["spacing"], "distance_unit": spec.distance_unit,
            "prepare_s": round(time.monotonic() - started, 1), "prepared": True})
        self.store.save()
        return dataset_id

    def _preprocessed(self, dataset_id: int) -> Path:
        return next(Path(self.env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id:03d}_*"))

    def _model_folder(self, dataset_id: int, trainer_class: str, configuration: str) -> Path:
        dataset = self._preprocessed(dataset_id).name
        return Path(self.env["nnUNet_results"]) / dataset / f"{trainer_class}__{PLANS}__{configuration}"

    # ---- one trainer on one dataset
    def run(self, spec: DatasetSpec, dataset_id: int, trainer: str) -> dict[str, Any]:
        budget = self.budget
        trainer_class = budgeted_name(trainer, budget)
        log = self.logs / f"{spec.key}-{trainer}.log"
        record = dict(self.store.run(spec.key, trainer) or {})
        if record.get("status") != "training":  # absent/failed before: start the record afresh
            record = {"status": "training", "trainer_class": trainer_class, "log": str(log), "train_wall_s": 0.0}
        record.update(self.complexity(spec, dataset_id, trainer))
        self.store.set_run(spec.key, trainer, record)

        fold_dir = self._model_folder(dataset_id, trainer_class, spec.configuration) / f"fold_{budget.fold}"
        state = training_state(fold_dir)
        if state != "done":
            record["load_average_before_training"] = _loadavg()  # other processes inflate CPU timings
            started = time.monotonic()
            self._train(dataset_id, spec.configuration, trainer_class, resume=state == "resume", log=log)
            record["train_wall_s"] += round(time.monotonic() - started, 1)  # a killed session's time is lost
            record["load_average_after_training"] = _loadavg()
            self.store.set_run(spec.key, trainer, record)
        timing = json.loads((fold_dir / TIMING_FILE).read_text())
        record.update(seconds_per_iteration(timing))
        record.update(peak_memory(timing))
        record["epochs"], record["iterations_per_epoch"] = budget.num_epochs, budget.num_iterations_per_epoch

        images, labels, cases = self._heldout(spec, dataset_id)
        predictions = self.work / "predictions" / spec.key / trainer
        record.update(self._predict(spec, dataset_id, trainer_class, images, predictions, log))
        from nnunet_sparseattn.demo import pipeline

        summary = pipeline.evaluate(labels, predictions, dataset_id, trainer_class, spec.configuration, self.env,
                                    log)
        dataset_json = json.loads((self._preprocessed(dataset_id) / "dataset.json").read_text())
        names = {str(v): k for k, v in dataset_json["labels"].items() if k != "background"}
        record["dice"] = {names[k]: v["Dice"] for k, v in summary["mean"].items() if k in names}
        record["mean_dice"] = summary["foreground_mean"]["Dice"]
        record.update(boundary_metrics(predictions, labels, dataset_json, cases))
        record.update(status="done", finished=now())
        return record

    def complexity(self, spec: DatasetSpec, dataset_id: int, trainer: str) -> dict[str, Any]:
        """Parameters and forward FLOPs of the inference network, as nnU-Net's predictor builds it."""
        import torch
        from nnunetv2.utilities.label_handling.label_handling import (
            determine_num_input_channels,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_sparseattn.complexity import count_flops, count_parameters

        preprocessed = self._preprocessed(dataset_id)
        plans_manager = PlansManager(str(preprocessed / f"{PLANS}.json"))
        configuration = plans_manager.get_configuration(spec.configuration)
        dataset_json = json.loads((preprocessed / "dataset.json").read_text())
        inputs = determine_num_input_channels(plans_manager, configuration, dataset_json)
        outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        torch.manual_seed(self.budget.seed)
        network = find_base_trainer(trainer).build_network_architecture(
            plans_manager, configuration, inputs, outputs, enable_deep_supervision=False)
        return {"params": count_parameters(network),
                "flops": count_flops(network, (1, inputs, *configuration.patch_size)),
                "flops_input": [1, inputs, *configuration.patch_size]}

    def _train(self, dataset_id: int, configuration: str, trainer_class: str, resume: bool, log: Path) -> None:
        from nnunet_sparseattn.demo import pipeline

        env = dict(self.env, nnUNet_compile="t" if self.budget.compile else "f")
        if self.budget.device == "cpu":  # augmentation in the training process: seeded, and cheaper on 2 cores
            env["nnUNet_n_proc_DA"] = "0"
        args = ["nnUNetv2_train", dataset_id, configuration, self.budget.fold, "-tr", trainer_class,
                "-device", self.budget.device] + (["--c"] if resume else [])
        pipeline.run_step(args, env, log)

    def _heldout(self, spec: DatasetSpec, dataset_id: int) -> tuple[Path, Path, list[str]]:
        """The fold's validation cases to predict (nnU-Net's own split, written by the first training), copied
        once into an images and a labels folder."""
        from nnunet_sparseattn.demo import pipeline

        cases = sorted(pipeline.validation_cases(dataset_id, self.budget.fold, self.env))
        cases = cases[: self.budget.max_predicted_cases]
        record = self.store.dataset(spec.key)
        base = self.work / "heldout" / spec.key
        images, labels = base / "images", base / "labels"
        if record.get("predicted_cases") != cases:
            raw = pipeline.dataset_folder(Path(self.env["nnUNet_raw"]), dataset_id)
            ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
            for folder in (images, labels):
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
            for case in cases:
                for image in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"):
                    shutil.copy(image, images / image.name)
                shutil.copy(raw / "labelsTr" / f"{case}{ending}", labels / f"{case}{ending}")
            record["predicted_cases"] = cases
            self.store.save()
        return images, labels, cases

    def _predict(self, spec: DatasetSpec, dataset_id: int, trainer_class: str, images: Path, predictions: Path,
                 log: Path) -> dict[str, Any]:
        shutil.rmtree(predictions, ignore_errors=True)
        args = ["nnUNetv2_predict", "-i", images, "-o", predictions, "-d", dataset_id, "-c", spec.configuration,
                "-f", self.budget.fold, "-tr", trainer_class, "-device", self.budget.device, "--disable_progress_bar"]
        args += [] if self.budget.tta else ["--disable_tta"]
        args += ["-npp", "1", "-nps", "1"] if self.budget.device == "cpu" else []
        lines = run_timestamped(args, self.env, log)
        return prediction_timing(lines, len(self.store.dataset(spec.key)["predicted_cases"]))


def run_timestamped(args: list, env: dict[str, str], log: Path) -> list[tuple[float, str]]:
    """Run one nnU-Net command, appending its output to ``log``; return its lines with their arrival times
    (seconds since the start; the last entry, ``<exit>``, is when the process ended)."""
    import subprocess

    from nnunet_sparseattn.demo import pipeline

    command = [pipeline.nnunet_command(args[0])] + [str(a) for a in args[1:]]
    print(f"\n$ {shlex.join([args[0]] + command[1:])}", flush=True)
    lines = []
    started = time.monotonic()
    with open(log, "a") as stream:
        stream.write(f"\n$ {shlex.join(command)}\n")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            stream.write(line)
        code = process.wait()
    lines.append((time.monotonic() - started, "<exit>"))
    if code != 0:
        raise UserError(f"{args[0]} failed with exit code {code}: see {log}")
    print(f"   ({args[0]} took {lines[-1][0]:.0f} s)", flush=True)
    return lines


def prediction_timing(lines: list[tuple[float, str]], cases: int) -> dict[str, Any]:
    """Inference time per case from ``nnUNetv2_predict``'s timestamped output: nnU-Net's prediction loop, from its
    first ``Predicting <case>:`` line to its last ``done with <case>`` line, over the cases. Each turn of the loop
    takes the next preprocessed case (preprocessed meanwhile in nnU-Net's background process), runs the
    sliding-window inference and hands the logits to the export workers. Excluded: process start-up and model
    loading (``predict_startup_s``, which includes the first case's preprocessing) and the export still running
    after the loop (``export_tail_s``; with few cases it carries the spawned export workers' own start-up)."""
    starts = [t for t, line in lines if line.startswith("Predicting ")]
    ends = [t for t, line in lines if line.startswith("done with ")]
    export = next((t for t, line in lines if line.strip() == "Segmentation export complete."), None)
    if len(starts) != cases or len(ends) != cases or export is None:
        raise UserError(f"nnUNetv2_predict's output did not show {cases} predicted cases and their export "
                        f"({len(starts)} 'Predicting', {len(ends)} 'done with' lines): has its output format "
                        "changed?")
    return {"s_per_case": (ends[-1] - starts[0]) / cases, "predict_wall_s": round(lines[-1][0], 2),
            "predict_startup_s": round(starts[0], 2), "export_tail_s": round(export - ends[-1], 2)}


def run_benchmark(budget: Budget, datasets: list[str], trainers: list[str], work: Path, data_root: Path,
                  out_dir: Path, command: str) -> ResultsStore:
    import torch

    if budget.device == "cuda" and not torch.cuda.is_available():
        raise UserError(f"budget {budget.name} trains on CUDA, and no CUDA device is visible: use --budget cpu")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "budget.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != budget.to_json():
        raise UserError(f"{work} holds models trained under another budget ({stamp}): pass another --work")
    write_json_atomic(stamp, budget.to_json())

    header = {"benchmark": "accuracy", "schema": SCHEMA, "device": budget.device, "budget": budget.to_json(),
              "budget_text": budget.describe(), "machine": _machine(torch.device(budget.device)),
              "torch": torch.__version__, "nnunetv2": _version("nnunetv2"),
              "python": platform.python_version(), "command": command, "started": now()}
    store = ResultsStore(out_dir / f"accuracy-{budget.device}-{budget.name}.json", header)
    todo = pending_runs(store, datasets, trainers)
    harness = Harness(budget, work, data_root, store)
    for key in datasets:
        spec = DATASETS[key]
        runs = [t for d, t in todo if d == key]
        if not runs:
            continue
        dataset_id = harness.prepare(spec)
        for trainer in runs:
            print(f"\n== {spec.title}: {trainer} under budget {budget.name}", flush=True)
            try:
                record = harness.run(spec, dataset_id, trainer)
            except UserError as error:  # one broken trainer must not cost the others their runs
                record = dict(store.run(key, trainer) or {}, status="failed", reason=str(error))
                print(f"   failed: {error}", flush=True)
            store.set_run(key, trainer, record)
    return store


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# ---------------------------------------------------------------------------------------------- the reports
def _short(trainer: str) -> str:
    return trainer.removeprefix("nnUNetTrainer") or "stock nnU-Net"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _size(n: float | None, unit: str = "", binary: bool = False) -> str:
    if n is None:
        return "–"
    scales = ((2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")) if binary else \
        ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
    for scale, prefix in scales:
        if n >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".strip()


SPARSE_ATTENTION = ("nnUNetTrainerBSA", "nnUNetTrainerMDSA", "nnUNetTrainerBilateral")


def results_table(results: dict[str, Any]) -> str:
    header = ("| dataset | trainer | mean Dice | Dice per class | HD95 per class | s/iter | s/case | peak memory "
              "| params | FLOPs | vs stock: Dice points, s/iter | status |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, dataset in results["datasets"].items():
        title = dataset.get("title", key)
        unit = dataset.get("distance_unit", "")
        stock = dataset["runs"].get("nnUNetTrainer", {})
        for trainer, r in dataset["runs"].items():
            done = r.get("status") == "done"
            status = r["status"] if done else f"{r['status']}: {r.get('reason', 'unfinished')}"
            dice = ", ".join(f"{k} {_num(v)}" for k, v in r.get("dice", {}).items()) or "–"
            hd = ", ".join(f"{k} {_num(v, 2)}" for k, v in r.get("hd95", {}).items()) or "–"
            if r.get("hd95"):
                hd += f" {unit}"
            vs = "–"
            if done and trainer != "nnUNetTrainer" and stock.get("status") == "done":
                vs = (f"{100 * (r['mean_dice'] - stock['mean_dice']):+.1f}, "
                      f"{r['s_per_iter'] / stock['s_per_iter']:.2f}x")
            rows.append(
                f"| {title} | {_short(trainer)} | {_num(r.get('mean_dice'))} | {dice} | {hd} "
                f"| {_num(r.get('s_per_iter'), 3)} | {_num(r.get('s_per_case'), 2)} "
                f"| {_size(r.get('peak_memory_bytes'), 'B', binary=True)} | {_size(r.get('params'))} "
                f"| {_size(r.get('flops'))} | {vs} | {status} |")
    return "\n".join(rows)


def target_lines(results: dict[str, Any]) -> list[str]:
    """The issue's targets on Hippocampus: each sparse-attention trainer within 0.5 Dice points of stock nnU-Net's
    mean Dice (or above), at no more than 1.5x its training time per iteration (stated for a GPU)."""
    runs = results["datasets"].get("hippocampus", {}).get("runs", {})
    stock = runs.get("nnUNetTrainer", {})
    lines = []
    for trainer in SPARSE_ATTENTION:
        r = runs.get(trainer)
        if r is None or r.get("status") != "done" or stock.get("status") != "done":
            state = "not measured" if r is None else r.get("status")
            lines.append(f"- {_short(trainer)}: {state}")
            continue
        delta = 100 * (r["mean_dice"] - stock["mean_dice"])
        ratio = r["s_per_iter"] / stock["s_per_iter"]
        lines.append(f"- {_short(trainer)}: Dice {delta:+.2f} points ({'met' if delta >= -0.5 else 'missed'}), "
                     f"time per iteration {ratio:.2f}x ({'met' if ratio <= 1.5 else 'missed'})")
    return lines


def render_results(results: dict[str, Any], png: str | None) -> str:
    budget = results["budget"]
    date = results.get("updated", results.get("started", ""))[:10]
    parts = [f"### `{budget['name']}` budget on {results['machine']} ({date})", "",
             f"Command: `{results['command']}`  ",
             f"Budget: {results['budget_text']}.  ",
             f"Versions: torch {results['torch']}, nnU-Net {results['nnunetv2']}, Python {results['python']}.  ",
             f"Ran from {results.get('started', '?')} to {results.get('updated', '?')} (resumed runs included).", ""]
    for key, dataset in results["datasets"].items():
        if dataset.get("prepared"):
            parts.append(f"- {dataset.get('title', key)}: dataset {dataset['dataset_id']} "
                         f"`{dataset['configuration']}`, {dataset['training_cases']} training cases, patch "
                         f"{'x'.join(map(str, dataset['patch_size']))}, batch {dataset['batch_size']}, "
                         f"{len(dataset.get('predicted_cases', []))} validation cases of fold {budget['fold']} "
                         f"predicted and scored.")
    parts += ["", results_table(results), "",
              f"Targets on Hippocampus ({'measured on this GPU' if results['device'] == 'cuda' else 'stated for a GPU budget; this is a CPU run'}):",
              *target_lines(results)]
    if png:
        parts += ["", f"![mean Dice against training time per iteration, {budget['name']} budget]({png})"]
    return "\n".join(parts)


METHODS = """\
`benchmarks/accuracy.py` trains every trainer through nnU-Net's own commands (`nnUNetv2_plan_and_preprocess`,
`nnUNetv2_train`, `nnUNetv2_predict`, `nnUNetv2_evaluate_folder`) under one named budget
(`benchmarks/budgets.py`): the same epochs x iterations per epoch, seed, fold 0 and training cases for stock
`nnUNetTrainer` and ours, applied by one mixin (`<Trainer>_bench<budget>`), the default nnU-Net plans for all.
It predicts the fold's validation cases (at most the budget's number, first in name order) and records:

- **Dice**: nnU-Net's evaluation of those cases, per class and its mean over classes (`foreground_mean`).
- **HD95**: MONAI's per case and class (`nnunet_sparseattn.evaluation.metrics.hd95`, the one `evaluate` reports:
  the larger of the two directed 95th percentiles of the edge distances),
  in mm on Hippocampus, in pixels on ISIC (its images were resized to 256 x 256), averaged over the cases where
  reference and prediction both hold the class (the JSON counts the others: `hd95_undefined_cases`).
- **s/iter**: training time per iteration, timed inside `nnUNetv2_train` per epoch from the first to the last
  training iteration (data loading, forward, backward, step; validation iterations excluded), over the epochs that
  were not the first of their process (warm-up: allocator, cuDNN, `torch.compile`).
- **s/case**: `nnUNetv2_predict` over all predicted cases, its output timestamped as it arrives: nnU-Net's
  prediction loop from the first `Predicting <case>:` line to the last `done with <case>`, over the cases
  (sliding-window inference, the next case preprocessed meanwhile in the background). Excluded, and in the JSON:
  process start-up and model loading (`predict_startup_s`), the export after the loop (`export_tail_s`).
- **peak memory**: of the training process; CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS (getrusage).
- **params, FLOPs**: the inference network from the trainer's `build_network_architecture`, forward at the
  plans' patch size, batch 1, `torch.utils.flop_counter` (FLOPs = 2 x multiply-adds; norms and activations not
  counted).
- Seeded: Python, NumPy and torch in the training process (network initialisation; CPU augmentation runs in that
  process). Not seeded: nnU-Net's augmentation workers (GPU runs), cuDNN's algorithm choice, GPU atomics.

Resume: a killed benchmark continues where it stopped when the same command is run again (nnU-Net's `--c`, a
checkpoint every epoch; finished runs are kept). Trainers not built yet are listed as `absent`."""


def render_section(results_files: list[Path], docs_root: Path = ROOT) -> str:
    parts = ["<!-- written by benchmarks/accuracy.py from benchmarks/results/accuracy-*.json: do not edit -->",
             "## Accuracy and cost on real data", "",
             "```",
             "make bench-accuracy              # CPU budget: .venv/bin/python benchmarks/accuracy.py --budget cpu",
             "make bench-accuracy BUDGET=gpu   # on a CUDA machine",
             "```", "", METHODS]
    if not results_files:
        parts += ["", "No results yet."]
    for path in results_files:
        results = json.loads(Path(path).read_text())
        png = Path(path).with_suffix(".png")
        link = None
        if png.is_file():
            try:
                link = str(png.resolve().relative_to(Path(docs_root).resolve()))
            except ValueError:
                link = str(png)
        parts += ["", render_results(results, link)]
    return "\n".join(parts) + "\n"


def splice_section(document: str, section: str) -> str:
    """``document`` with the text between the accuracy markers replaced by ``section``."""
    begin, end = MARKERS
    if document.count(begin) != 1 or document.count(end) != 1 or document.index(begin) > document.index(end):
        raise UserError(f"BENCHMARKS.md needs exactly one {begin} followed by one {end} where the accuracy section "
                        "goes: add them, then run with --update-docs again")
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{section.rstrip()}\n{end}{tail}"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Mean Dice against training time per iteration, one marker per trainer, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, d) for key, d in results["datasets"].items()
              if any(r.get("status") == "done" for r in d["runs"].values())]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    markers = dict(zip(TRAINERS, "osD^v"))
    for ax, (key, dataset) in zip(axes[0], panels):
        for trainer, r in dataset["runs"].items():
            if r.get("status") != "done":
                continue
            ax.scatter(r["s_per_iter"], r["mean_dice"], marker=markers.get(trainer, "x"), s=60,
                       label=_short(trainer))
            ax.annotate(_short(trainer), (r["s_per_iter"], r["mean_dice"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
        ax.set_title(f"{dataset.get('title', key)} ({dataset.get('configuration', '')})")
        ax.set_xlabel("training time per iteration (s)")
        ax.set_ylabel("mean Dice (validation cases of fold 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    budget = results["budget"]
    fig.suptitle(f"{budget['name']} budget: {budget['num_epochs']} x {budget['num_iterations_per_epoch']} "
                 f"iterations, {results['machine']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(out_dir: Path, section_path: Path, docs: Path | None) -> None:
    files = sorted(Path(out_dir).glob("accuracy-*.json"))
    for path in files:
        plot(json.loads(path.read_text()), path.with_suffix(".png"))
    section = render_section(files, docs.parent if docs is not None else ROOT)
    section_path.parent.mkdir(parents=True, exist_ok=True)
    section_path.write_text(section)
    print(f"wrote {section_path}" + "".join(f", {p.with_suffix('.png')}" for p in files
                                           if p.with_suffix(".png").is_file()))
    if docs is not None:
        if not docs.is_file():
            raise UserError(f"{docs} does not exist: --update-docs rewrites its accuracy section")
        docs.write_text(splice_section(docs.read_text(), section))
        print(f"updated the accuracy section of {docs}")


# ------------------------------------------------------------------------------------------------------ main
def _names(value: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"unknown {what} {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="cpu", help=f"named budget: {', '.join(BUDGETS)} (default cpu)")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of "
                    f"{', '.join(DATASETS)}")
    ap.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated subset of "
                    f"{', '.join(TRAINERS)}")
    ap.add_argument("--work", type=Path, default=None,
                    help="nnU-Net's raw/preprocessed/results folders and logs (default bench_work/accuracy-DEVICE-BUDGET)")
    ap.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    ap.add_argument("--section", type=Path, default=SECTION, help=f"section text output (default {SECTION})")
    ap.add_argument("--update-docs", action="store_true", help=f"also rewrite the accuracy section of {DOCS.name}")
    ap.add_argument("--docs", type=Path, default=DOCS, help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="only rewrite the section and plots from the JSONs")
    args = ap.parse_args(argv)
    try:
        if args.update_docs:  # before hours of training, not after
            splice_section(args.docs.read_text() if args.docs.is_file() else "", "")
        if not args.report_only:
            if args.budget not in BUDGETS:
                raise UserError(f"unknown budget {args.budget}: choose from {', '.join(BUDGETS)}")
            budget = BUDGETS[args.budget]
            datasets = _names(args.datasets, tuple(DATASETS), "dataset")
            trainers = _names(args.trainers, TRAINERS, "trainer")
            work = args.work or ROOT / "bench_work" / f"accuracy-{budget.device}-{budget.name}"
            command = shlex.join(["python", "benchmarks/accuracy.py", *(sys.argv[1:] if argv is None else argv)])
            store = run_benchmark(budget, datasets, trainers, work, args.data, args.out_dir, command)
        write_reports(args.out_dir, args.section, args.docs if args.update_docs else None)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.report_only:
        return 0
    failed = [(d, t) for d, rec in store.data["datasets"].items() for t, r in rec["runs"].items()
              if r.get("status") == "failed"]
    print("\n" + results_table(store.data))
    if failed:
        print(f"\n{len(failed)} run(s) failed: {', '.join(f'{d}/{t}' for d, t in failed)} (see their logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

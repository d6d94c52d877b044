"""Learning curves on the CPU: stock nnU-Net and each method at two budgets on three datasets, through ``compare``.

Usage (``make bench-curves`` = ``--all --update-docs``: every piece not yet finished, in order, then the report):

    .venv/bin/python -m benchmarks.curves --all [--update-docs]            # the whole protocol, resumable
    .venv/bin/python -m benchmarks.curves --dataset cvc --budget 6x50b2 [--seed 1] [--trainer nnUNetTrainerBSA]
    .venv/bin/python -m benchmarks.curves --dry-run                        # the pieces, their state and hours
    .venv/bin/python -m benchmarks.curves --report-only --update-docs      # finished runs -> JSON, plots, docs
    .venv/bin/python -m benchmarks.curves --tiny --all --work /tmp/tiny    # the whole pipeline at toy sizes

The protocol (issue 21):

- Data (``../shared/data``, split by ``benchmarks/splits.py``, lists in ``benchmarks/splits/``): CVC-ClinicDB (polyps,
  the bilateral paper's kind; 477 training / 132 test frames, split by video sequence), ISIC 2017 (skin lesions,
  MDSA-UNet's second kind; 1700 / 300), MSD Hippocampus in nnU-Net's ``2d`` configuration (two structures,
  BSA-Seg's kind; 208 / 52 patients). The 2D sets are converted by ``convert_2d`` (``convert-2d``; CVC's lossy
  JPEG masks with ``threshold`` 127) and resized to 160 x 160; Hippocampus is converted by nnU-Net's
  ``nnUNetv2_convert_MSD_dataset`` and planned by nnU-Net's planner with its in-plane target spacing at 0.28 mm
  (``-overwrite_target_spacing 1 0.28 0.28``, plans ``nnUNetPlans_inplane0p28``: 3.6x its 1 mm voxels in-plane,
  slices of about 179 x 125, patch 192 x 128); nnU-Net's default 2d plans (patch 56 x 40) are planned as well,
  unused.
- Why these sizes: the first attention stage of BSA and MDSA (stage 2, 1/4 of the patch) must be routed, with
  several times more regions than top-k (``nnunet-sparseattn info``, ``harness.networks.attention_layout``). At
  160 x 160 that stage is 40 x 40 tokens: BSA cuts it into 25 regions of 8 x 8 and keeps the top 4 (6x), MDSA into
  a 5 x 5 grid and keeps the top 8 (3x); their next stage (20 x 20) is dense (BSA) or 9 regions (MDSA). At
  128 x 128 MDSA would keep 8 of 16 (2x). At Hippocampus's own 1 mm (2d patch 56 x 40, stage 2 14 x 10 = 140
  tokens) BSA's stage is dense (at most 512 tokens: one region) and MDSA has 4 regions for a top-8: both dense,
  no routing measured at all; at 0.28 mm (patch 192 x 128, stage 2 48 x 32) BSA has 24 regions for a top-4 (6x),
  MDSA 24 for a top-8 (3x), as on the 2D sets (0.25 mm: 35 regions, but 1.4x the cost, over the ~12 hours).
- Trainers: ``nnUNetTrainer`` (stock), ``nnUNetTrainerNB``, ``nnUNetTrainerBSA``, ``nnUNetTrainerMDSA``,
  ``nnUNetTrainerBilateral``, their shipped defaults; nnU-Net's plans for all (one plans file per dataset); batch
  capped at 2 for all (``b2``: nnU-Net plans 24 at 160 x 160); fold 0 of nnU-Net's 5-fold split of the training
  side trains (its validation cases give nnU-Net's pseudo-Dice); the test side is predicted (no TTA) and scored.
- Budgets (``EPOCHSxITERATIONS`` of ``harness.budgets``): short ``6x50b2`` (300 iterations) with seeds 0, 1, 2
  (``6x50b2``, ``6x50b2s1``, ``6x50b2s2``), long ``30x50b2`` (1500 iterations, 5x), seed 0.
- Pieces (each a ``compare`` folder ``WORK/<dataset>-<budget>``, resumed by nnU-Net's ``--c`` after a kill): at the
  short budgets one piece per dataset and seed (five trainers); at the long budget one per dataset and trainer
  (stock nnU-Net first: every other piece's paired test needs it). Order: the three short seed-0 pieces, then the
  long pieces dataset by dataset, then seeds 1 and 2.
- Recipes (issue 21 item 3): each trainer's other optimizer beside its shipped default (:data:`RECIPES`: SGD <->
  nnU-Net's AdamW with a linear warm-up, ``AdamWWarmupMixin``), stock nnU-Net's network and the NB trainer included
  as controls (``nnUNetTrainer_AdamW``, ``nnUNetTrainerNB_AdamW``): a method's gain from a recipe is credited to its
  attention only where the controls do not get it too. Explored at the short budget, seed 0, in the same comparison
  folder as the defaults (one piece per dataset, after the short seed-0 pieces: the paired tests share the stock
  run); confirmed at the long budget (one piece per dataset and trainer, after the seeds). A shipped default changes
  only where the long budget shows the other recipe better beyond the seed spread.
- Hours on a quiet 2-core machine (``--dry-run`` prints each piece's): :data:`S_PER_ITER` x iterations x 1.1
  (validation, checkpoints) + a minute's start per run + :data:`PREDICT_S_PER_CASE` x test cases. Per piece:
  short 0.5 (CVC), 0.6 (ISIC), 1.0 h (Hippocampus: 52 volumes to predict per run); long 0.3-0.4 (stock, NB),
  0.4-0.5 (BSA, MDSA), 0.65-0.75 h (Bilateral). 24 pieces, ~13 h in all; under the load of other work,
  proportionally more (measured: 3-9x at a load average of 8-10). The recipes add 0.5-1.0 h per dataset at the
  short budget and 0.3-0.75 h per dataset and trainer at the long one (~9 h).

Each finished piece is merged into ``benchmarks/results/curves-cpu.json`` (one record per dataset and budget:
per-run mean test Dice with a 95 % bootstrap interval over test cases, the paired Wilcoxon test against stock
nnU-Net from ``compare``, ``evaluate``'s polyp metrics on CVC-ClinicDB, s/iter, training CPU time), and the plots
(``curves-cpu.png``: test Dice against iterations and against training CPU hours, a line per method) and the
curves section of BENCHMARKS.md (``--update-docs``, between its ``curves`` markers) are written from that JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import splits
from benchmarks.accuracy import TRAINERS, DatasetSpec, names
from benchmarks.common import DATA, RESULTS, ROOT, add_docs_arguments, check_section, command_line, update_section

RESULTS_FILE = RESULTS / "curves-cpu.json"
MARKERS = ("<!-- curves:begin -->", "<!-- curves:end -->")
SCHEMA = 1
WORK = ROOT.parent / "bench_work_curves"
STOCK = "nnUNetTrainer"
BATCH = 2
SIZE = 160  # the 2D sets' side after convert-2d's resize (see the docstring: why)
HIPPOCAMPUS_SPACING = (1.0, 0.28, 0.28)
HIPPOCAMPUS_PLANS = "nnUNetPlans_inplane0p28"
SHORT, LONG = "6x50b2", "30x50b2"
SEEDS = (0, 1, 2)  # at the short budget
BOOTSTRAP_RESAMPLES = 10000
# Each trainer's other optimizer recipe (issue 21 item 3; the module's docstring): default -> the other one. The stock
# and NB entries are the controls.
RECIPES: dict[str, str] = {
    "nnUNetTrainer": "nnUNetTrainer_AdamW",
    "nnUNetTrainerNB": "nnUNetTrainerNB_AdamW",
    "nnUNetTrainerBSA": "nnUNetTrainerBSA_AdamW",
    "nnUNetTrainerMDSA": "nnUNetTrainerMDSA_AdamW",
    "nnUNetTrainerBilateral": "nnUNetTrainerBilateral_SGD",
}
RECIPE_TRAINERS: tuple[str, ...] = tuple(RECIPES[t] for t in TRAINERS)
ALL_TRAINERS: tuple[str, ...] = (*TRAINERS, *RECIPE_TRAINERS)


@dataclass(frozen=True)
class CurveDataset:
    spec: DatasetSpec
    dataset_id: int
    plans: str = "nnUNetPlans"
    threshold: float | None = None  # convert-2d's, for lossy masks
    label_names: tuple[str, ...] = ()
    images: str = "images"
    masks: str = "masks"


DATASETS: dict[str, CurveDataset] = {
    "cvc": CurveDataset(
        DatasetSpec("cvc", "CVC-ClinicDB", "2d", "CVC-ClinicDB", "px"), 961, threshold=127, label_names=("polyp",)
    ),
    "isic2017": CurveDataset(
        DatasetSpec("isic2017", "ISIC 2017", "2d", "ISIC2017_256", "px"), 962, label_names=("lesion",)
    ),
    "hippocampus": CurveDataset(
        DatasetSpec("hippocampus", "MSD Hippocampus", "2d", "Task04_Hippocampus", "mm"), 4, plans=HIPPOCAMPUS_PLANS
    ),
}
# s/iter per trainer at this protocol's sizes on this 2-core machine when quiet, for the hours estimates only: the
# accuracy benchmark's ISIC 2017 runs (256 x 256, batch 2, load 1.5-3.6; benchmarks/results/accuracy-cpu-cpu.json:
# 1.53, 1.50, 2.10, 2.07, 3.48 s/iter) scaled by the pixels per patch, (160 / 256)^2 = 0.39. Measured at 160 x 160
# in the session that wrote this (CVC-ClinicDB, batch 4, niced, load average 8-10 from other work): 3.5 (stock),
# 5.2 (NB), 14.2 (BSA) s/iter, 2.9x, 4.4x and 8.7x these at twice the batch: a loaded machine takes that much longer.
S_PER_ITER: dict[str, dict[str, float]] = {
    "cvc": {
        "nnUNetTrainer": 0.60,
        "nnUNetTrainerNB": 0.59,
        "nnUNetTrainerBSA": 0.82,
        "nnUNetTrainerMDSA": 0.81,
        "nnUNetTrainerBilateral": 1.36,
    },
}
S_PER_ITER["isic2017"] = S_PER_ITER["cvc"]
# Hippocampus at 0.28 mm: patch 192 x 128, 0.96x the pixels (and the FLOPs: 10.7 vs 11.1 G for stock's network)
S_PER_ITER["hippocampus"] = {k: 0.96 * v for k, v in S_PER_ITER["cvc"].items()}


def default_of(trainer: str) -> str:
    """The shipped default a recipe trainer is the other recipe of (itself for a default)."""
    return next((default for default, other in RECIPES.items() if other == trainer), trainer)


# nnUNetv2_predict per test case (s), quiet machine: the accuracy benchmark's 0.36-0.87 s per 256 x 256 image scaled;
# a Hippocampus case is ~36 slices of about a 2D image's pixels each
PREDICT_S_PER_CASE = {"cvc": 0.3, "isic2017": 0.3, "hippocampus": 8.0}


@dataclass(frozen=True)
class Tiny:
    """``--tiny``'s toy sizes."""

    budgets: tuple[str, ...] = ("2x2b2", "2x2b2s1", "4x2b2")
    train: int = 6  # training cases
    test: int = 3  # test cases


TINY = Tiny()


def budget_name(budget: str, seed: int) -> str:
    """``6x50b2`` with seed 1: ``6x50b2s1`` (harness.budgets' seeded form); seed 0: the budget itself."""
    return budget if seed == 0 else f"{budget}s{seed}"


@dataclass(frozen=True)
class Piece:
    dataset: str
    budget: str  # with its seed: 6x50b2s1
    trainers: tuple[str, ...]
    label: str = ""  # the piece's name for several trainers ("all" without one)

    @property
    def name(self) -> str:
        if len(self.trainers) > 1:
            who = self.label or "all"
        else:
            who = self.trainers[0].removeprefix("nnUNetTrainer")
            who = f"stock{who}" if who.startswith("_") or not who else who  # nnUNetTrainer_AdamW: stock_AdamW
        return f"{self.dataset}/{self.budget}/{who}"

    def folder(self, work: Path) -> Path:
        return work / f"{self.dataset}-{self.budget}"


def plan_pieces(
    datasets: list[str],
    trainers: list[str],
    short: str = SHORT,
    long: str = LONG,
    seeds: tuple[int, ...] = SEEDS,
    recipes: bool = True,
) -> list[Piece]:
    """The protocol's pieces in the order they run (see the module's docstring); ``recipes``: with each trainer's
    other recipe (:data:`RECIPES`, for the trainers that have one)."""
    others = [RECIPES[t] for t in trainers if t in RECIPES] if recipes else []
    pieces = [Piece(d, budget_name(short, seeds[0]), tuple(trainers)) for d in datasets]
    if others:
        pieces += [Piece(d, budget_name(short, seeds[0]), tuple(others), "recipes") for d in datasets]
    pieces += [Piece(d, long, (t,)) for d in datasets for t in trainers]
    pieces += [Piece(d, budget_name(short, s), tuple(trainers)) for s in seeds[1:] for d in datasets]
    pieces += [Piece(d, long, (t,)) for d in datasets for t in others]
    return pieces


def estimate_hours(piece: Piece, test_cases: dict[str, int]) -> float:
    from nnunet_sparseattn.harness.budgets import parse_budget

    iterations = parse_budget(piece.budget).iterations
    rates = S_PER_ITER[piece.dataset]
    seconds = sum(
        rates[default_of(t)] * iterations * 1.1 + 60 for t in piece.trainers
    )  # +10 %: validation, checkpoints; start
    seconds += len(piece.trainers) * PREDICT_S_PER_CASE[piece.dataset] * test_cases.get(piece.dataset, 0)
    return seconds / 3600


# ------------------------------------------------------------------------------------------------------ data
def prepare(key: str, data_root: Path, env: dict[str, str], tiny: bool = False) -> int:
    """``key``'s data split and converted into ``env``'s nnUNet_raw (once), and for Hippocampus its plans at the
    protocol's spacing; returns the nnU-Net dataset id."""
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.harness import commands, datasets

    spec = DATASETS[key]
    raw = Path(env["nnUNet_raw"])
    source = data_root / spec.spec.source
    if not source.is_dir():
        raise UserError(
            f"{spec.spec.title} is not at {source}: pass --data with the folder that holds {spec.spec.source}"
        )
    test = splits.read_list(key)
    folder = datasets.dataset_folder(raw, spec.dataset_id)
    held = len(list((folder / "labelsTs").iterdir())) if folder is not None and (folder / "labelsTs").is_dir() else 0
    if key == "hippocampus" and held < (TINY.test if tiny else len(test)):
        # nnU-Net's converter, then the test cases out of imagesTr (again after a kill between the two)
        folder = datasets.dataset_folder(raw, datasets.convert_msd(source, env))
        assert folder is not None
        splits.hold_out_cases(folder, test)
        if tiny:
            _shrink(folder)
    elif folder is None:
        from nnunet_sparseattn.convert2d import convert_2d

        folder = convert_2d(
            source / spec.images,
            source / spec.masks,
            spec.dataset_id,
            name=spec.spec.source.replace("-", ""),
            raw_root=raw,
            threshold=spec.threshold,
            resize=(SIZE, SIZE),
            test_list=splits.SPLITS / splits.LIST_FILES[key],
            label_names=list(spec.label_names),
        )
        if tiny:
            _shrink(folder)
    if key == "hippocampus":
        plans = datasets.dataset_folder(Path(env["nnUNet_preprocessed"]), spec.dataset_id)
        if plans is None or not (plans / f"{spec.plans}.json").is_file():
            log = Path(env["nnUNet_raw"]).parent / f"plan-{key}.log"
            commands.plan_and_preprocess(spec.dataset_id, "2d", env, log, echo=False)  # fingerprint, default plans
            commands.run_command(
                [
                    "nnUNetv2_plan_experiment",
                    "-d",
                    spec.dataset_id,
                    "-overwrite_target_spacing",
                    *HIPPOCAMPUS_SPACING,
                    "-overwrite_plans_name",
                    spec.plans,
                ],
                env,
                log,
                echo=False,
            )
    return spec.dataset_id


def _shrink(folder: Path) -> None:
    """``--tiny``: the first few training and test cases only."""
    from nnunet_sparseattn.harness import datasets

    datasets.keep_training_cases(folder, TINY.train)
    for label in sorted((folder / "labelsTs").iterdir())[TINY.test :]:
        label.unlink()


def run_piece(piece: Piece, work: Path, data_root: Path, command: str, tiny: bool = False) -> dict[str, Any]:
    """Prepare the piece's dataset and run (or resume) its comparison; returns compare's results."""
    from nnunet_sparseattn.compare.run import CompareRequest, run_compare
    from nnunet_sparseattn.harness.commands import work_environment

    env = work_environment(work)
    spec = DATASETS[piece.dataset]
    dataset_id = prepare(piece.dataset, data_root, env, tiny)
    trainers = [t for t in piece.trainers if t != STOCK]
    request = CompareRequest(
        dataset_id,
        spec.spec.configuration,
        piece.folder(work),
        trainers=trainers,
        baselines=["stock"],
        budget=piece.budget,
        folds=[0],
        device="cpu",
        plans=spec.plans,
        raw=Path(env["nnUNet_raw"]),
        preprocessed=Path(env["nnUNet_preprocessed"]),
        command=command,
    )
    print(f"\n== piece {piece.name}: compare in {request.output}", flush=True)
    return run_compare(request)


def piece_state(piece: Piece, work: Path) -> str:
    """``done`` (every run of the piece finished), ``started`` (its compare folder exists) or ``todo``."""
    path = piece.folder(work) / "compare.json"
    if not path.is_file():
        return "todo"
    runs = json.loads(path.read_text()).get("runs", {})
    spec = DATASETS[piece.dataset]
    done = all(runs.get(f"{t}__{spec.plans}", {}).get("status") == "done" for t in piece.trainers)
    return "done" if done else "started"


# ---------------------------------------------------------------------------------------------- the results
def bootstrap_interval(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES) -> list[float] | None:
    """95 % percentile bootstrap interval of the mean over cases (scipy.stats.bootstrap, seeded)."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray([v for v in values if v is not None], dtype=float)
    if len(data) < 2:
        return None
    if np.all(data == data[0]):
        return [float(data[0]), float(data[0])]
    result = bootstrap(
        (data,),
        np.mean,
        confidence_level=0.95,
        n_resamples=resamples,
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


def training_cpu_seconds(fold_dir: Path) -> float | None:
    """CPU time of the training process over its epochs (``train_cpu_s`` of benchmark_timing.json; all threads)."""
    from nnunet_sparseattn.harness.budgets import TIMING_FILE

    path = fold_dir / TIMING_FILE
    if not path.is_file():
        return None
    epochs = json.loads(path.read_text()).get("epochs", {}).values()
    if not epochs or any("train_cpu_s" not in e for e in epochs):
        return None
    return float(sum(e["train_cpu_s"] for e in epochs))


def compact_run(run: dict[str, Any], fold_dir: Path | None) -> dict[str, Any]:
    """What the curves keep of one compare run: scores, the bootstrap interval, cost."""
    per_case = {c: v["mean_dice"] for c, v in run.get("per_case", {}).items()}
    fold = run.get("folds", {}).get("0", {})
    out = {
        k: run.get(k)
        for k in (
            "label",
            "trainer",
            "status",
            "mean_dice",
            "dice",
            "hd95",
            "s_per_iter",
            "s_per_case",
            "peak_memory_bytes",
            "params",
            "flops",
            "batches_digest",
        )
    }
    out.update(
        per_case_mean_dice=per_case,
        ci95=bootstrap_interval(list(per_case.values())) if per_case else None,
        train_wall_s=fold.get("train_wall_s"),
        train_cpu_s=training_cpu_seconds(fold_dir) if fold_dir is not None else run.get("train_cpu_s"),
        load_average=[fold.get("load_average_before"), fold.get("load_average_after")],
    )
    if run.get("evaluate"):
        out["evaluate"] = run["evaluate"]
    return out


def record_from_compare(results: dict[str, Any], model_root: Path | None = None) -> dict[str, Any]:
    """One dataset-and-budget record of the curves JSON from a comparison's ``compare.json`` (``model_root``: its
    ``nnUNet_results/DatasetXXX``, where the training CPU times are read)."""
    runs = {}
    for key, run in results["runs"].items():
        if run.get("status") != "done":
            continue
        fold_dir = None
        if model_root is not None and run.get("trainer_class"):
            fold_dir = (
                model_root / f"{run['trainer_class']}__{key.split('__', 1)[1]}__{results['configuration']}" / "fold_0"
            )
        runs[run["trainer"]] = compact_run(run, fold_dir)
    tests = {
        t["run"].split("__")[0]: {k: v for k, v in t.items() if k != "run"}
        for t in results.get("tests", [])
        if t["run"].split("__")[0] in runs
    }
    cases = sum(len(c) for c in results["heldout"]["cases"].values()) if results.get("heldout") else 0
    return {
        "dataset": results["dataset"],
        "configuration": results["configuration"],
        "plans": results["plans"],
        "budget": results["budget"],
        "budget_text": results["budget_text"],
        "test_cases": cases,
        "machine": results["machine"],
        "torch": results["torch"],
        "nnunetv2": results["nnunetv2"],
        "started": results["started"],
        "updated": results["updated"],
        "runs": runs,
        "tests_vs_stock": tests,
    }


def merge(old: dict[str, Any] | None, key: str, record: dict[str, Any], command: str) -> dict[str, Any]:
    """The curves JSON with ``record`` (one dataset at one budget) put in, the other records kept."""
    out: dict[str, Any] = (
        old if old and old.get("schema") == SCHEMA else {"benchmark": "curves", "schema": SCHEMA, "datasets": {}}
    )
    dataset = out["datasets"].setdefault(
        key, {"title": DATASETS[key].spec.title, "distance_unit": DATASETS[key].spec.distance_unit, "budgets": {}}
    )
    dataset["budgets"][record["budget"]["name"]] = record
    out["commands"] = sorted(set(out.get("commands", [])) | {command})
    return out


def gather_piece(piece: Piece, work: Path, results_file: Path, command: str) -> dict[str, Any]:
    """Merge the piece's comparison (finished runs only) into the results file; returns the merged results."""
    from nnunet_sparseattn.harness import datasets
    from nnunet_sparseattn.harness.budgets import write_json_atomic

    compare = json.loads((piece.folder(work) / "compare.json").read_text())
    root = datasets.dataset_folder(piece.folder(work) / "nnUNet_results", compare["dataset"]["id"])
    old = json.loads(results_file.read_text()) if results_file.is_file() else None
    record = record_from_compare(compare, root)
    if not record["runs"]:  # nothing finished (every run failed): no empty table, the piece is run again next time
        return old or {}
    merged = merge(old, piece.dataset, record, command)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(results_file, merged)
    return merged


# ------------------------------------------------------------------------------------------------ the report
def _seed_of(record: dict[str, Any]) -> int:
    return int(record["budget"].get("seed", 0))


def _base_budget(name: str) -> str:
    from nnunet_sparseattn.harness.budgets import parse_budget

    seed = parse_budget(name).seed
    return name[: -len(f"s{seed}")] if seed else name


def curve_points(dataset: dict[str, Any], trainer: str) -> list[dict[str, Any]]:
    """Per budget (its seeds together): iterations, the seed-0 run's mean test Dice and 95 % interval, every seed's
    mean test Dice, their mean and standard deviation, the training CPU hours (mean over seeds)."""
    import numpy as np

    groups: dict[str, list[dict[str, Any]]] = {}
    for name, record in dataset["budgets"].items():
        if trainer in record["runs"]:
            groups.setdefault(_base_budget(name), []).append(record)
    points = []
    for base, records in groups.items():
        by_seed = {_seed_of(r): r["runs"][trainer] for r in records}
        dice = [run["mean_dice"] for run in by_seed.values()]
        cpu = [run["train_cpu_s"] for run in by_seed.values() if run.get("train_cpu_s") is not None]
        first = by_seed[min(by_seed)]
        budget = records[0]["budget"]
        points.append(
            {
                "budget": base,
                "iterations": budget["num_epochs"] * budget["num_iterations_per_epoch"],
                "seeds": sorted(by_seed),
                "seed_dice": [by_seed[s]["mean_dice"] for s in sorted(by_seed)],
                "dice": first["mean_dice"],
                "ci95": first.get("ci95"),
                "mean_dice": float(np.mean(dice)),
                "seed_sd": float(np.std(dice, ddof=1)) if len(dice) > 1 else None,
                "cpu_hours": float(np.mean(cpu)) / 3600 if cpu else None,
            }
        )
    return sorted(points, key=lambda p: p["iterations"])


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """Per dataset: test Dice against iterations (log axis) and against training CPU hours, a line per trainer
    through its first seed's runs (bars: their 95 % bootstrap intervals over test cases; dots: the other seeds; a
    recipe trainer dashed, in its default's colour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunet_sparseattn.compare.run import short_label

    keys = list(results.get("datasets", {}))
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 4 * len(keys)), squeeze=False)
    for (left, right), key in zip(axes, keys):
        dataset = results["datasets"][key]
        colours: dict[str, Any] = {}
        for trainer in ALL_TRAINERS:
            points = curve_points(dataset, trainer)
            if not points:
                continue
            x, y = [p["iterations"] for p in points], [p["dice"] for p in points]
            err = None
            if all(p["ci95"] for p in points):
                err = [
                    [max(0.0, p["dice"] - p["ci95"][0]) for p in points],
                    [max(0.0, p["ci95"][1] - p["dice"]) for p in points],
                ]
            style = {"linestyle": "--", "color": colours.get(default_of(trainer))} if trainer in RECIPE_TRAINERS else {}
            line = left.errorbar(x, y, yerr=err, marker="o", capsize=3, label=short_label(trainer), **style)
            colour = colours.setdefault(trainer, line.lines[0].get_color())
            extra = [(p["iterations"], d) for p in points for d in p["seed_dice"][1:]]
            if extra:
                left.scatter(*zip(*extra), s=12, color=colour, alpha=0.6)
            timed = [p for p in points if p["cpu_hours"] is not None]
            if timed:
                right.plot(
                    [p["cpu_hours"] for p in timed],
                    [p["dice"] for p in timed],
                    marker="o",
                    color=colour,
                    linestyle=style.get("linestyle", "-"),
                    label=short_label(trainer),
                )
        left.set_xscale("log")
        left.set_xlabel("training iterations (batch 2); dots: other seeds")
        right.set_xlabel("training CPU hours (all threads of the training process)")
        for ax in (left, right):
            ax.set_ylabel(f"{dataset['title']}: mean test Dice")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _interval(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _hours(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 3600:.2f}"


def dataset_table(dataset: dict[str, Any]) -> list[str]:
    from nnunet_sparseattn.compare.report import num, versus

    lines = [
        "| budget | iterations | seed | trainer | mean test Dice | 95 % CI | vs stock: Dice points (p, better) | "
        "s/iter | training CPU h | wall h |",
        "|" + "---|" * 10,
    ]
    for name, record in sorted(
        dataset["budgets"].items(), key=lambda kv: (kv[1]["budget"]["num_epochs"], _seed_of(kv[1]))
    ):
        budget = record["budget"]
        for trainer in ALL_TRAINERS:
            run = record["runs"].get(trainer)
            if run is None:
                continue
            test = record["tests_vs_stock"].get(trainer)
            lines.append(
                f"| `{name}` | {budget['num_epochs'] * budget['num_iterations_per_epoch']} | {budget['seed']} "
                f"| {run['label']} | {num(run['mean_dice'])} | {_interval(run.get('ci95'))} | "
                f"{'–' if trainer == STOCK else versus(test)} | {num(run.get('s_per_iter'), 2)} | "
                f"{_hours(run.get('train_cpu_s'))} | {_hours(run.get('train_wall_s'))} |"
            )
    return lines


def seed_lines(dataset: dict[str, Any]) -> list[str]:
    from nnunet_sparseattn.compare.run import short_label

    lines = []
    for trainer in TRAINERS:
        for p in curve_points(dataset, trainer):
            if p["seed_sd"] is not None:
                lines.append(
                    f"- {short_label(trainer)} at `{p['budget']}`: mean {p['mean_dice']:.3f} over seeds "
                    f"{', '.join(map(str, p['seeds']))}, standard deviation {p['seed_sd']:.3f}"
                )
    return lines


def recipe_lines(dataset: dict[str, Any]) -> list[str]:
    """Per budget, each trainer's other recipe against its default on the same test cases (paired), the controls
    (stock nnU-Net's network, NB) first."""
    from nnunet_sparseattn.compare.report import num, versus
    from nnunet_sparseattn.compare.results import paired_test
    from nnunet_sparseattn.compare.run import short_label

    rows = []
    for name, record in sorted(
        dataset["budgets"].items(), key=lambda kv: (kv[1]["budget"]["num_epochs"], _seed_of(kv[1]))
    ):
        for default, other in RECIPES.items():
            ours, theirs = record["runs"].get(other), record["runs"].get(default)
            if ours is None or theirs is None:
                continue
            test = paired_test(ours["per_case_mean_dice"], theirs["per_case_mean_dice"])
            rows.append(
                f"| `{name}` | {short_label(default)} | {short_label(other)} | {num(theirs['mean_dice'])} | "
                f"{num(ours['mean_dice'])} | {versus(test)} |"
            )
    if not rows:
        return []
    return [
        "| budget | default | other recipe | default's test Dice | other's test Dice | other vs default: Dice "
        "points (p, better) |",
        "|" + "---|" * 6,
        *rows,
    ]


def render_section(results: dict[str, Any] | None, png: str | None) -> str:
    from nnunet_sparseattn.evaluation.evaluate import markdown_table

    parts = [
        "<!-- written by benchmarks/curves.py from benchmarks/results/curves-cpu.json: do not edit -->",
        "## Learning curves on the CPU (issue 21)",
        "",
        "```",
        "make bench-curves   # .venv/bin/python -m benchmarks.curves --all --update-docs (resumable)",
        "```",
        "",
        "Protocol: the docstring of `benchmarks/curves.py` (datasets, sizes and why their first attention "
        "stage is routed, splits, budgets, seeds, batch, pieces, hours).",
    ]
    if not results or not results.get("datasets"):
        return "\n".join(parts + ["", "No piece has finished yet."]) + "\n"
    for key, dataset in results["datasets"].items():
        records = list(dataset["budgets"].values())
        first = records[0]
        parts += [
            "",
            f"### {dataset['title']} (`{first['configuration']}`, plans `{first['plans']}`, "
            f"{first['test_cases']} test cases; {first['machine']}, torch {first['torch']}, "
            f"nnU-Net {first['nnunetv2']})",
            "",
            *dataset_table(dataset),
        ]
        if seeds := seed_lines(dataset):
            parts += ["", "Seed spread at the short budget:", *seeds]
        if recipes := recipe_lines(dataset):
            parts += [
                "",
                "Recipes (SGD <-> AdamW with warm-up; stock nnU-Net's network and NB are the controls: a gain "
                "is the attention's only where they do not get it too; a default changes only where the long "
                "budget shows it beyond the seed spread):",
                "",
                *recipes,
            ]
        for name, record in dataset["budgets"].items():
            evaluated = [(r["label"], r["evaluate"]) for r in record["runs"].values() if r.get("evaluate")]
            if evaluated and evaluated[0][1].get("dimensionality") == "2d" and key == "cvc":
                parts += [
                    "",
                    f"Polyp papers' metrics (`nnunet-sparseattn evaluate`), `{name}`:",
                    "",
                    markdown_table(evaluated).rstrip(),
                ]
    parts += [
        "",
        "Mean test Dice: per test case the mean over foreground classes (nnU-Net's evaluation), averaged; "
        "95 % CI: percentile bootstrap over test cases (scipy.stats.bootstrap, 10000 resamples); vs stock: "
        "the two-sided Wilcoxon signed-rank test on the per-case differences (compare's paired test); "
        "training CPU h: `time.process_time` of the training process over its epochs (all threads); "
        "wall h: nnUNetv2_train's wall time (a shared machine: load in the JSON).",
    ]
    if png:
        parts += ["", f"![test Dice against iterations and against training CPU hours]({png})"]
    return "\n".join(parts) + "\n"


def write_reports(results_file: Path, docs: Path | None) -> None:
    from nnunet_sparseattn.errors import UserError

    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    png = plot(results, results_file.with_suffix(".png")) if results else None
    link = None
    if png is not None and docs is not None:
        try:
            link = str(png.resolve().relative_to(docs.parent.resolve()))
        except ValueError:
            link = str(png)
    if docs is not None:
        if not docs.is_file():
            raise UserError(f"{docs} does not exist: --update-docs rewrites its curves section")
        update_section(docs, render_section(results, link), MARKERS)
        print(f"updated the curves section of {docs}")


# ------------------------------------------------------------------------------------------------------ main
@dataclass
class Options:
    work: Path
    data: Path
    results_file: Path
    docs: Path | None
    tiny: bool = False
    command: str = ""
    pieces: list[Piece] = field(default_factory=list)


def run_pieces(options: Options) -> list[str]:
    """Run every piece not yet done, in order, merging each into the results; returns the pieces that failed."""
    failed = []
    for piece in options.pieces:
        state = piece_state(piece, options.work)
        if state == "done" and _merged(piece, options.results_file):
            print(f"piece {piece.name}: done, skipped")
            continue
        started = time.monotonic()
        results = run_piece(piece, options.work, options.data, options.command, options.tiny)
        gather_piece(piece, options.work, options.results_file, options.command)
        write_reports(options.results_file, options.docs)
        bad = [r.get("label", k) for k, r in results["runs"].items() if r.get("status") == "failed"]
        if bad:
            failed.append(f"{piece.name} ({', '.join(bad)})")
        print(f"piece {piece.name}: finished in {(time.monotonic() - started) / 3600:.2f} h", flush=True)
    return failed


def _merged(piece: Piece, results_file: Path) -> bool:
    if not results_file.is_file():
        return False
    record = (
        json.loads(results_file.read_text())
        .get("datasets", {})
        .get(piece.dataset, {})
        .get("budgets", {})
        .get(piece.budget, {})
    )
    return all(t in record.get("runs", {}) for t in piece.trainers)


def gather_started(options: Options) -> None:
    """Merge the finished runs of every piece begun under ``options.work`` (a piece still running, or killed,
    included: its finished runs count; its record is replaced when the piece ends)."""
    folders: dict[Path, Piece] = {}
    for piece in plan_pieces(list(DATASETS), list(TRAINERS), SHORT, LONG, SEEDS) + options.pieces:
        folders.setdefault(piece.folder(options.work), piece)
    for folder, piece in folders.items():
        if (folder / "compare.json").is_file():
            gather_piece(piece, options.work, options.results_file, options.command)


def dry_run(options: Options) -> None:
    tests = {k: len(splits.read_list(k)) for k in DATASETS}
    total = 0.0
    for piece in options.pieces:
        hours = estimate_hours(piece, tests)
        total += hours
        print(f"{piece.name:<40} {piece_state(piece, options.work):<8} ~{hours:.2f} h")
    print(f"{len(options.pieces)} pieces, ~{total:.1f} h in all (estimates: S_PER_ITER x iterations + prediction)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="every piece of the protocol not yet done, in order")
    ap.add_argument("--dataset", help=f"one dataset: {', '.join(DATASETS)}")
    ap.add_argument("--budget", help=f"one budget (EPOCHSxITERATIONSbN), e.g. {SHORT} or {LONG}")
    ap.add_argument("--seed", type=int, default=0, help="with --budget: the seed (default 0)")
    ap.add_argument(
        "--trainer", help=f"with --budget: trainers of {', '.join(ALL_TRAINERS)}, comma-separated (default the five)"
    )
    ap.add_argument("--work", type=Path, default=WORK, help=f"nnU-Net's folders and the comparisons (default {WORK})")
    ap.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    ap.add_argument("--results", type=Path, default=RESULTS_FILE, help=f"results JSON (default {RESULTS_FILE})")
    add_docs_arguments(ap, "curves")
    ap.add_argument("--dry-run", action="store_true", help="list the pieces, their state and estimated hours")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="no training: merge the finished runs of every "
        "piece begun in --work (finished pieces and unfinished ones) into the JSON, rewrite plots, section",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help=f"toy sizes ({TINY.train} training, {TINY.test} test cases, budgets {', '.join(TINY.budgets)}): a check",
    )
    return ap


def options_from(args: argparse.Namespace, command: str) -> Options:
    """The run the command line asks for (``UserError`` for one it cannot be)."""
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.harness.budgets import parse_budget

    docs = args.docs if args.update_docs else None
    if docs is not None:  # before hours of training, not after
        check_section(docs, MARKERS)
    short, long, seeds = (TINY.budgets[0], TINY.budgets[2], (0, 1)) if args.tiny else (SHORT, LONG, SEEDS)
    keys = names(args.dataset, tuple(DATASETS), "dataset") if args.dataset else list(DATASETS)
    options = Options(args.work.resolve(), args.data, args.results, docs, args.tiny, command)
    if args.budget:
        budget = budget_name(args.budget, args.seed)
        parse_budget(budget)
        trainers = names(args.trainer, ALL_TRAINERS, "trainer") if args.trainer else list(TRAINERS)
        options.pieces = [Piece(k, budget, tuple(trainers)) for k in keys]
    elif args.all or args.dry_run:
        options.pieces = plan_pieces(keys, list(TRAINERS), short, long, seeds)
    elif not args.report_only:
        raise UserError("nothing to do: pass --all, --dataset/--budget, --dry-run or --report-only")
    return options


def main(argv: list[str] | None = None) -> int:
    from nnunet_sparseattn.errors import UserError

    args = parser().parse_args(argv)
    command = command_line("curves", sys.argv[1:] if argv is None else argv)
    try:
        options = options_from(args, command)
        if args.dry_run:
            dry_run(options)
            return 0
        failed = [] if args.report_only else run_pieces(options)
        if args.report_only:  # run_pieces rewrote them after every piece it ran
            gather_started(options)
            write_reports(args.results, options.docs)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if failed:
        print(f"\n{len(failed)} piece(s) with failed runs: {'; '.join(failed)} (see their logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

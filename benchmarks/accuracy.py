"""Accuracy and cost of every trainer on the project's shared data: ``nnunet-sparseattn compare`` on two datasets.

Usage (``make bench-accuracy`` = ``--budget cpu``; ``make bench-accuracy BUDGET=gpu`` on a CUDA machine):

    .venv/bin/python -m benchmarks.accuracy --budget cpu|gpu|tiny [--datasets hippocampus,isic2017]
        [--trainers nnUNetTrainer,nnUNetTrainerNB,...] [--work DIR] [--update-docs] [--report-only]

For each dataset (MSD Hippocampus 3d_fullres, ISIC 2017 2d, read from ``../shared/data``) it converts the data
once into the work folder's ``nnUNet_raw``, keeping the budget's number of training cases (``TRAINING_CASES``), and
runs ``compare`` (``nnunet_sparseattn.compare``) on it: nnU-Net's planner, the budgeted trainers through
``nnUNetv2_train`` (fold 0), ``nnUNetv2_predict`` on the fold's validation cases, scoring, the paired test against
stock nnU-Net. Each comparison keeps its own folder (``WORK/compare-<dataset>``) and resumes there. This script
then gathers them into ``benchmarks/results/accuracy-<device>-<budget>.json``, a PNG and the accuracy section of
BENCHMARKS.md (``--update-docs``), and lists every mean Dice that moved by more than 2 points against the results
file it replaces.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import DATA, RESULTS, ROOT, add_docs_arguments, check_section, command_line, update_section

SECTION = ROOT / "benchmarks" / "accuracy_section.md"
MARKERS = ("<!-- accuracy:begin -->", "<!-- accuracy:end -->")
SCHEMA = 2

# The trainers compared, in table order: nnU-Net's own first, then one per method.
TRAINERS: tuple[str, ...] = (
    "nnUNetTrainer",
    "nnUNetTrainerNB",
    "nnUNetTrainerBSA",
    "nnUNetTrainerMDSA",
    "nnUNetTrainerBilateral",
)
SPARSE_ATTENTION = ("nnUNetTrainerBSA", "nnUNetTrainerMDSA", "nnUNetTrainerBilateral")


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
# Training cases kept per budget and dataset (the first N of nnU-Net's raw dataset, in name order); absent: all.
# 40 cases: nnU-Net caps a batch at 5 % of the dataset's voxels, so both datasets plan its minimum batch of 2 (the
# full datasets plan larger batches: several times the CPU time per iteration).
TRAINING_CASES: dict[str, dict[str, int]] = {
    "tiny": {"hippocampus": 8, "isic2017": 20},
    "cpu": {"hippocampus": 40, "isic2017": 40},
}


def work_folder(budget: str, device: str) -> Path:
    return ROOT / "bench_work" / f"accuracy-{device}-{budget}"


def prepare_dataset(spec: DatasetSpec, data_root: Path, env: dict[str, str], keep: int | None) -> int:
    """``spec``'s data in ``env``'s nnUNet_raw (converted once), its first ``keep`` training cases (None: all);
    returns the nnU-Net dataset id."""
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.harness import datasets

    source = data_root / spec.source
    if not source.is_dir():
        raise UserError(f"{spec.title} is not at {source}: pass --data with the folder that holds {spec.source}")
    raw = Path(env["nnUNet_raw"])
    if spec.key == "hippocampus":
        dataset_id = datasets.convert_msd(source, env)
        if keep is not None:
            folder = datasets.dataset_folder(raw, dataset_id)
            assert folder is not None  # convert_msd just wrote it
            datasets.keep_training_cases(folder, keep)
        return dataset_id
    if spec.key == "isic2017":
        from nnunet_sparseattn.convert2d import convert_2d

        if datasets.dataset_folder(raw, ISIC_DATASET_ID) is None:
            convert_2d(
                source / "images",
                source / "masks",
                ISIC_DATASET_ID,
                name="ISIC2017",
                raw_root=raw,
                limit=keep,
                label_names=["lesion"],
            )
        return ISIC_DATASET_ID
    raise UserError(f"no converter for dataset {spec.key}")


def compare_dataset(
    spec: DatasetSpec, budget: str, device: str, trainers: list[str], work: Path, data_root: Path, command: str
) -> dict[str, Any]:
    """Prepare ``spec`` and run (or resume) its comparison; returns compare's results."""
    from nnunet_sparseattn.compare.run import CompareRequest, run_compare
    from nnunet_sparseattn.harness.commands import work_environment

    env = work_environment(work)
    dataset_id = prepare_dataset(spec, data_root, env, TRAINING_CASES.get(budget, {}).get(spec.key))
    request = CompareRequest(
        dataset_id,
        spec.configuration,
        work / f"compare-{spec.key}",
        trainers=trainers,
        baselines=["stock"],
        budget=budget,
        folds=[0],
        device=device,
        raw=Path(env["nnUNet_raw"]),
        preprocessed=Path(env["nnUNet_preprocessed"]),
        command=command,
    )
    print(f"\n== {spec.title} ({spec.configuration}): compare in {request.output}", flush=True)
    return run_compare(request)


# ---------------------------------------------------------------------------------------------- the reports
def gather(comparisons: dict[str, dict[str, Any]], trainers: list[str], command: str) -> dict[str, Any]:
    """One results record from the comparisons, their runs restricted to ``trainers`` (a comparison folder may hold
    more: the optimizer benchmark adds its runs to the ISIC one)."""
    first = next(iter(comparisons.values()))
    out = {
        "benchmark": "accuracy",
        "schema": SCHEMA,
        "command": command,
        "trainers": trainers,
        **{k: first[k] for k in ("budget", "budget_text", "device", "machine", "torch", "nnunetv2", "python")},
        "datasets": {},
    }
    for key, results in comparisons.items():
        spec = DATASETS[key]
        keys = [f"{t}__nnUNetPlans" for t in trainers]
        runs = {k: results["runs"][k] for k in keys if k in results["runs"]}
        tests = [t for t in results.get("tests", []) if t["run"] in runs and t["baseline"] in runs]
        out["datasets"][key] = {
            "title": spec.title,
            "distance_unit": spec.distance_unit,
            **{k: results[k] for k in ("dataset", "configuration", "heldout", "started", "updated")},
            "runs": runs,
            "tests": tests,
        }
    return out


def moved(old: dict[str, Any] | None, new: dict[str, Any], points: float = 2.0) -> list[str]:
    """Every mean Dice (per class too) that moved by more than ``points`` Dice points against ``old``."""
    if not old:
        return []
    lines = []
    for key, dataset in new["datasets"].items():
        before = old.get("datasets", {}).get(key, {}).get("runs", {})
        for run_key, run in dataset["runs"].items():
            trainer = run.get("trainer", run_key.split("__")[0])
            was = before.get(run_key) or before.get(trainer)  # schema 1 keyed runs by trainer
            if not was or was.get("status") != "done" or run.get("status") != "done":
                continue
            pairs = [("mean", was.get("mean_dice"), run.get("mean_dice"))]
            pairs += [(c, was.get("dice", {}).get(c), v) for c, v in run.get("dice", {}).items()]
            for what, a, b in pairs:
                if a is not None and b is not None and abs(b - a) * 100 > points:
                    lines.append(
                        f"{dataset['title']} {run.get('label', trainer)} {what} Dice: {a:.3f} -> {b:.3f} "
                        f"({100 * (b - a):+.1f} points)"
                    )
    return lines


def load_range(dataset: dict[str, Any]) -> tuple[float, float] | None:
    """The lowest and highest 1-minute load average seen before and after the trainings of one dataset's runs."""
    loads = [
        fold[key][0]
        for run in dataset.get("runs", {}).values()
        for fold in run.get("folds", {}).values()
        for key in ("load_average_before", "load_average_after")
        if fold.get(key)
    ]
    return (min(loads), max(loads)) if loads else None


def timings_comparable(dataset: dict[str, Any]) -> bool:
    """s/iter ratios of one run mean something only where the machine was about as loaded during every training
    (a shared CPU: another process's load slows whichever trainer runs beside it)."""
    spread = load_range(dataset)
    return spread is None or spread[1] <= 2 * spread[0] + 1


def target_lines(results: dict[str, Any]) -> list[str]:
    """The project's targets on Hippocampus: each sparse-attention trainer within 0.5 Dice points of stock nnU-Net's
    mean Dice (or above), at no more than 1.5x its training time per iteration (stated for a GPU)."""
    from nnunet_sparseattn.compare.run import short_label

    dataset = results["datasets"].get("hippocampus", {})
    runs = dataset.get("runs", {})
    stock = runs.get("nnUNetTrainer__nnUNetPlans", {})
    comparable = timings_comparable(dataset)
    lines = []
    for trainer in SPARSE_ATTENTION:
        r = runs.get(f"{trainer}__nnUNetPlans")
        if r is None or r.get("status") != "done" or stock.get("status") != "done":
            lines.append(f"- {short_label(trainer)}: {'not measured' if r is None else r.get('status')}")
            continue
        delta = 100 * (r["mean_dice"] - stock["mean_dice"])
        ratio = r["s_per_iter"] / stock["s_per_iter"]
        timing = f"{'met' if ratio <= 1.5 else 'missed'}" if comparable else "not comparable: see the load below"
        lines.append(
            f"- {short_label(trainer)}: Dice {delta:+.2f} points ({'met' if delta >= -0.5 else 'missed'}), "
            f"time per iteration {ratio:.2f}x ({timing})"
        )
    return lines


def load_lines(results: dict[str, Any]) -> list[str]:
    """Per dataset, the machine's load during its trainings, and whether its s/iter ratios can be read."""
    lines = []
    for dataset in results["datasets"].values():
        spread = load_range(dataset)
        if spread is None:
            continue
        verdict = (
            "comparable"
            if timings_comparable(dataset)
            else "NOT comparable between trainers (the load changed between their trainings); the network speed "
            "benchmark measures the ratios side by side"
        )
        lines.append(
            f"- {dataset['title']}: 1-minute load average {spread[0]:.1f} to {spread[1]:.1f} during the "
            f"trainings; s/iter ratios {verdict}."
        )
    return lines


def _as_comparison(dataset: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    return {**dataset, **{k: results[k] for k in ("budget", "budget_text", "device", "machine")}}


def render_results(results: dict[str, Any], png: str | None) -> str:
    from nnunet_sparseattn.compare.report import paired_test_note, results_table

    budget = results["budget"]
    dates = [d.get("updated", "") for d in results["datasets"].values()]
    parts = [
        f"### `{budget['name']}` budget on {results['machine']} ({max(dates)[:10]})",
        "",
        f"Command: `{results['command']}`  ",
        f"Budget: {results['budget_text']}; fold 0.  ",
        f"Versions: torch {results['torch']}, nnU-Net {results['nnunetv2']}, Python {results['python']}.",
        "",
    ]
    for dataset in results["datasets"].values():
        cases = sum(len(c) for c in dataset["heldout"]["cases"].values())
        parts.append(
            f"- {dataset['title']}: {dataset['dataset']['name']} `{dataset['configuration']}`, {cases} "
            f"{'validation cases of fold 0' if dataset['heldout']['kind'] == 'validation' else 'test cases'}"
            f" predicted and scored; HD95 in {dataset['distance_unit']}; ran from {dataset['started']} to "
            f"{dataset['updated']}."
        )
    tables = [
        results_table(_as_comparison(d, results), dataset=d["title"]).split("\n") for d in results["datasets"].values()
    ]
    table = "\n".join(tables[0] + [row for t in tables[1:] for row in t[2:]]) if tables else ""
    note = paired_test_note({"tests": [t for d in results["datasets"].values() for t in d["tests"]]})
    where = "measured on this GPU" if results["device"] == "cuda" else "stated for a GPU budget; this is a CPU run"
    parts += ["", table, "", note, "", f"Targets on Hippocampus ({where}):", *target_lines(results)]
    if load := load_lines(results):
        parts += ["", "Machine load (timings of a shared CPU):", *load]
    if png:
        parts += [
            "",
            f"![mean Dice against training time per iteration; per-case Dice, {budget['name']} budget]({png})",
        ]
    return "\n".join(parts)


METHODS = """\
`benchmarks/accuracy.py` runs `nnunet-sparseattn compare` (`nnunet_sparseattn/compare/`) on each dataset: every
trainer through nnU-Net's own commands (`nnUNetv2_plan_and_preprocess`, `nnUNetv2_train`, `nnUNetv2_predict`)
under one named budget (`nnunet_sparseattn/harness/budgets.py`): the same epochs x iterations per epoch, seed,
fold 0 and training cases for stock `nnUNetTrainer` and ours, applied by one mixin (`<Trainer>_bench<budget>`), the
default nnU-Net plans for all. It predicts the fold's validation cases and records:

- **Dice**: nnU-Net's per-case evaluation (`compute_metrics`, what `nnUNetv2_evaluate_folder` runs), per class and
  the mean over classes; **vs stock**: the mean of the per-case differences of mean Dice, in points, with the
  two-sided Wilcoxon signed-rank test on them (scipy) and the cases where the trainer scored higher.
- **HD95**: MONAI's `compute_hausdorff_distance` at the 95th percentile per case and class (the larger of the two
  directed 95th-percentile boundary distances; what `nnunet-sparseattn evaluate` reports),
  in mm on Hippocampus, in pixels on ISIC (its images were resized to 256 x 256), averaged over the cases where
  reference and prediction both hold the class (the JSON counts the others: `hd95_undefined_cases`).
- **s/iter**: training time per iteration, timed inside `nnUNetv2_train` per epoch from the first to the last
  training iteration (data loading, forward, backward, step; validation iterations excluded), over the epochs that
  were not the first of their process (warm-up: allocator, cuDNN, `torch.compile`).
- **s/case**: `nnUNetv2_predict` over all predicted cases, its output timestamped as it arrives: nnU-Net's
  prediction loop from the first `Predicting <case>:` line to the last `done with <case>`, over the cases
  (sliding-window inference, the next case preprocessed meanwhile in the background).
- **peak memory**: of the training process; CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS (getrusage).
- **params, FLOPs**: the inference network from the trainer's `build_network_architecture`, forward at the
  plans' patch size, batch 1, `torch.utils.flop_counter` (FLOPs = 2 x multiply-adds; norms and activations not
  counted).
- Seeded: Python, NumPy and torch in the training process (network initialisation; CPU augmentation runs in that
  process); every run's batches are checksummed (`batches_digest`). Not seeded: nnU-Net's augmentation workers
  (GPU runs), cuDNN's algorithm choice, GPU atomics.

Resume: a killed benchmark continues where it stopped when the same command is run again (nnU-Net's `--c`, a
checkpoint every epoch; finished runs are kept)."""


def render_section(results_files: list[Path], docs_root: Path = ROOT) -> str:
    parts = [
        "<!-- written by benchmarks/accuracy.py from benchmarks/results/accuracy-*.json: do not edit -->",
        "## Accuracy and cost on real data",
        "",
        "```",
        "make bench-accuracy              # CPU budget: .venv/bin/python -m benchmarks.accuracy --budget cpu",
        "make bench-accuracy BUDGET=gpu   # on a CUDA machine",
        "```",
        "",
        METHODS,
    ]
    if not results_files:
        parts += ["", "No results yet."]
    for path in results_files:
        results = json.loads(Path(path).read_text())
        if results.get("schema") != SCHEMA:
            parts += ["", f"({Path(path).name}: written by an earlier version of this script; run it again)"]
            continue
        png = Path(path).with_suffix(".png")
        link = None
        if png.is_file():
            try:
                link = str(png.resolve().relative_to(Path(docs_root).resolve()))
            except ValueError:
                link = str(png)
        parts += ["", render_results(results, link)]
    return "\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """One row per dataset: mean Dice against s/iter, and per-case Dice per trainer (compare's two panels)."""
    from nnunet_sparseattn.compare.report import plot as plot_rows

    budget = results["budget"]
    rows: list[tuple[dict[str, Any], list[str] | None]] = [
        (_as_comparison(d, results), None) for d in results["datasets"].values()
    ]
    return plot_rows(
        rows,
        path,
        f"{budget['name']} budget: {budget['num_epochs']} x "
        f"{budget['num_iterations_per_epoch']} iterations, {results['machine']}",
    )


def write_reports(out_dir: Path, section_path: Path, docs: Path | None) -> None:
    files = sorted(Path(out_dir).glob("accuracy-*.json"))
    for path in files:
        results = json.loads(path.read_text())
        if results.get("schema") == SCHEMA:
            plot(results, path.with_suffix(".png"))
    section = render_section(files, docs.parent if docs is not None else ROOT)
    section_path.parent.mkdir(parents=True, exist_ok=True)
    section_path.write_text(section)
    print(f"wrote {section_path}")
    if docs is not None:
        from nnunet_sparseattn.errors import UserError

        if not docs.is_file():
            raise UserError(f"{docs} does not exist: --update-docs rewrites its accuracy section")
        update_section(docs, section, MARKERS)
        print(f"updated the accuracy section of {docs}")


# ------------------------------------------------------------------------------------------------------ main
def names(value: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    from nnunet_sparseattn.errors import UserError

    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise UserError(f"unknown {what} {', '.join(unknown) or '(none given)'}: choose from {', '.join(known)}")
    return chosen


def parser() -> argparse.ArgumentParser:
    from nnunet_sparseattn.harness.budgets import BUDGETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="cpu", help=f"named budget: {', '.join(BUDGETS)} (default cpu)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated subset of {', '.join(DATASETS)}")
    ap.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated subset of {', '.join(TRAINERS)}")
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="nnU-Net's folders and the comparisons (default bench_work/accuracy-DEVICE-BUDGET)",
    )
    ap.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    ap.add_argument("--section", type=Path, default=SECTION, help=f"section text output (default {SECTION})")
    add_docs_arguments(ap, "accuracy")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the section and plots from the JSONs")
    return ap


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every chosen comparison (resumed where it stopped), gathered into the results file; prints what moved."""
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.harness.budgets import BUDGETS, parse_budget, write_json_atomic

    if args.budget not in BUDGETS:
        raise UserError(f"unknown budget {args.budget}: choose from {', '.join(BUDGETS)}")
    parse_budget(args.budget)
    keys = names(args.datasets, tuple(DATASETS), "dataset")
    trainers = names(args.trainers, TRAINERS, "trainer")
    work = (args.work or work_folder(args.budget, args.device)).resolve()
    comparisons = {
        key: compare_dataset(DATASETS[key], args.budget, args.device, trainers, work, args.data, command)
        for key in keys
    }
    results = gather(comparisons, trainers, command)
    path = args.out_dir / f"accuracy-{args.device}-{args.budget}.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)
    shifts = moved(old, results)
    print(
        "\n"
        + (
            "\n".join(["moved by more than 2 Dice points against the previous results:", *shifts])
            if shifts
            else "no mean Dice moved by more than 2 points against the previous results"
        )
    )
    return results


def main(argv: list[str] | None = None) -> int:
    from nnunet_sparseattn.errors import UserError

    args = parser().parse_args(argv)
    results: dict[str, Any] = {}
    try:
        if args.update_docs:  # before hours of training, not after
            check_section(args.docs, MARKERS)
        if not args.report_only:
            results = run(args, command_line("accuracy", sys.argv[1:] if argv is None else argv))
        write_reports(args.out_dir, args.section, args.docs if args.update_docs else None)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.report_only:
        return 0
    failed = [
        (d, r.get("label"))
        for d, rec in results["datasets"].items()
        for r in rec["runs"].values()
        if r.get("status") == "failed"
    ]
    if failed:
        print(f"\n{len(failed)} run(s) failed: {', '.join(f'{d}/{t}' for d, t in failed)} (see their logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""``nnunet-sparseattn compare``: every trainer and baseline through nnU-Net's own commands under one budget.

For a dataset in ``nnUNet_raw`` (planned with nnU-Net's own planner first if it is not yet), each run (a trainer on
a plans file) trains the budgeted trainer ``<Trainer>_bench<budget>`` with ``nnUNetv2_train`` for every requested
fold, into ``OUTPUT_FOLDER/nnUNet_results`` (never the user's ``nnUNet_results``; the preprocessed data is nnU-Net's
own and shared, as nnU-Net shares it). It then predicts the held-out cases with ``nnUNetv2_predict`` (``imagesTs``
with the ensemble of the folds where ``labelsTs`` exists, else every fold's validation cases with that fold's
model), scores them (``harness.scoring``, and ``evaluate``'s metrics) and tests each trainer against each baseline
per case (``results.paired_test``). Everything lands in ``OUTPUT_FOLDER``: ``compare.json``, ``compare.md``,
``compare.png``, one nnU-Net log per run in ``logs/``. Run again with the same arguments, it resumes: finished runs
are kept (their FLOPs counted again), a killed training continues from its last epoch (nnU-Net's ``--c``).
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from nnunet_sparseattn.compare.baselines import BASELINES
from nnunet_sparseattn.compare.results import SCHEMA, ResultsStore, now, paired_test
from nnunet_sparseattn.errors import UserError, check_output_path, refuse_inside
from nnunet_sparseattn.harness import commands, datasets
from nnunet_sparseattn.harness.budgets import (
    TIMING_FILE,
    Budget,
    budgeted_name,
    budgeted_trainer,
    parse_budget,
    parse_progress,
    peak_memory,
    seconds_per_iteration,
    split_budgeted_name,
    summarize_iterations,
    training_state,
)
from nnunet_sparseattn.harness.machine import check_device, describe_machine, load_average
from nnunet_sparseattn.harness.trainers import find_trainer_class

DEFAULT_PLANS = "nnUNetPlans"
ALL_FOLDS = (0, 1, 2, 3, 4)  # nnU-Net's five-fold cross-validation


def default_trainers() -> list[str]:
    """Stock nnU-Net and our main trainers."""
    from nnunet_sparseattn.trainers import main_trainers

    return ["nnUNetTrainer"] + [t.__name__ for t in main_trainers()]


@dataclass(frozen=True)
class Run:
    key: str  # TRAINER__PLANS, nnU-Net's own spelling of a model
    label: str
    trainer: str
    plans: str
    baseline: bool


@dataclass
class CompareRequest:
    dataset: int | str
    configuration: str
    output: Path
    trainers: Sequence[str] = field(default_factory=default_trainers)
    baselines: Sequence[str] = ("stock",)
    budget: str = "cpu"
    folds: Sequence[int] | str = (0,)
    device: str = "cpu"
    plans: str = DEFAULT_PLANS
    raw: Path | None = None  # nnU-Net's folders; default: the environment's
    preprocessed: Path | None = None
    command: str = ""


def parse_folds(value: Sequence[int] | str) -> list[int]:
    """``0``, ``0,2``, ``all`` (nnU-Net's five) or a sequence of fold numbers."""
    if isinstance(value, str):
        text = value.strip()
        if text == "all":
            return list(ALL_FOLDS)
        parts = [p.strip() for p in text.split(",") if p.strip()]
    else:
        parts = [str(v) for v in value]
    if not parts or not all(p.isdigit() and int(p) in ALL_FOLDS for p in parts):
        raise UserError(f"folds {value!r}: give fold numbers 0-4 (e.g. 0 or 0,1) or all")
    return sorted({int(p) for p in parts})


def short_label(trainer: str) -> str:
    return trainer.removeprefix("nnUNetTrainer").lstrip("_") or "stock nnU-Net"


def plan_runs(trainers: Sequence[str], baselines: Sequence[str], plans: str) -> list[Run]:
    """Baselines first, then the trainers; a trainer that is a baseline (stock nnU-Net on the same plans) runs once."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline {', '.join(unknown)}: choose from {', '.join(BASELINES)}")
    runs: dict[str, Run] = {}
    for name in baselines:
        b = BASELINES[name]
        run = Run(f"{b.trainer}__{b.plans or plans}", b.label, b.trainer, b.plans or plans, True)
        runs.setdefault(run.key, run)
    for trainer in trainers:
        if split_budgeted_name(trainer) is not None:
            raise UserError(f"{trainer} is a budgeted trainer: name its base trainer; --budget applies the budget")
        find_trainer_class(trainer)  # unknown trainers are refused here, before any work
        run = Run(
            f"{trainer}__{plans}",
            short_label(trainer) if plans == DEFAULT_PLANS else f"{short_label(trainer)} ({plans})",
            trainer,
            plans,
            False,
        )
        runs.setdefault(run.key, run)
    if not runs:
        raise UserError("nothing to compare: name at least one trainer or baseline")
    return list(runs.values())


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# what a run's record keeps of evaluate's result (the per-case values stay in its JSON beside the predictions)
EVALUATED = ("dimensionality", "distance_unit", "nsd_tolerance", "num_cases", "sources", "mean")


def evaluate_predictions(labels: Path, predictions: Path) -> dict[str, Any] | None:
    """``nnunet-sparseattn evaluate``'s metrics of one run's predictions, means over the held-out cases (per case: its
    JSON in the predictions folder): IoU and NSD per class, and for 2D data the polyp papers' mDSC ... MAE, on the
    predicted masks (compare saves no probabilities). None where evaluate does not score the dataset (regions, an
    ignore label); compare's own Dice and HD95 score those."""
    from nnunet_sparseattn.evaluation import evaluate_folders, unscored_labels

    if unscored_labels(datasets.read_json(predictions / "dataset.json")) is not None:
        return None
    [result], _, _ = evaluate_folders(labels, [predictions], num_processes=1)
    return {key: result[key] for key in EVALUATED}


class Comparison:
    """One ``compare`` invocation: checks first (nothing written before every refusal had its chance), then the
    work, resumable at every step."""

    def __init__(self, request: CompareRequest, echo: Callable[[str], None] = print):
        import torch

        self.echo = echo
        why = "compare reads your dataset there"
        self.raw_root = datasets.nnunet_folder("nnUNet_raw", request.raw, why)
        self.preprocessed_root = datasets.nnunet_folder("nnUNet_preprocessed", request.preprocessed, why)
        self.dataset_id = datasets.parse_dataset(request.dataset)
        self.raw = datasets.require_dataset(self.raw_root, self.dataset_id, "nnUNet_raw")
        self.configuration = request.configuration
        self.budget: Budget = parse_budget(request.budget)
        self.folds = parse_folds(request.folds)
        self.device = check_device(request.device)
        self.plans = request.plans
        self.runs = plan_runs(list(request.trainers), list(request.baselines), self.plans)
        check_output_path(request.output, "-o")
        refuse_inside(request.output, {"raw dataset folder": self.raw}, "-o")
        self.output = Path(request.output).resolve()
        self.header = {
            "schema": SCHEMA,
            "dataset": {"id": self.dataset_id, "name": self.raw.name},
            "configuration": self.configuration,
            "budget": self.budget.to_json(),
            "budget_text": self.budget.describe(),
            "device": self.device,
            "machine": describe_machine(self.device),
            "plans": self.plans,
            "command": request.command,
            "torch": torch.__version__,
            "nnunetv2": _version("nnunetv2"),
            "python": platform.python_version(),
            "started": now(),
        }
        self._check_plans_before_planning()
        self.resumed = ResultsStore.check(self.output, self.header)

    # ----------------------------------------------------------------------------------------------- checks
    def _plans_file_if_planned(self, plans: str) -> Path | None:
        """Where the plans ``plans`` are, or None before nnU-Net made the dataset's preprocessed folder."""
        folder = datasets.dataset_folder(self.preprocessed_root, self.dataset_id)
        return folder / f"{plans}.json" if folder is not None else None

    def _plans_file(self, plans: str) -> Path:
        """Where the plans ``plans`` are, once the dataset is planned (refused in one line where it is not)."""
        folder = datasets.require_dataset(self.preprocessed_root, self.dataset_id, "nnUNet_preprocessed")
        return folder / f"{plans}.json"

    def _check_configuration(self, plans: str) -> dict:
        return datasets.read_plans(self._plans_file(plans), self.configuration)

    def _check_plans_before_planning(self) -> None:
        path = self._plans_file_if_planned(self.plans)
        if path is not None and path.is_file():
            self._check_configuration(self.plans)
        elif self.plans != DEFAULT_PLANS:
            raise UserError(
                f"there are no plans {self.plans} for {self.raw.name} in nnUNet_preprocessed: write them "
                f"first, or leave --plans out (nnU-Net's default planner then plans the dataset)"
            )

    # ------------------------------------------------------------------------------------------------- work
    def prepare(self) -> None:
        """OUTPUT_FOLDER with the comparison's record, nnU-Net's environment (results into OUTPUT_FOLDER), and the
        plans and preprocessed data every run needs."""
        created = not self.output.exists()
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "logs").mkdir(exist_ok=True)
        self.store = ResultsStore(self.output, self.header)
        self.store.save()
        self.env = commands.nnunet_environment(
            self.raw_root, self.preprocessed_root, self.output / "nnUNet_results", budgeted=True
        )
        try:
            self._prepare_plans()
        except UserError:
            if created and not any(self.store.data["runs"].values()):
                shutil.rmtree(self.output, ignore_errors=True)  # refused: leave no half-made comparison behind
            raise

    def run(self) -> dict[str, Any]:
        self.prepare()
        self.echo(
            f"compare {self.raw.name} {self.configuration}, budget {self.budget.name}: "
            f"{self.budget.describe()}; folds {','.join(map(str, self.folds))}; device {self.device}"
        )
        self.echo(f"results in {self.output} (nnU-Net's logs in {self.output / 'logs'})")
        for run in self.runs:
            record = dict(self.store.run(run.key) or {})
            if record.get("status") == "done":
                record = self._recount(run, record)
                predictions = self.output / "predictions" / run.key
                if "evaluate" not in record and predictions.is_dir():  # scored before compare ran evaluate
                    record["evaluate"] = evaluate_predictions(self.output / "heldout" / "labels", predictions)
                self.store.set_run(run.key, record)
                continue
            try:
                record = self._run(run, record)
            except UserError as error:  # one broken trainer must not cost the others their runs
                record = dict(self.store.run(run.key) or {}, status="failed", reason=str(error))
                self.echo(f"{run.label}: failed: {error}")
            self.store.set_run(run.key, record)
            self._update_tests()
            self._write_reports()
        self._write_reports()
        return self.store.data

    def _prepare_plans(self) -> None:
        """nnU-Net's planner for a dataset that has no plans yet; nnU-Net's preprocessing for a configuration whose
        data is missing; the ResEnc planner for that baseline."""
        log = self.output / "logs" / "plan.log"
        path = self._plans_file_if_planned(DEFAULT_PLANS)
        if path is None or not path.is_file():
            self.echo(f"planning {self.raw.name} with nnU-Net's planner (nnUNetv2_plan_and_preprocess; log: {log})")
            commands.plan_and_preprocess(self.dataset_id, self.configuration, self.env, log, echo=False)
        needed = {run.plans for run in self.runs}
        for baseline in BASELINES.values():
            if baseline.plans in needed and baseline.planner and not self._plans_file(baseline.plans).is_file():
                self.echo(f"planning the {baseline.label} baseline with {baseline.planner} (log: {log})")
                commands.plan_experiment(self.dataset_id, baseline.planner, self.env, log, echo=False)
        training = datasets.labelled_cases(
            self.raw / "labelsTr", datasets.read_json(self.raw / "dataset.json")["file_ending"]
        )
        for plans in sorted(needed):
            content = self._check_configuration(plans)
            identifier = content["configurations"][self.configuration].get("data_identifier")
            folder = self._plans_file(plans).parent
            data = folder / identifier if identifier is not None else None
            missing = datasets.missing_preprocessed_cases(data, training) if data is not None else training
            if data is None or not data.is_dir() or missing:
                # not preprocessed yet, or an earlier preprocessing stopped part-way (compare killed, the machine
                # stopped): nnU-Net's preprocessing writes every case again
                partly = f", {len(missing)} of {len(training)} cases missing" if len(missing) < len(training) else ""
                self.echo(f"preprocessing {self.configuration} for {plans}{partly} (nnUNetv2_preprocess; log: {log})")
                commands.preprocess(self.dataset_id, plans, self.configuration, self.env, log, echo=False)

    def _model_folder(self, run: Run) -> Path:
        return datasets.model_folder(
            self.env, self.dataset_id, budgeted_name(run.trainer, self.budget), self.configuration, run.plans
        )

    def _run(self, run: Run, record: dict[str, Any]) -> dict[str, Any]:
        trainer_class = budgeted_name(run.trainer, self.budget)
        log = self.output / "logs" / f"{run.key}.log"
        record.update(
            label=run.label,
            trainer=run.trainer,
            plans=run.plans,
            baseline=run.baseline,
            trainer_class=trainer_class,
            log=str(log.relative_to(self.output)),
            status="training",
        )
        record.setdefault("folds", {})
        record.update(self._cost(run))
        self.store.set_run(run.key, record)
        for fold in self.folds:
            record["folds"][str(fold)] = self._train(run, fold, log, record["folds"].get(str(fold), {}))
            self.store.set_run(run.key, record)
        folds = [record["folds"][str(f)] for f in self.folds]
        record["s_per_iter"] = float(sum(f["s_per_iter"] for f in folds) / len(folds))
        peaks = [f for f in folds if f.get("peak_memory_bytes") is not None]
        top = max(peaks, key=lambda f: f["peak_memory_bytes"]) if peaks else {}
        record["peak_memory_bytes"], record["peak_memory_kind"] = (
            top.get("peak_memory_bytes"),
            top.get("peak_memory_kind"),
        )
        record["status"] = "predicting"
        self.store.set_run(run.key, record)
        record.update(self._predict_and_score(run, log))
        record.update(status="done", finished=now())
        summary = ", ".join(f"{k} {v:.3f}" for k, v in record["dice"].items() if v is not None)
        self.echo(
            f"{run.label}: mean Dice {_num(record['mean_dice'])} ({summary}), {record['s_per_iter']:.3f} s/iter,"
            f" {record['s_per_case']:.2f} s/case"
        )
        return record

    def _recount(self, run: Run, record: dict[str, Any]) -> dict[str, Any]:
        """A finished run, kept, with its FLOPs counted again: the count is a function of the network and of how
        FLOPs are counted, so a kept run gets what a fresh one would (an earlier counter counted no CPU attention).
        Other parameters than when it trained mean another network than the trained one: then nothing is changed
        and a line says so."""
        cost = self._cost(run)
        if record.get("params") is not None and record["params"] != cost["params"]:
            self.echo(
                f"{run.label}: done before, kept; its network now has {cost['params']} parameters, not "
                f"{record['params']} as when trained: its cost is left as measured then"
            )
            return record
        if any(record.get(key) != value for key, value in cost.items()):
            self.echo(f"{run.label}: done before, kept; FLOPs counted again: {record.get('flops')} -> {cost['flops']}")
            return dict(record, **cost)
        self.echo(f"{run.label}: done before, kept")
        return record

    def _cost(self, run: Run) -> dict[str, Any]:
        from nnunet_sparseattn.harness.networks import network_cost

        plans = datasets.read_json(self._plans_file(run.plans))
        dataset_json = datasets.read_json(self._plans_file(run.plans).parent / "dataset.json")
        return network_cost(find_trainer_class(run.trainer), plans, self.configuration, dataset_json)

    def _train(self, run: Run, fold: int, log: Path, record: dict[str, Any]) -> dict[str, Any]:
        budgeted_trainer(find_trainer_class(run.trainer), self.budget)  # fails here, not in nnU-Net, if it cannot
        fold_dir = self._model_folder(run) / f"fold_{fold}"
        state = training_state(fold_dir)
        if state != "done":
            what = "continuing" if state == "resume" else "training"
            self.echo(
                f"{run.label}: {what} fold {fold} ({budgeted_name(run.trainer, self.budget)}, log: "
                f"{log.relative_to(self.output)})"
            )
            record["load_average_before"] = load_average()
            started = time.monotonic()
            progress = _Progress(run.label, fold, self.echo)
            commands.train(
                self.dataset_id,
                self.configuration,
                fold,
                budgeted_name(run.trainer, self.budget),
                self.env,
                log,
                plans=run.plans,
                device=self.device,
                resume=state == "resume",
                compile=self.budget.compile and self.device == "cuda",
                on_line=progress,
                echo=False,
            )
            record["train_wall_s"] = round(record.get("train_wall_s", 0.0) + time.monotonic() - started, 1)
            record["load_average_after"] = load_average()
        timing = datasets.read_json(fold_dir / TIMING_FILE)
        record.update(seconds_per_iteration(timing))
        record.update(peak_memory(timing))
        record.update(summarize_iterations(timing["iterations"]))
        # equal seeds give equal batches: equal digests show two runs trained on the same data
        checksums = json.dumps([it["batch_checksum"] for it in timing["iterations"]])
        record["batches_digest"] = hashlib.sha1(checksums.encode()).hexdigest()[:12]
        record["sessions"] = [s["start_epoch"] for s in timing["sessions"]]
        record["curve"] = _training_curve(fold_dir / "checkpoint_final.pth")
        return record

    # ------------------------------------------------------------------------------------- held-out cases
    def _heldout(self) -> dict[str, Any]:
        """The held-out cases, copied once into ``OUTPUT_FOLDER/heldout``: ``imagesTs`` (when ``labelsTs`` exists)
        or each fold's validation cases (nnU-Net's split, written by the first training)."""
        dataset_json = datasets.read_json(self.raw / "dataset.json")
        ending = dataset_json["file_ending"]
        source = datasets.heldout_source(self.raw)
        limit = self.budget.max_predicted_cases
        if source.kind == "test":
            groups = {"test": datasets.labelled_cases(source.labels, ending)[:limit]}
        else:
            preprocessed = datasets.require_dataset(self.preprocessed_root, self.dataset_id, "nnUNet_preprocessed")
            groups = {f"fold_{f}": datasets.validation_cases(preprocessed, f)[:limit] for f in self.folds}
        base = self.output / "heldout"
        record = {"kind": source.kind, "cases": groups}
        if self.store.data.get("heldout") != record or not (base / "labels").is_dir():
            shutil.rmtree(base, ignore_errors=True)
            for group, cases in groups.items():  # images per group (one prediction each), all labels in one folder
                datasets.copy_cases(cases, source, base / group, base / "labels", ending)
            self.store.data["heldout"] = record
            self.store.save()
        return record

    def _predict_and_score(self, run: Run, log: Path) -> dict[str, Any]:
        from nnunet_sparseattn.harness.commands import prediction_timing
        from nnunet_sparseattn.harness.scoring import score_predictions

        heldout = self._heldout()
        predictions = self.output / "predictions" / run.key
        shutil.rmtree(predictions, ignore_errors=True)
        loop_s, cases, wall = 0.0, 0, 0.0
        for group, group_cases in heldout["cases"].items():
            folds = self.folds if group == "test" else [int(group.removeprefix("fold_"))]
            self.echo(f"{run.label}: predicting {len(group_cases)} held-out cases ({group.replace('_', ' ')})")
            lines = commands.predict(
                self.output / "heldout" / group,
                predictions,
                self.dataset_id,
                self.configuration,
                folds,
                budgeted_name(run.trainer, self.budget),
                self.env,
                log,
                plans=run.plans,
                device=self.device,
                tta=self.budget.tta,
                echo=False,
            )
            timing = prediction_timing(lines, len(group_cases))
            loop_s += timing["s_per_case"] * len(group_cases)
            cases += len(group_cases)
            wall += timing["predict_wall_s"]
        all_cases = sorted(c for group in heldout["cases"].values() for c in group)
        preprocessed = self._plans_file(run.plans).parent
        scores = score_predictions(
            predictions,
            self.output / "heldout" / "labels",
            all_cases,
            datasets.read_json(preprocessed / "dataset.json"),
            self._plans_file(run.plans),
        )
        return {
            "s_per_case": loop_s / cases,
            "predict_wall_s": round(wall, 2),
            "predicted_cases": cases,
            **scores,
            "evaluate": evaluate_predictions(self.output / "heldout" / "labels", predictions),
        }

    # ------------------------------------------------------------------------------------------- reports
    def _update_tests(self) -> None:
        runs = self.store.data["runs"]
        done = {k: r for k, r in runs.items() if r.get("status") == "done"}
        tests = []
        for key, record in done.items():
            if record.get("baseline"):
                continue
            for base_key, base in done.items():
                if not base.get("baseline"):
                    continue
                per_case = {c: v["mean_dice"] for c, v in record["per_case"].items()}
                base_case = {c: v["mean_dice"] for c, v in base["per_case"].items()}
                tests.append({"run": key, "baseline": base_key, **paired_test(per_case, base_case)})
        self.store.data["tests"] = tests
        self.store.save()

    def _write_reports(self) -> None:
        from nnunet_sparseattn.compare.report import plot_comparison, render_markdown

        (self.output / "compare.md").write_text(render_markdown(self.store.data))
        plot_comparison(self.store.data, self.output / "compare.png")


class _Progress:
    """One line per epoch from the budgeted trainer's progress records; nnU-Net's own output goes to the log."""

    def __init__(self, label: str, fold: int, echo: Callable[[str], None]):
        self.label, self.fold, self.echo = label, fold, echo
        self.epoch_seconds: list[float] = []

    def __call__(self, line: str) -> None:
        record = parse_progress(line)
        if record is None:
            return
        self.epoch_seconds.append(record["epoch_s"])
        left = record["num_epochs"] - record["epoch"] - 1
        eta = _duration(left * sum(self.epoch_seconds) / len(self.epoch_seconds))
        self.echo(
            f"  {self.label}  fold {self.fold}  epoch {record['epoch'] + 1}/{record['num_epochs']}  "
            f"loss {record['train_loss']:.4f}  pseudo-Dice {_num(record['mean_pseudo_dice'])}  ETA {eta}"
        )


def _training_curve(checkpoint: Path) -> dict[str, list[float]]:
    """Per epoch, from nnU-Net's own log in the final checkpoint: training and validation loss, mean pseudo-Dice."""
    import torch

    logging = torch.load(checkpoint, map_location="cpu", weights_only=False)["logging"]
    return {
        "train_loss": [float(v) for v in logging["train_losses"]],
        "val_loss": [float(v) for v in logging["val_losses"]],
        "mean_pseudo_dice": [float(v) for v in logging["mean_fg_dice"]],
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def run_compare(request: CompareRequest, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Check the request (one-line refusals before anything is written), then run or resume the comparison."""
    return Comparison(request, echo).run()

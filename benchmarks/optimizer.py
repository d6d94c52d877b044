"""Does BSA-Seg need AdamW + warm-up, or does nnU-Net's SGD do? Both trained under one budget, through nnU-Net's CLI.

Usage (from the project's root; MSD Hippocampus is read from ``../shared/data`` unless ``--msd`` says otherwise):

    .venv/bin/python benchmarks/optimizer.py [--budget cpu|tiny] [--work DIR] [--msd PATH] [--out FILE]

It converts MSD Task04 Hippocampus with ``nnUNetv2_convert_MSD_dataset`` (once), keeps the first
``CASES`` training cases, plans and preprocesses 3d_fullres (once), then for each of ``nnUNetTrainerBSA`` (nnU-Net's
SGD, lr 1e-2, Nesterov momentum 0.99, poly decay) and ``nnUNetTrainerBSA_AdamW`` (AdamW, warm-up, poly decay)
trains ``<Trainer>_optim<budget>`` with ``nnUNetv2_train`` (the trainer with this module's budget mixin in front:
the same epochs x iterations, seed and fold for both; the data augmentation runs in the training process,
``nnUNet_n_proc_DA=0``, so the seed fixes the batches too, which the record checks), predicts fold 0's validation
cases with ``nnUNetv2_predict`` (no test-time mirroring) and scores them with ``nnUNetv2_evaluate_folder``.
Run again, it reuses what exists: the conversion, the preprocessing, trained models and their scores.

Recorded in ``benchmarks/results/optimizer-<device>.json`` (``--budget tiny`` writes ``optimizer-<device>-tiny.json``):
- per epoch, from nnU-Net's own log in ``checkpoint_final.pth``: learning rate, train and validation loss, pseudo
  Dice per class and its EMA (nnU-Net's validation iterations: a few patches, not whole cases);
- per training iteration, from the budget mixin: learning rate, loss, gradient norm seen by the optimizer (after
  nnU-Net's clip at 12: a value of 12 means it was clipped), a checksum of the batch, step time;
- seconds per iteration: mean step time (forward, backward, optimizer step) over all iterations but the first;
  and, apart, the seconds of one ``optimizer.step()`` of each trainer's optimizer on the full network;
- final Dice per class and their mean: nnU-Net's evaluation of the predicted validation cases of fold 0.

The budget mixin also skips nnU-Net's final validation inside ``nnUNetv2_train`` (the same cases are predicted
without mirroring and scored afterwards: 8x less CPU time).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a script; nnU-Net's processes get ROOT through PYTHONPATH
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

from nnunet_sparseattn.trainers import nnUNetTrainerBSA, nnUNetTrainerBSA_AdamW
from nnunet_sparseattn.trainers.short_schedule import ShortSchedule, _ShortScheduleMixin

MODULE = "benchmarks.optimizer"  # where nnU-Net's processes import the budgeted trainers from (pickling)
CONFIGURATION = "3d_fullres"
CASES = 60  # training cases kept: nnU-Net's planner then picks batch 2, its usual 3D batch (fold 0: 48 + 12 cases)
RECORD_FILE = "optimizer_bench.json"
COMPARED = (nnUNetTrainerBSA, nnUNetTrainerBSA_AdamW)


@dataclass(frozen=True)
class Budget:
    name: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    seed: int = 0
    fold: int = 0


BUDGETS = {
    # smoke run of the whole script (minutes)
    "tiny": Budget("tiny", 2, 2, 1),
    # both trainers in 15-30 minutes on 2 shared CPU cores (a BSA step: 9 s at load 5, 30 s at load 10)
    "cpu": Budget("cpu", 4, 8, 2),
}


class _OptimizerBenchMixin(_ShortScheduleMixin):
    """Seeded, budgeted, and recording every training iteration; nnU-Net's final validation skipped."""

    budget: ClassVar[Budget]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # before nnU-Net builds the network (same initial weights for both optimizers) and the data loaders
        random.seed(self.budget.seed)
        np.random.seed(self.budget.seed)
        torch.manual_seed(self.budget.seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._iterations: list[dict[str, Any]] = []
        self._grad_norm = float("nan")

    def on_train_start(self) -> None:
        super().on_train_start()
        # registered last: runs after any clip of the optimizer's own hooks, sees what the optimizer steps with
        self.optimizer.register_step_pre_hook(self._record_grad_norm)

    def _record_grad_norm(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        self._grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def train_step(self, batch: dict) -> dict:
        checksum = float(batch["data"].double().sum())
        started = time.perf_counter()
        out = super().train_step(batch)
        self._iterations.append({
            "epoch": self.current_epoch, "lr": self.optimizer.param_groups[0]["lr"], "loss": float(out["loss"]),
            "grad_norm": self._grad_norm, "batch_checksum": checksum, "step_s": time.perf_counter() - started,
            # the machine's load: on shared cores step times of two runs compare only at similar load
            "load_1min": os.getloadavg()[0]})
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        super().on_train_epoch_end(train_outputs)
        (Path(self.output_folder) / RECORD_FILE).write_text(json.dumps({"iterations": self._iterations}))

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("optimizer benchmark: final validation skipped (the benchmark predicts and scores "
                               "the fold's validation cases)", also_print_to_console=True)


def budgeted_name(trainer: type, budget: Budget) -> str:
    return f"{trainer.__name__}_optim{budget.name}"


__all__: list[str] = []
for _budget in BUDGETS.values():
    for _base in COMPARED:
        _name = budgeted_name(_base, _budget)
        globals()[_name] = type(_name, (_OptimizerBenchMixin, _base), {
            "budget": _budget, "__module__": MODULE, "__qualname__": _name,
            "short_schedule": ShortSchedule(_budget.num_epochs, _budget.num_iterations_per_epoch,
                                            _budget.num_val_iterations_per_epoch),
            "__doc__": f"{_base.__name__} under the optimizer benchmark's budget {_budget.name!r}."})
        __all__.append(_name)
del _budget, _base, _name


# ------------------------------------------------------------------------------------------------ the harness
def _environment(work: Path) -> dict[str, str]:
    from nnunet_sparseattn.demo import pipeline
    from nnunet_sparseattn.discovery import ext_trainer_path

    env = pipeline.nnunet_environment(work)
    shim = work / "ext_trainers_optimizer"
    shim.mkdir(exist_ok=True)
    (shim / "nnunet_sparseattn_optimizer_shim.py").write_text(
        "# written by benchmarks/optimizer.py: its budgeted trainers, imported from where they live (pickling)\n"
        f"from {MODULE} import *  # noqa: F401,F403\n")
    env["nnUNet_extTrainer"] = os.pathsep.join([str(ext_trainer_path()), str(shim)])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _prepare(msd: Path, env: dict[str, str], log: Path) -> int:
    from nnunet_sparseattn.demo import pipeline

    dataset_id = pipeline.convert_msd(msd, env)
    dataset = pipeline.dataset_folder(Path(env["nnUNet_raw"]), dataset_id)
    pipeline.keep_training_cases(dataset, CASES)
    preprocessed = pipeline.dataset_folder(Path(env["nnUNet_preprocessed"]), dataset_id)
    if preprocessed is None or not (preprocessed / "nnUNetPlans.json").is_file():
        pipeline.plan_and_preprocess(dataset_id, CONFIGURATION, env, log)
    return dataset_id


def _heldout(dataset_id: int, fold: int, env: dict[str, str], work: Path) -> tuple[Path, Path, list[str]]:
    """Fold ``fold``'s validation cases (nnU-Net's split), copied to an image and a label folder."""
    from nnunet_sparseattn.demo import pipeline

    dataset = pipeline.dataset_folder(Path(env["nnUNet_raw"]), dataset_id)
    cases = sorted(pipeline.validation_cases(dataset_id, fold, env))
    images, labels = work / "heldout" / "images", work / "heldout" / "labels"
    for folder in (images, labels):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for case in cases:
        shutil.copy(dataset / "imagesTr" / f"{case}_0000.nii.gz", images)
        shutil.copy(dataset / "labelsTr" / f"{case}.nii.gz", labels)
    return images, labels, cases


def epochs_from_log(logging: dict[str, list]) -> list[dict[str, Any]]:
    """nnU-Net's per-epoch log (``checkpoint['logging']``) as one record per epoch."""
    return [{"epoch": e, "lr": logging["lrs"][e], "train_loss": float(logging["train_losses"][e]),
             "val_loss": float(logging["val_losses"][e]),
             "pseudo_dice": [float(d) for d in logging["dice_per_class_or_region"][e]],
             "mean_pseudo_dice": float(logging["mean_fg_dice"][e]),
             "ema_pseudo_dice": float(logging["ema_fg_dice"][e]),
             "epoch_s": float(logging["epoch_end_timestamps"][e] - logging["epoch_start_timestamps"][e])}
            for e in range(len(logging["train_losses"]))]


def summarize_iterations(iterations: list[dict[str, Any]], clip: float = 12.0) -> dict[str, Any]:
    """Step time (first iteration excluded: allocator warm-up), loss over the first and last quarter, gradient
    norms."""
    steps = [it["step_s"] for it in iterations[1:]] or [it["step_s"] for it in iterations]
    losses = [it["loss"] for it in iterations]
    quarter = max(1, len(losses) // 4)
    norms = np.array([it["grad_norm"] for it in iterations])
    return {
        "s_per_iteration": float(np.mean(steps)),
        "loss_first_quarter": float(np.mean(losses[:quarter])),
        "loss_last_quarter": float(np.mean(losses[-quarter:])),
        "grad_norm_median": float(np.median(norms)),
        "grad_norm_max": float(norms.max()),
        "iterations_clipped_at_12": int(np.sum(norms >= clip * (1 - 1e-4))),
        "iterations_grad_norm_over_1": int(np.sum(norms > 1.0)),
        "load_1min_mean": float(np.mean([it["load_1min"] for it in iterations]))
        if all("load_1min" in it for it in iterations) else None,
    }


def run_trainer(trainer: type, budget: Budget, dataset_id: int, env: dict[str, str], work: Path,
                heldout: tuple[Path, Path, list[str]], log: Path) -> dict[str, Any]:
    from nnunet_sparseattn.demo import pipeline

    name = budgeted_name(trainer, budget)
    model = next(Path(env["nnUNet_results"]).glob(f"Dataset{dataset_id:03d}_*"), None)
    fold_dir = (model / f"{name}__nnUNetPlans__{CONFIGURATION}" / f"fold_{budget.fold}") if model else None
    started = time.monotonic()
    if fold_dir is None or not (fold_dir / "checkpoint_final.pth").is_file():
        pipeline.train(dataset_id, CONFIGURATION, budget.fold, name, env, log)
    train_s = time.monotonic() - started
    model = next(Path(env["nnUNet_results"]).glob(f"Dataset{dataset_id:03d}_*"))
    fold_dir = model / f"{name}__nnUNetPlans__{CONFIGURATION}" / f"fold_{budget.fold}"
    checkpoint = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    iterations = json.loads((fold_dir / RECORD_FILE).read_text())["iterations"]

    images, labels, cases = heldout
    predictions = work / "predictions" / name
    scored = predictions / "summary.json"
    if scored.is_file() and scored.stat().st_mtime > (fold_dir / "checkpoint_final.pth").stat().st_mtime:
        summary = json.loads(scored.read_text())  # this model was already predicted and scored
    else:
        shutil.rmtree(predictions, ignore_errors=True)
        pipeline.predict(images, predictions, dataset_id, CONFIGURATION, budget.fold, name, env, log)
        summary = pipeline.evaluate(labels, predictions, dataset_id, name, CONFIGURATION, env, log)
    return {
        "trainer": trainer.__name__,
        "budgeted_trainer": name,
        "optimizer": _optimizer_of(trainer),
        # what the checkpoint's optimizer held (SGD: momentum, nesterov; AdamW: betas), its last learning rate
        "optimizer_param_group": {k: v for k, v in checkpoint["optimizer_state"]["param_groups"][0].items()
                                  if k != "params"},
        "wall_s_training_command": round(train_s, 1),
        "final_dice": {k: summary["mean"][k]["Dice"] for k in sorted(summary["mean"])},
        "final_mean_dice": summary["foreground_mean"]["Dice"],
        "validation_cases": cases,
        **summarize_iterations(iterations),
        "epochs": epochs_from_log(checkpoint["logging"]),
        "iterations": iterations,
    }


def optimizer_step_seconds(dataset_id: int, env: dict[str, str], repeats: int = 20) -> dict[str, float]:
    """Seconds per ``optimizer.step()`` of each compared trainer's own optimizer on the full BSA network (random
    gradients, CPU, the fastest of ``repeats``: on shared cores the minimum is the cost, the rest is other
    workers): the optimizer's share of an iteration, free of data and network time."""
    from unittest import mock

    from nnunet_sparseattn.demo import pipeline

    preprocessed = pipeline.dataset_folder(Path(env["nnUNet_preprocessed"]), dataset_id)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    seconds = {}
    for trainer_class in COMPARED:
        plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
        plans["continue_training"] = False
        with mock.patch.dict(os.environ, {k: env[k] for k in ("nnUNet_preprocessed", "nnUNet_results")}):
            trainer = trainer_class(plans, CONFIGURATION, 0, dataset_json, device=torch.device("cpu"))
        trainer.network = trainer.build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads)
        optimizer, _ = trainer.configure_optimizers()
        for p in trainer.network.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - started)
        seconds[trainer_class.__name__] = float(min(times[1:]))  # the first allocates the state
    return seconds


def _optimizer_of(trainer: type) -> str:
    return "AdamW + warm-up + poly" if issubclass(trainer, nnUNetTrainerBSA_AdamW) else "SGD (nnU-Net) + poly"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet_sparseattn_optimizer"))
    parser.add_argument("--msd", type=Path, default=ROOT.parent / "shared" / "data" / "Task04_Hippocampus")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    out = args.out or ROOT / "benchmarks" / "results" / \
        f"optimizer-cpu{'' if budget.name == 'cpu' else '-' + budget.name}.json"
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "nnunet.log"
    env = _environment(work)

    from nnunet_sparseattn.demo import pipeline

    for trainer in COMPARED:
        pipeline.check_trainer(budgeted_name(trainer, budget), env)
    load_before = os.getloadavg()
    dataset_id = _prepare(args.msd, env, log)
    heldout = _heldout(dataset_id, budget.fold, env, work)
    runs = []
    for trainer in COMPARED:
        runs.append(run_trainer(trainer, budget, dataset_id, env, work, heldout, log))
    checksums = [[it["batch_checksum"] for it in run["iterations"]] for run in runs]
    step_s = optimizer_step_seconds(dataset_id, env)
    for run in runs:
        run["optimizer_step_s"] = step_s[run["trainer"]]
    result = {
        "command": "python benchmarks/optimizer.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "nnunetv2": _version("nnunetv2"),
                    "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]]},
        "dataset": f"MSD Task04 Hippocampus, {CONFIGURATION}, first {CASES} training cases, fold {budget.fold}",
        "budget": asdict(budget),
        # same seed, same data order: both optimizers saw exactly the same batches
        "identical_batches": checksums[0] == checksums[1],
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    for run in runs:
        dice = ", ".join(f"{k}: {v:.3f}" for k, v in run["final_dice"].items())
        print(f"{run['trainer']:<24} {run['optimizer']:<24} Dice {dice} (mean {run['final_mean_dice']:.3f}); "
              f"loss {run['loss_first_quarter']:.3f} -> {run['loss_last_quarter']:.3f}; "
              f"{run['s_per_iteration']:.1f} s/iteration, of which the optimizer step {run['optimizer_step_s']:.3f} s")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    raise SystemExit(main())

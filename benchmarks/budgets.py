"""Named training budgets for ``benchmarks/accuracy.py`` and the budgeted trainers that apply them.

A budget fixes what every compared trainer gets: epochs x iterations per epoch, the seed, the fold, the subset of
training cases, the device, test-time augmentation and ``torch.compile``. It is applied without a new trainer class
per method: for every (budget, trainer) pair this module makes ``<Trainer>_bench<budget>``, the trainer with the
benchmark mixin in front (the stock ``nnUNetTrainer`` gets exactly the same mixin), and binds it here under its
name, so that nnU-Net finds it through a shim in ``nnUNet_extTrainer`` and it pickles (``benchmarks.budgets`` must
be importable in nnU-Net's processes: the harness puts the project's root on ``PYTHONPATH``).

The mixin:
- sets the schedule after nnU-Net's ``__init__`` (the project's short-schedule mechanism, ``_ShortScheduleMixin``);
- seeds Python, NumPy and torch before nnU-Net builds anything (network initialisation, and the data augmentation
  when it runs in the training process: ``nnUNet_n_proc_DA=0``, the CPU setting). NOT seeded: nnU-Net's
  augmentation worker processes (GPU runs; nnU-Net starts them with ``seeds=None``), cuDNN's algorithm choice
  (``cudnn.benchmark``) and atomics on the GPU. The 5-fold split is nnU-Net's own, seeded (12345) by nnU-Net;
- saves ``checkpoint_latest.pth`` after every epoch, so that a killed run continues (``--c``) where it stopped;
- times the training iterations of every epoch (from after ``on_train_epoch_start`` to the start of
  ``on_train_epoch_end``: data loading, forward, backward and optimiser step; nnU-Net's validation iterations
  excluded) and records the training process's peak memory into ``benchmark_timing.json`` in the fold folder;
- skips nnU-Net's final validation: the harness predicts the fold's validation cases with ``nnUNetv2_predict``
  and scores them with ``nnUNetv2_evaluate_folder``, timing that instead.
"""
from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.trainers.short_schedule import ShortSchedule, _ShortScheduleMixin

# The trainers the benchmark compares, in table order: nnU-Net's own first.
TRAINERS: tuple[str, ...] = (
    "nnUNetTrainer",
    "nnUNetTrainerNB",
    "nnUNetTrainerBSA",
    "nnUNetTrainerMDSA",
    "nnUNetTrainerBilateral",
)

TIMING_FILE = "benchmark_timing.json"


@dataclass(frozen=True)
class Budget:
    name: str
    device: str  # "cpu" or "cuda": nnUNetv2_train/predict -device
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    # training cases kept per dataset (the first N of nnU-Net's raw dataset, in name order); absent or None: all
    training_cases: dict[str, int | None] = field(default_factory=dict)
    # validation cases of the fold that are predicted and scored (the first N in name order); None: all of them
    max_predicted_cases: int | None = None
    tta: bool = False  # nnU-Net's mirroring at prediction (its default is on; 8x the CPU time in 3D)
    compile: bool = False  # nnUNet_compile for training (nnU-Net's default: on for CUDA; its predictor: off)
    seed: int = 0
    fold: int = 0

    @property
    def iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def describe(self) -> str:
        cases = ", ".join(f"{k} {'all' if v is None else v}" for k, v in sorted(self.training_cases.items()))
        return (f"{self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
                f"(+{self.num_val_iterations_per_epoch} validation iterations per epoch), seed {self.seed}, "
                f"fold {self.fold}, device {self.device}, training cases: {cases or 'all'}, predicted cases: "
                f"{'all' if self.max_predicted_cases is None else f'at most {self.max_predicted_cases}'} "
                f"validation cases of the fold, TTA {'on' if self.tta else 'off'}, "
                f"torch.compile in training {'on' if self.compile else 'off'}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    # the slow test and quick smoke runs: the whole pipeline in a few minutes, Dice meaningless
    "tiny": Budget("tiny", "cpu", num_epochs=2, num_iterations_per_epoch=1, num_val_iterations_per_epoch=1,
                   training_cases={"hippocampus": 8, "isic2017": 20}, max_predicted_cases=1),
    # about an hour on 2 quiet CPU cores for 5 trainers x 2 datasets, planning, prediction and evaluation included
    # (measured: 3 x 8 iterations took 15 min in all, about 7 of them outside training, and left stock nnU-Net at
    # Dice 0 on Hippocampus). 40 cases: nnU-Net caps a batch at 5 % of the dataset's voxels, so both datasets
    # plan its minimum batch of 2 (the full datasets plan larger batches: several times the CPU time per iteration)
    "cpu": Budget("cpu", "cpu", num_epochs=8, num_iterations_per_epoch=16, num_val_iterations_per_epoch=2,
                  training_cases={"hippocampus": 40, "isic2017": 40}, max_predicted_cases=None),
    # the comparison the targets are stated at: every case, nnU-Net's inference defaults
    "gpu": Budget("gpu", "cuda", num_epochs=50, num_iterations_per_epoch=250, num_val_iterations_per_epoch=50,
                  training_cases={}, max_predicted_cases=None, tta=True, compile=True),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all devices


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that a reader (or a restart after a kill) sees the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def restart_timing(timing: dict | None, start_epoch: int) -> dict:
    """The timing record a training session starts from: epochs before ``start_epoch`` kept (their checkpoint
    exists), later ones dropped (they are trained again); a fresh run (``start_epoch`` 0) starts empty."""
    if timing is None or start_epoch == 0:
        return {"epochs": {}, "sessions": []}
    epochs = {k: v for k, v in timing.get("epochs", {}).items() if int(k) < start_epoch}
    return {"epochs": epochs, "sessions": list(timing.get("sessions", []))}


def seconds_per_iteration(timing: dict) -> dict[str, Any]:
    """Training time per iteration from a timing record: total time over total iterations of the epochs that were
    not the first of their session (the first carries warm-up: allocator, cuDNN autotuning, torch.compile).
    Falls back to every epoch, saying so, when no other epoch exists."""
    epochs = list(timing.get("epochs", {}).values())
    if not epochs:
        raise ValueError("the timing record has no finished epoch")
    steady = [e for e in epochs if not e["first_in_session"]]
    used = steady or epochs
    return {"s_per_iter": sum(e["train_s"] for e in used) / sum(e["iterations"] for e in used),
            "timed_epochs": len(used),
            "warmup_excluded": bool(steady)}


def peak_memory(timing: dict) -> dict[str, Any]:
    """The largest peak over the training sessions (a resumed run has several)."""
    sessions = [s for s in timing.get("sessions", []) if s.get("peak_bytes") is not None]
    if not sessions:
        return {"peak_memory_bytes": None, "peak_memory_kind": None}
    top = max(sessions, key=lambda s: s["peak_bytes"])
    return {"peak_memory_bytes": top["peak_bytes"], "peak_memory_kind": top["kind"]}


class _BenchmarkMixin(_ShortScheduleMixin):
    budget: ClassVar[Budget]

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed_everything(self.budget.seed)  # before nnU-Net builds the network or the data loaders
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1  # checkpoint_latest.pth after every epoch: a killed run loses at most one epoch
        self._timing: dict | None = None
        self._first_epoch_of_session = 0
        self._epoch_started = 0.0

    @property
    def _timing_file(self) -> Path:
        return Path(self.output_folder) / TIMING_FILE

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_start(self) -> None:
        super().on_train_start()
        # current_epoch is the checkpoint's epoch under --c (nnU-Net loads it before run_training), else 0
        previous = json.loads(self._timing_file.read_text()) if self._timing_file.is_file() else None
        self._timing = restart_timing(previous, self.current_epoch)
        self._timing["sessions"].append({"start_epoch": self.current_epoch, "device": self.device.type})
        self._first_epoch_of_session = self.current_epoch
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._sync()
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        self._sync()
        elapsed = time.perf_counter() - self._epoch_started
        if self.local_rank == 0:
            self._timing["epochs"][str(self.current_epoch)] = {
                "train_s": elapsed, "iterations": self.num_iterations_per_epoch,
                "first_in_session": self.current_epoch == self._first_epoch_of_session}
            self._save_timing()
        super().on_train_epoch_end(train_outputs)

    def _save_timing(self) -> None:  # with the session's peak memory so far
        session = self._timing["sessions"][-1]
        if self.device.type == "cuda":
            session["peak_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            session["kind"] = "torch.cuda.max_memory_allocated of the training process"
        else:
            # Linux reports ru_maxrss in KiB (macOS in bytes)
            scale = 1 if sys.platform == "darwin" else 1024
            session["peak_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
            session["kind"] = "peak RSS of the training process (getrusage ru_maxrss)"
        write_json_atomic(self._timing_file, self._timing)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file("benchmark budget: nnU-Net's final validation skipped; the benchmark predicts the "
                               "fold's validation cases with nnUNetv2_predict and times that",
                               also_print_to_console=True)


def budgeted_name(trainer: str, budget: Budget | str) -> str:
    return f"{trainer}_bench{budget if isinstance(budget, str) else budget.name}"


def find_base_trainer(name: str) -> type | None:
    """The trainer class ``name`` (nnU-Net's stock trainer or one of ours), or None where it does not exist yet."""
    if name == "nnUNetTrainer":
        return nnUNetTrainer
    from nnunet_sparseattn import trainers

    found = getattr(trainers, name, None)
    return found if isinstance(found, type) and issubclass(found, nnUNetTrainer) else None


def budgeted_trainer(base: type, budget: Budget) -> type:
    """``base`` with ``budget`` applied, named ``<base>_bench<budget>``, bound in this module (it must be, to pickle)."""
    name = budgeted_name(base.__name__, budget)
    schedule = ShortSchedule(budget.num_epochs, budget.num_iterations_per_epoch, budget.num_val_iterations_per_epoch)
    doc = f"{base.__name__} under the benchmark budget {budget.name!r}: {budget.describe()}."
    return type(name, (_BenchmarkMixin, base),
                {"budget": budget, "short_schedule": schedule, "__module__": __name__, "__qualname__": name,
                 "__doc__": doc})


__all__ = ["BUDGETS", "TRAINERS", "Budget"]
for _budget in BUDGETS.values():
    for _name in TRAINERS:
        _base = find_base_trainer(_name)
        if _base is not None:
            _cls = budgeted_trainer(_base, _budget)
            globals()[_cls.__name__] = _cls
            __all__.append(_cls.__name__)
del _budget, _name, _base, _cls

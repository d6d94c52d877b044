"""Training budgets and the budgeted trainers that apply them, found by nnU-Net by name.

A budget fixes what every compared trainer gets: epochs x iterations per epoch (and validation iterations), the
seed, optionally a cap on the plans' batch size, and how the held-out cases are predicted (test-time augmentation,
at most how many cases) and whether training compiles. It is applied without a trainer class per method: for any
trainer ``T`` and budget ``B`` the class ``T_benchB`` is ``T`` with :class:`BudgetMixin` in front (nnU-Net's stock
``nnUNetTrainer`` gets exactly the same mixin).

Those classes are made on demand from their name, by this module's ``__getattr__`` (PEP 562): ``B`` is a named
budget (``tiny``, ``cpu``, ``gpu``) or ``EPOCHSxITERATIONS`` (``20x50``; ``20x50b4`` also caps batches at 4;
``20x50s1`` or ``20x50b4s1`` seeds with 1 instead of 0: the same budget, another draw). So a
class exists, as the same object, in every process that asks this module for it, and pickles. nnU-Net asks through
``budget_shim/``, a folder that ``harness.commands`` appends to ``nnUNet_extTrainer``: its one module re-exports this
``__getattr__``, and nnU-Net's lookup (``hasattr`` on the modules of that folder) finds every budgeted name.

The mixin:
- sets the schedule after nnU-Net's ``__init__`` (the short-schedule mechanism, ``ShortScheduleMixin``);
- seeds Python, NumPy and torch before nnU-Net builds anything (network initialisation, and the data augmentation
  when it runs in the training process: ``nnUNet_n_proc_DA=0``, the CPU setting). NOT seeded: nnU-Net's
  augmentation worker processes (GPU runs; nnU-Net starts them with ``seeds=None``), cuDNN's algorithm choice
  (``cudnn.benchmark``) and atomics on the GPU. The 5-fold split is nnU-Net's own, seeded (12345) by nnU-Net.
  nnU-Net's checkpoints hold no random state: a session resumed at epoch ``e`` reseeds with ``seed + e``, so it
  draws other batches than the epochs before it, and other batches than an uninterrupted run would have;
- saves ``checkpoint_latest.pth`` after every epoch, so that a killed run continues (``--c``) where it stopped;
- times the training iterations of every epoch (from after ``on_train_epoch_start`` to the start of
  ``on_train_epoch_end``: data loading, forward, backward and optimiser step; nnU-Net's validation iterations
  excluded), wall and CPU time (``time.process_time``: all threads of the training process), and records the
  training process's peak memory into ``benchmark_timing.json`` in the fold folder,
  with one record per training iteration: learning rate, loss, the gradient norm the optimiser stepped with (after
  nnU-Net's clip at 12 and any clip of the trainer's own), step time and a checksum of the batch (equal seeds give
  equal batches: two trainers' checksums show whether they saw the same data);
- prints one machine-readable progress line per epoch (``PROGRESS_TAG`` + JSON: loss, pseudo-Dice, epoch time);
- skips nnU-Net's final validation: the harness predicts the held-out cases with ``nnUNetv2_predict`` instead.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness.trainers import find_trainer_class
from nnunet_sparseattn.trainers.short_schedule import ShortSchedule, ShortScheduleMixin

TIMING_FILE = "benchmark_timing.json"
PROGRESS_TAG = "[nnunet-sparseattn epoch] "
SUFFIX = "_bench"


@dataclass(frozen=True)
class Budget:
    name: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    seed: int = 0
    max_batch_size: int | None = None  # cap on the plans' batch size (None: the plans')
    # held-out cases predicted and scored per fold (the first N in name order); None: all of them
    max_predicted_cases: int | None = None
    tta: bool = False  # nnU-Net's mirroring at prediction (its default is on; 8x the CPU time in 3D)
    compile: bool = False  # nnUNet_compile for training on CUDA (nnU-Net's default there: on; its predictor: off)

    @property
    def iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def describe(self) -> str:
        batch = f", batches of at most {self.max_batch_size}" if self.max_batch_size else ""
        cases = "all" if self.max_predicted_cases is None else f"at most {self.max_predicted_cases}"
        return (
            f"{self.num_epochs} epochs x {self.num_iterations_per_epoch} iterations "
            f"(+{self.num_val_iterations_per_epoch} validation iterations per epoch){batch}, seed {self.seed}, "
            f"{cases} held-out cases predicted per fold, TTA {'on' if self.tta else 'off'}, "
            f"torch.compile in training {'on' if self.compile else 'off'}"
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    # CI and smoke runs: the whole pipeline in a few minutes; Dice meaningless
    "tiny": Budget(
        "tiny", num_epochs=2, num_iterations_per_epoch=1, num_val_iterations_per_epoch=1, max_predicted_cases=3
    ),
    # about an hour on 2 quiet CPU cores for 5 trainers x 2 small datasets (benchmarks/accuracy.py)
    "cpu": Budget("cpu", num_epochs=8, num_iterations_per_epoch=16, num_val_iterations_per_epoch=2),
    # a GPU comparison: every held-out case, nnU-Net's inference defaults
    "gpu": Budget(
        "gpu", num_epochs=50, num_iterations_per_epoch=250, num_val_iterations_per_epoch=50, tta=True, compile=True
    ),
}
_PARSED = re.compile(r"(\d+)x(\d+)(?:b(\d+))?(?:s(\d+))?")


def parse_budget(text: str) -> Budget:
    """A named budget, or ``EPOCHSxITERATIONS`` (validation iterations: a fifth, as nnU-Net's 250 + 50; seed 0),
    optionally ``bN`` to cap batches at N, then optionally ``sN`` for seed N (``s0`` is refused: leave it out, so
    that one budget has one name). Refused in one line otherwise."""
    text = str(text).strip()
    if text in BUDGETS:
        return BUDGETS[text]
    match = _PARSED.fullmatch(text)
    numbers = [int(g) for g in match.groups() if g is not None] if match else []
    if match is None or 0 in numbers:
        raise UserError(
            f"budget {text!r} is neither a named budget ({', '.join(BUDGETS)}) nor EPOCHSxITERATIONS "
            "with positive numbers, e.g. 20x50 (20 epochs of 50 iterations), 20x50b4 (batches of at most 4), "
            "20x50b4s1 (seed 1)"
        )
    epochs, iterations = numbers[:2]
    return Budget(
        text,
        epochs,
        iterations,
        max(1, iterations // 5),
        seed=int(match.group(4)) if match.group(4) else 0,
        max_batch_size=int(match.group(3)) if match.group(3) else None,
    )


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


# ------------------------------------------------------------------------------------------ timing records
def restart_timing(timing: dict | None, start_epoch: int) -> dict:
    """The timing record a training session starts from: epochs (and their iterations) before ``start_epoch`` kept
    (their checkpoint exists), later ones dropped (they are trained again); a fresh run (``start_epoch`` 0) starts
    empty."""
    if timing is None or start_epoch == 0:
        return {"epochs": {}, "sessions": [], "iterations": []}
    epochs = {k: v for k, v in timing.get("epochs", {}).items() if int(k) < start_epoch}
    iterations = [it for it in timing.get("iterations", []) if it["epoch"] < start_epoch]
    return {"epochs": epochs, "sessions": list(timing.get("sessions", [])), "iterations": iterations}


def seconds_per_iteration(timing: dict) -> dict[str, Any]:
    """Training time per iteration from a timing record: total time over total iterations of the epochs that were
    not the first of their session (the first carries warm-up: allocator, cuDNN autotuning, torch.compile).
    Falls back to every epoch, saying so, when no other epoch exists."""
    epochs = list(timing.get("epochs", {}).values())
    if not epochs:
        raise ValueError("the timing record has no finished epoch")
    steady = [e for e in epochs if not e["first_in_session"]]
    used = steady or epochs
    return {
        "s_per_iter": sum(e["train_s"] for e in used) / sum(e["iterations"] for e in used),
        "timed_epochs": len(used),
        "warmup_excluded": bool(steady),
    }


def peak_memory(timing: dict) -> dict[str, Any]:
    """The largest peak over the training sessions (a resumed run has several)."""
    sessions = [s for s in timing.get("sessions", []) if s.get("peak_bytes") is not None]
    if not sessions:
        return {"peak_memory_bytes": None, "peak_memory_kind": None}
    top = max(sessions, key=lambda s: s["peak_bytes"])
    return {"peak_memory_bytes": top["peak_bytes"], "peak_memory_kind": top["kind"]}


def summarize_iterations(iterations: list[dict[str, Any]], clip: float = 12.0) -> dict[str, Any]:
    """Per-iteration records in a few numbers: mean step time (the first step left out: allocator warm-up), loss
    over the first and the last quarter, gradient norms (median, largest, how many at nnU-Net's clip or above 1)."""
    if not iterations:
        return {}
    steps = [it["step_s"] for it in iterations[1:]] or [it["step_s"] for it in iterations]
    losses = [it["loss"] for it in iterations]
    quarter = max(1, len(losses) // 4)
    norms = np.array([math.nan if it["grad_norm"] is None else it["grad_norm"] for it in iterations], dtype=float)
    return {
        "step_s_mean": float(np.mean(steps)),
        "loss_first_quarter": float(np.mean(losses[:quarter])),
        "loss_last_quarter": float(np.mean(losses[-quarter:])),
        "grad_norm_median": float(np.nanmedian(norms)),
        "grad_norm_max": float(np.nanmax(norms)),
        "iterations_clipped_at_12": int(np.sum(norms >= clip * (1 - 1e-4))),
        "iterations_grad_norm_over_1": int(np.sum(norms > 1.0)),
    }


def training_state(fold_dir: Path) -> str:
    """``done`` (nnU-Net wrote the final checkpoint), ``resume`` (a killed run left a checkpoint: ``--c``) or
    ``fresh``."""
    if (fold_dir / "checkpoint_final.pth").is_file():
        return "done"
    if any((fold_dir / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_best.pth")):
        return "resume"
    return "fresh"


def parse_progress(line: str) -> dict[str, Any] | None:
    """The record of a progress line printed by :class:`BudgetMixin`, or None for any other line."""
    if not line.startswith(PROGRESS_TAG):
        return None
    return json.loads(line[len(PROGRESS_TAG) :])


# ------------------------------------------------------------------------------------------------ the mixin
class BudgetMixin(ShortScheduleMixin):
    budget: ClassVar[Budget]

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        seed_everything(self.budget.seed)  # before nnU-Net builds the network or the data loaders
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1  # checkpoint_latest.pth after every epoch: a killed run loses at most one epoch
        self._timing: dict | None = None
        self._first_epoch_of_session = 0
        self._epoch_started = 0.0
        self._epoch_cpu_started = 0.0
        self._grad_norm = math.nan

    @property
    def _timing_file(self) -> Path:
        return Path(self.output_folder) / TIMING_FILE

    # a method, not a property: nnU-Net's _save_debug_information reads every non-callable attribute, before
    # on_train_start has made the record
    def _timing_record(self) -> dict:
        """This session's timing record (made by on_train_start, before any hook that writes to it)."""
        if self._timing is None:
            raise RuntimeError(f"{type(self).__name__}: the timing record is made in on_train_start, not yet run")
        return self._timing

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
        if self.current_epoch > 0:  # resumed: not the random stream epoch 0 started from again
            seed_everything(self.budget.seed + self.current_epoch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        # registered last: runs after any clip of the trainer's own hooks, sees what the optimizer steps with
        self.optimizer.register_step_pre_hook(self._record_grad_norm)

    def _record_grad_norm(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        norms = [
            torch.linalg.vector_norm(p.grad)
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        self._grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else math.nan

    def train_step(self, batch: dict) -> dict:
        checksum = float(batch["data"].double().sum())
        self._grad_norm = math.nan  # stays NaN where the step is skipped (GradScaler found inf)
        self._sync()
        started = time.perf_counter()
        out = super().train_step(batch)
        self._sync()
        self._timing_record()["iterations"].append(
            {
                "epoch": self.current_epoch,
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "loss": float(out["loss"]),
                "grad_norm": None if math.isnan(self._grad_norm) else self._grad_norm,
                "batch_checksum": checksum,
                "step_s": time.perf_counter() - started,
            }
        )
        return out

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._sync()
        self._epoch_started = time.perf_counter()
        self._epoch_cpu_started = time.process_time()

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        self._sync()
        elapsed = time.perf_counter() - self._epoch_started
        cpu = time.process_time() - self._epoch_cpu_started
        if self.local_rank == 0:
            self._timing_record()["epochs"][str(self.current_epoch)] = {
                "train_s": elapsed,
                "train_cpu_s": cpu,  # every thread of the training process (augmentation runs in it on the CPU)
                "iterations": self.num_iterations_per_epoch,
                "first_in_session": self.current_epoch == self._first_epoch_of_session,
            }
            self._save_timing()
        super().on_train_epoch_end(train_outputs)

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch  # nnU-Net's on_epoch_end moves it on
        super().on_epoch_end()
        if self.local_rank == 0:
            value = self.logger.get_value
            record = {
                "epoch": epoch,
                "num_epochs": self.num_epochs,
                "train_loss": float(value("train_losses", step=-1)),
                "val_loss": float(value("val_losses", step=-1)),
                "pseudo_dice": [float(d) for d in value("dice_per_class_or_region", step=-1)],
                "mean_pseudo_dice": float(value("mean_fg_dice", step=-1)),
                "epoch_s": float(value("epoch_end_timestamps", step=-1) - value("epoch_start_timestamps", step=-1)),
            }
            print(PROGRESS_TAG + json.dumps(record), flush=True)

    def _save_timing(self) -> None:  # with the session's peak memory so far
        session = self._timing_record()["sessions"][-1]
        if self.device.type == "cuda":
            session["peak_bytes"] = int(torch.cuda.max_memory_allocated(self.device))
            session["kind"] = "torch.cuda.max_memory_allocated of the training process"
        else:
            # Linux reports ru_maxrss in KiB (macOS in bytes)
            scale = 1 if sys.platform == "darwin" else 1024
            session["peak_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
            session["kind"] = "peak RSS of the training process (getrusage ru_maxrss)"
        write_json_atomic(self._timing_file, self._timing_record())

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        self.print_to_log_file(
            "budgeted training: nnU-Net's final validation skipped; the harness predicts the "
            "held-out cases with nnUNetv2_predict",
            also_print_to_console=True,
        )


# ---------------------------------------------------------------------------------------- budgeted classes
def budgeted_name(trainer: str, budget: Budget | str) -> str:
    return f"{trainer}{SUFFIX}{budget if isinstance(budget, str) else budget.name}"


def budgeted_trainer(base: type, budget: Budget) -> type:
    """``base`` with ``budget`` applied, named ``<base>_bench<budget>``, bound in this module (so that it pickles)."""
    name = budgeted_name(base.__name__, budget)
    existing = globals().get(name)
    if existing is not None:
        if existing.budget != budget:  # names are the only thing nnU-Net's processes see: one budget per name
            raise ValueError(f"{name} exists with another budget ({existing.budget}); give this budget another name")
        return existing
    schedule = ShortSchedule(
        budget.num_epochs,
        budget.num_iterations_per_epoch,
        budget.num_val_iterations_per_epoch,
        max_batch_size=budget.max_batch_size,
    )
    cls = type(
        name,
        (BudgetMixin, base),
        {
            "budget": budget,
            "short_schedule": schedule,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{base.__name__} under the budget {budget.name!r}: {budget.describe()}.",
        },
    )
    globals()[name] = cls
    return cls


def split_budgeted_name(name: str) -> tuple[str, Budget] | None:
    """``(trainer, budget)`` of a budgeted trainer's name ``<trainer>_bench<budget>``; None for any other name."""
    base, suffix, budget = name.rpartition(SUFFIX)
    if not (suffix and base.startswith("nnUNetTrainer") and budget):
        return None
    try:
        return base, parse_budget(budget)
    except UserError:
        return None


def __getattr__(name: str) -> type:
    """``<Trainer>_bench<budget>`` made on first access (see the module's docstring); other names do not exist."""
    split = split_budgeted_name(name)
    if split is not None:
        try:
            return budgeted_trainer(find_trainer_class(split[0]), split[1])
        except UserError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

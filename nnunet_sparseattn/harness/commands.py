"""nnU-Net's own commands run as subprocesses, exactly as a user types them: streamed, logged and timed.

``compare``, the demo, the end-to-end tests and the benchmarks all run nnU-Net through these functions, so they
exercise the commands the README shows. The device and test-time augmentation are arguments; on the CPU the
flags that suit a small machine are added (no augmentation workers, one pre-/post-processing worker).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

from nnunet_sparseattn.discovery import environment_for_nnunet_commands, quiet_warnings_variable
from nnunet_sparseattn.errors import UserError

# nnU-Net imports the modules of this folder (named in nnUNet_extTrainer) to find the budgeted trainers
# (``<Trainer>_bench<budget>``, see ``harness.budgets``)
BUDGET_SHIM = Path(__file__).resolve().parent / "budget_shim"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

# One line of a command's output, with the seconds since the command started.
TimedLine = tuple[float, str]


def with_budget_shim(current: str | None) -> str:
    """``nnUNet_extTrainer`` with the budget shim appended to what is set (never replaced, never twice)."""
    entries = [e for e in (current or "").split(os.pathsep) if e.strip()]
    if BUDGET_SHIM.resolve() not in {Path(e).resolve() for e in entries}:
        entries.append(str(BUDGET_SHIM))
    return os.pathsep.join(entries)


def nnunet_environment(
    raw: str | Path,
    preprocessed: str | Path,
    results: str | Path,
    base: dict[str, str] | None = None,
    budgeted: bool = False,
) -> dict[str, str]:
    """The environment for nnU-Net's commands: its three folders (created if missing), our trainers findable as a
    user's shell finds them (through the startup hook where it is installed: ``nnUNet_extTrainer`` then stays as the
    user had it, usually unset), the budgeted trainers too when ``budgeted``, nnU-Net's worker count suited to the
    machine."""
    env = environment_for_nnunet_commands(os.environ if base is None else base)
    for name, folder in zip(NNUNET_FOLDERS, (raw, preprocessed, results)):
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    if budgeted:
        env["nnUNet_extTrainer"] = with_budget_shim(env.get("nnUNet_extTrainer"))
    env.setdefault("nnUNet_compile", "f")  # a training that should compile asks for it (train(compile=True))
    # nnU-Net's default of 8 worker processes (spawned, each importing torch) costs minutes on a 2-core machine
    env.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 4)))
    env.setdefault("PYTHONUNBUFFERED", "1")  # the output is streamed line by line
    env["PYTHONWARNINGS"] = quiet_warnings_variable(env.get("PYTHONWARNINGS"))  # the demo shows their output
    return env


def work_environment(work: str | Path, budgeted: bool = False) -> dict[str, str]:
    """``nnunet_environment`` with nnU-Net's three folders inside ``work`` (demo, tests, benchmarks)."""
    raw, preprocessed, results = (Path(work) / name for name in NNUNET_FOLDERS)
    return nnunet_environment(raw, preprocessed, results, budgeted=budgeted)


def nnunet_command(name: str) -> str:
    """The path of one of nnU-Net's console scripts, preferring the environment this Python runs in."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not on PATH: install nnU-Net in this environment (pip install nnunetv2)")
    return found


def run_command(
    args: Sequence,
    env: dict[str, str],
    log: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    echo: bool = True,
) -> list[TimedLine]:
    """Run one nnU-Net command. Its output goes to the terminal, or is appended to ``log`` when given; every line
    is passed to ``on_line`` as it arrives. Returns the lines with their arrival times (seconds since the start);
    the last entry, ``<exit>``, is when the process ended. ``echo`` prints the command and its duration."""
    command = [nnunet_command(str(args[0]))] + [str(a) for a in args[1:]]
    shown = shlex.join([str(args[0])] + command[1:])
    if echo:
        print(f"\n$ {shown}", flush=True)
    lines: list[TimedLine] = []
    started = time.monotonic()
    stream = open(log, "a") if log is not None else sys.stdout
    try:
        if log is not None:
            stream.write(f"\n$ {shlex.join(command)}\n")
            stream.flush()
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        assert process.stdout is not None  # stdout=PIPE
        try:
            for line in process.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))
                stream.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            code = process.wait()
        except BaseException:  # interrupted: the command must not outlive us
            process.kill()
            process.wait()
            raise
    finally:
        if log is not None:
            stream.close()
        else:
            stream.flush()
    lines.append((time.monotonic() - started, "<exit>"))
    if code != 0:
        where = f"see {log}" if log is not None else "its output is above"
        raise UserError(f"{args[0]} failed with exit code {code}: {where}")
    if echo:
        print(f"   ({args[0]} took {lines[-1][0]:.0f} s)", flush=True)
    return lines


def check_trainer(name: str, env: dict[str, str]) -> type:
    """Fail early, in one line, when nnU-Net would not find trainer ``name`` with this environment."""
    from nnunet_sparseattn.discovery import require_trainer

    # nnU-Net's lookup reads os.environ itself; without the variable in env, the commands' startup hook sets it as
    # this interpreter's did
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k == "nnUNet_extTrainer"}):
        return require_trainer(name)


# ------------------------------------------------------------------------------------------ nnU-Net's commands
def plan_and_preprocess(
    dataset_id: int | Sequence[int], configuration: str, env: dict[str, str], log: Path | None = None, echo: bool = True
) -> None:
    """Fingerprint, nnU-Net's default planner, preprocessing of ``configuration``: ``nnUNetv2_plan_and_preprocess``,
    for one dataset or several (one process start for all)."""
    ids = [dataset_id] if isinstance(dataset_id, int) else list(dataset_id)
    run_command(
        [
            "nnUNetv2_plan_and_preprocess",
            "-d",
            *ids,
            "-c",
            configuration,
            "-np",
            "2",
            "-npfp",
            "2",
            "--verify_dataset_integrity",
        ],
        env,
        log,
        echo=echo,
    )


def plan_experiment(
    dataset_id: int, planner: str, env: dict[str, str], log: Path | None = None, echo: bool = True
) -> None:
    """Plans from another of nnU-Net's planners (e.g. ``nnUNetPlannerResEncM``); needs the fingerprint."""
    run_command(["nnUNetv2_plan_experiment", "-d", dataset_id, "-pl", planner], env, log, echo=echo)


def preprocess(
    dataset_id: int, plans: str, configuration: str, env: dict[str, str], log: Path | None = None, echo: bool = True
) -> None:
    run_command(
        ["nnUNetv2_preprocess", "-d", dataset_id, "-plans_name", plans, "-c", configuration, "-np", "2"],
        env,
        log,
        echo=echo,
    )


def train(
    dataset_id: int,
    configuration: str,
    fold: int | str,
    trainer: str,
    env: dict[str, str],
    log: Path | None = None,
    plans: str = "nnUNetPlans",
    device: str = "cpu",
    resume: bool = False,
    compile: bool = False,
    extra: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
    echo: bool = True,
) -> list[TimedLine]:
    """``nnUNetv2_train``; ``resume`` continues a killed run from its last checkpoint (``--c``)."""
    env = dict(env, nnUNet_compile="t" if compile else "f")
    if device == "cpu":  # augmentation in the training process: seeded, and cheaper than workers on few cores
        env.setdefault("nnUNet_n_proc_DA", "0")
    return run_command(
        [
            "nnUNetv2_train",
            dataset_id,
            configuration,
            fold,
            "-tr",
            trainer,
            "-p",
            plans,
            "-device",
            device,
            *(["--c"] if resume else []),
            *extra,
        ],
        env,
        log,
        on_line,
        echo,
    )


def predict(
    input_folder: Path,
    output_folder: Path,
    dataset_id: int,
    configuration: str,
    folds: int | str | Sequence[int | str],
    trainer: str,
    env: dict[str, str],
    log: Path | None = None,
    plans: str = "nnUNetPlans",
    device: str = "cpu",
    tta: bool = False,
    extra: Sequence[str] = (),
    on_line: Callable[[str], None] | None = None,
    echo: bool = True,
    sequential: bool = False,
) -> list[TimedLine]:
    """``nnUNetv2_predict`` with the model of one fold, or the ensemble of several; ``tta``: nnU-Net's mirroring.

    On the CPU one preprocessing and one export worker (``-npp 1 -nps 1``): nnU-Net's pipeline, whose per-case lines
    ``prediction_timing`` reads. ``sequential``: nnU-Net's own sequential predictor (``-npp 0 -nps 0``), no worker
    processes at all: for a few small cases, where each spawned worker's start-up (importing torch and nnU-Net,
    seconds) costs more than the overlap gains; it prints no per-case lines."""
    folds = [folds] if isinstance(folds, (int, str)) else list(folds)
    workers = ["-npp", "0", "-nps", "0"] if sequential else ["-npp", "1", "-nps", "1"] if device == "cpu" else []
    return run_command(
        [
            "nnUNetv2_predict",
            "-i",
            input_folder,
            "-o",
            output_folder,
            "-d",
            dataset_id,
            "-c",
            configuration,
            "-f",
            *folds,
            "-tr",
            trainer,
            "-p",
            plans,
            "-device",
            device,
            "--disable_progress_bar",
            *([] if tta else ["--disable_tta"]),
            *workers,
            *extra,
        ],
        env,
        log,
        on_line,
        echo,
    )


def evaluate(
    gt_folder: Path,
    prediction_folder: Path,
    model: Path,
    env: dict[str, str],
    log: Path | None = None,
    echo: bool = True,
) -> dict:
    """``nnUNetv2_evaluate_folder`` with a trained model's dataset.json and plans; returns its summary.json."""
    import json

    run_command(
        [
            "nnUNetv2_evaluate_folder",
            gt_folder,
            prediction_folder,
            "-djfile",
            Path(model) / "dataset.json",
            "-pfile",
            Path(model) / "plans.json",
            "-np",
            "1",
        ],
        env,
        log,
        echo=echo,
    )
    return json.loads((Path(prediction_folder) / "summary.json").read_text())


def prediction_timing(lines: list[TimedLine], cases: int) -> dict[str, float]:
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
        raise UserError(
            f"nnUNetv2_predict's output did not show {cases} predicted cases and their export "
            f"({len(starts)} 'Predicting', {len(ends)} 'done with' lines): has its output format "
            "changed?"
        )
    return {
        "s_per_case": (ends[-1] - starts[0]) / cases,
        "predict_wall_s": round(lines[-1][0], 2),
        "predict_startup_s": round(starts[0], 2),
        "export_tail_s": round(export - ends[-1], 2),
    }

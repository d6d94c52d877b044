"""nnU-Net's own commands, run as subprocesses in the order a user types them: plan, train, predict, evaluate.

Used by ``nnunet-sparseattn demo`` and by the end-to-end tests, so both exercise exactly the commands the README shows.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Sequence
from pathlib import Path
from unittest import mock

from nnunet_sparseattn.discovery import environment_for_nnunet_commands
from nnunet_sparseattn.errors import UserError


def nnunet_environment(work: str | Path) -> dict[str, str]:
    """The environment for nnU-Net's commands: its three folders under ``work``, our trainers (through the startup
    hook where it is installed: ``nnUNet_extTrainer`` then stays as the user had it, usually unset), no compile."""
    work = Path(work).resolve()
    env = environment_for_nnunet_commands()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(work / name)
    env.setdefault("nnUNet_compile", "f")
    # nnU-Net's default of 8 worker processes (spawned, each importing torch) costs minutes on a 2-core machine
    env.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 4)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def nnunet_command(name: str) -> str:
    """The path of one of nnU-Net's console scripts, preferring the environment this Python runs in."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not on PATH: install nnU-Net in this environment (pip install nnunetv2)")
    return found


def run_step(args: list[str], env: dict[str, str], log: Path | None = None) -> None:
    """Run one nnU-Net command, echoing it; output goes to the terminal, or to ``log`` when given."""
    command = [nnunet_command(args[0])] + [str(a) for a in args[1:]]
    print(f"\n$ {shlex.join([args[0]] + command[1:])}", flush=True)
    started = time.monotonic()
    if log is None:
        result = subprocess.run(command, env=env)
    else:
        with open(log, "a") as stream:
            stream.write(f"\n$ {shlex.join(command)}\n")
            stream.flush()
            result = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        where = f"see {log}" if log is not None else "its output is above"
        raise UserError(f"{args[0]} failed with exit code {result.returncode}: {where}")
    print(f"   ({args[0]} took {time.monotonic() - started:.0f} s)", flush=True)


def check_trainer(name: str, env: dict[str, str]) -> None:
    """Fail early, in one line, when nnU-Net would not find trainer ``name`` with this environment."""
    from nnunet_sparseattn.discovery import require_trainer

    # nnU-Net's lookup reads os.environ itself; without the variable in env, the commands' startup hook sets it as
    # this interpreter's did
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k == "nnUNet_extTrainer"}):
        require_trainer(name)


def dataset_folder(raw_root: Path, dataset_id: int) -> Path | None:
    matches = sorted(Path(raw_root).glob(f"Dataset{dataset_id:03d}_*"))
    return matches[0] if matches else None


def check_msd_folder(folder: str | Path) -> tuple[Path, int]:
    """Check that ``folder`` is a Medical Segmentation Decathlon task; return it and its task id."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"MSD folder {folder} does not exist: pass the path of an unpacked task, "
                        "e.g. .../Task04_Hippocampus")
    match = re.fullmatch(r"Task(\d+)_([A-Za-z0-9]+)", folder.resolve().name)
    missing = [p for p in ("dataset.json", "imagesTr", "labelsTr", "imagesTs") if not (folder / p).exists()]
    if match is None or missing:
        why = f"it lacks {', '.join(missing)}" if missing else "its name is not TaskNN_Name"
        raise UserError(f"{folder} is not an MSD task folder ({why}): pass an unpacked Decathlon task such as "
                        "Task04_Hippocampus with dataset.json, imagesTr, labelsTr and imagesTs")
    return folder.resolve(), int(match.group(1))


def convert_msd(folder: Path, env: dict[str, str]) -> int:
    """Convert an MSD task with nnU-Net's own converter (once); return the nnU-Net dataset id."""
    folder, task_id = check_msd_folder(folder)
    if dataset_folder(Path(env["nnUNet_raw"]), task_id) is None:
        run_step(["nnUNetv2_convert_MSD_dataset", "-i", folder, "-np", "2"], env)
    return task_id


def keep_training_cases(dataset: Path, keep: int) -> None:
    """Reduce a raw dataset to its first ``keep`` training cases (quick runs on real data)."""
    labels = sorted((dataset / "labelsTr").iterdir())
    for label in labels[keep:]:
        case = label.name.split(".")[0]
        label.unlink()
        for image in (dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*"):
            image.unlink()
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["numTraining"] = min(keep, len(labels))
    (dataset / "dataset.json").write_text(json.dumps(meta, indent=2))


def plan_and_preprocess(dataset_id: int | Sequence[int], configuration: str, env: dict[str, str],
                        log: Path | None = None) -> None:
    """One ``nnUNetv2_plan_and_preprocess`` for one dataset or several (one process start for all)."""
    ids = [dataset_id] if isinstance(dataset_id, int) else list(dataset_id)
    run_step(["nnUNetv2_plan_and_preprocess", "-d", *ids, "-c", configuration, "-np", "2", "-npfp", "2",
              "--verify_dataset_integrity"], env, log)


def train(dataset_id: int, configuration: str, fold: int | str, trainer: str, env: dict[str, str],
          log: Path | None = None, plans: str = "nnUNetPlans", extra: Sequence[str] = ()) -> None:
    # nnU-Net's data-augmentation workers only cost memory and start-up on 2 CPU cores
    env = dict(env, nnUNet_n_proc_DA=env.get("nnUNet_n_proc_DA", "0"))
    run_step(["nnUNetv2_train", dataset_id, configuration, fold, "-tr", trainer, "-p", plans, "-device", "cpu",
              *extra], env, log)


def predict(input_folder: Path, output_folder: Path, dataset_id: int, configuration: str, fold: int | str,
            trainer: str, env: dict[str, str], log: Path | None = None, plans: str = "nnUNetPlans",
            extra: Sequence[str] = ()) -> None:
    run_step(["nnUNetv2_predict", "-i", input_folder, "-o", output_folder, "-d", dataset_id, "-c", configuration,
              "-f", fold, "-tr", trainer, "-p", plans, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
              "--disable_progress_bar", *extra], env, log)


def model_folder(env: dict[str, str], dataset_id: int, trainer: str, configuration: str,
                 plans: str = "nnUNetPlans") -> Path:
    """Where ``nnUNetv2_train`` wrote a model: ``nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION``."""
    return next(Path(env["nnUNet_results"]).glob(f"Dataset{dataset_id:03d}_*")) / \
        f"{trainer}__{plans}__{configuration}"


def evaluate(gt_folder: Path, prediction_folder: Path, dataset_id: int, trainer: str, configuration: str,
             env: dict[str, str], log: Path | None = None, plans: str = "nnUNetPlans") -> dict:
    """``nnUNetv2_evaluate_folder`` with the trained model's dataset.json and plans; returns its summary.json."""
    model = model_folder(env, dataset_id, trainer, configuration, plans)
    run_step(["nnUNetv2_evaluate_folder", gt_folder, prediction_folder, "-djfile", model / "dataset.json",
              "-pfile", model / "plans.json", "-np", "1"], env, log)
    return json.loads((Path(prediction_folder) / "summary.json").read_text())


def validation_cases(dataset_id: int, fold: int, env: dict[str, str]) -> list[str]:
    """The cases nnU-Net held out of training fold ``fold`` (its splits_final.json)."""
    preprocessed = next(Path(env["nnUNet_preprocessed"]).glob(f"Dataset{dataset_id:03d}_*"))
    return json.loads((preprocessed / "splits_final.json").read_text())[fold]["val"]

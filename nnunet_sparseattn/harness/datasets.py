"""nnU-Net's folders: a dataset by id, a trained model's folder, the held-out cases and their copies.

nnU-Net names a dataset ``DatasetXXX_NAME`` in each of its three folders and a model
``nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION``; these functions are the one place that spells
those layouts out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterable, NamedTuple

from nnunet_sparseattn.errors import UserError, reading


def dataset_folder(root: str | Path, dataset_id: int) -> Path | None:
    """``root/DatasetXXX_*`` for ``dataset_id``, or None where there is none."""
    matches = sorted(Path(root).glob(f"Dataset{int(dataset_id):03d}_*"))
    return matches[0] if matches else None


def parse_dataset(dataset: int | str) -> int:
    """A dataset id given as ``4``, ``004`` or ``Dataset004_Hippocampus``."""
    text = str(dataset).strip()
    match = re.fullmatch(r"(?:Dataset)?(\d+)(?:_.*)?", text)
    if match is None:
        raise UserError(f"dataset {dataset!r} is neither an id (4) nor a name (Dataset004_Hippocampus)")
    return int(match.group(1))


def require_dataset(root: str | Path, dataset_id: int, variable: str, fix: str = "") -> Path:
    """``dataset_folder``, refused in one line where the dataset is not in ``root`` (nnU-Net's ``variable``); ``fix``
    ends that line with what to do."""
    found = dataset_folder(root, dataset_id)
    if found is None:
        present = sorted(p.name for p in Path(root).glob("Dataset[0-9][0-9][0-9]_*"))
        have = f"it holds {', '.join(present)}" if present else "it holds no dataset"
        raise UserError(
            f"no Dataset{int(dataset_id):03d}_* in {variable} ({root}): {have}" + (f"; {fix}" if fix else "")
        )
    return found


def nnunet_folder(variable: str, given: str | Path | None = None, why: str = "") -> Path:
    """One of nnU-Net's three folders: ``given``, else the environment variable ``variable`` (``nnUNet_raw``,
    ``nnUNet_preprocessed``, ``nnUNet_results``); refused in one line where it is not set or does not exist."""
    value = given or os.environ.get(variable)
    if not value or not Path(value).is_dir():
        state = "not set" if not value else f"{value}, which does not exist"
        raise UserError(f"{variable} is {state}: export {variable}=/path/to/{variable}" + (f" ({why})" if why else ""))
    return Path(value).resolve()


def plans_file(preprocessed_root: str | Path, dataset_id: int, plans: str) -> Path:
    """``nnUNet_preprocessed/DatasetXXX_NAME/<plans>.json``, refused in one line where the dataset is not planned or
    has no such plans."""
    plan_first = f"nnUNetv2_plan_and_preprocess -d {int(dataset_id)}"
    folder = require_dataset(preprocessed_root, dataset_id, "nnUNet_preprocessed", f"plan it first: {plan_first}")
    path = folder / f"{plans}.json"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: plan the dataset first ({plan_first}), or name existing plans with --plans"
        )
    return path


def read_json(path: str | Path) -> dict:
    with reading(path, "JSON file"):
        return json.loads(Path(path).read_text())


def read_plans(path: str | Path, configuration: str | None = None) -> dict:
    """A plans file (``nnUNet_preprocessed/DatasetXXX_NAME/<plans>.json``); with ``configuration``, refused in one
    line where the plans lack it."""
    path = Path(path)
    plans = read_json(path)
    if configuration is not None and configuration not in plans["configurations"]:
        raise UserError(
            f"the plans {path.stem} of {path.parent.name} have no configuration {configuration}: choose one of "
            f"{', '.join(plans['configurations'])}"
        )
    return plans


def model_folder(
    env: dict[str, str], dataset_id: int, trainer: str, configuration: str, plans: str = "nnUNetPlans"
) -> Path:
    """Where ``nnUNetv2_train`` writes a model: ``nnUNet_results/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION``
    (the dataset's name as nnU-Net's preprocessed folder spells it)."""
    name = require_dataset(env["nnUNet_preprocessed"], dataset_id, "nnUNet_preprocessed").name
    return Path(env["nnUNet_results"]) / name / f"{trainer}__{plans}__{configuration}"


def validation_cases(preprocessed: Path, fold: int) -> list[str]:
    """The cases nnU-Net held out of training fold ``fold`` (its ``splits_final.json``, written by the first
    training of the dataset), in name order."""
    splits = preprocessed / "splits_final.json"
    if not splits.is_file():
        raise UserError(f"{splits} does not exist yet: nnUNetv2_train writes it when it first trains the dataset")
    return sorted(json.loads(splits.read_text())[fold]["val"])


def case_images(folder: Path, case: str, file_ending: str) -> list[Path]:
    """The channel files ``CASE_XXXX<file_ending>`` of one case."""
    return sorted(folder.glob(f"{case}_[0-9][0-9][0-9][0-9]{file_ending}"))


class HeldOut(NamedTuple):
    """Where the labelled cases to predict come from: ``test`` (imagesTs with labelsTs) or ``validation``."""

    kind: str
    images: Path
    labels: Path


def heldout_source(raw_dataset: Path) -> HeldOut:
    """``imagesTs``/``labelsTs`` when the dataset has test labels, else the training cases (whose fold-wise
    validation cases are then predicted)."""
    if (raw_dataset / "labelsTs").is_dir() and any((raw_dataset / "labelsTs").iterdir()):
        return HeldOut("test", raw_dataset / "imagesTs", raw_dataset / "labelsTs")
    return HeldOut("validation", raw_dataset / "imagesTr", raw_dataset / "labelsTr")


def labelled_cases(labels: Path, file_ending: str) -> list[str]:
    return sorted(p.name[: -len(file_ending)] for p in labels.iterdir() if p.name.endswith(file_ending))


def missing_preprocessed_cases(folder: Path, cases: Iterable[str]) -> list[str]:
    """The ``cases`` nnU-Net's preprocessing has not finished in ``folder``. It writes each case's arrays, then its
    ``.pkl`` (every dataset format of nnU-Net 2.8): a preprocessing stopped part-way leaves cases without one, and
    nnUNetv2_train fails only when it draws such a case, minutes or hours later."""
    written = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    return [case for case in cases if f"{case}.pkl" not in written]


def copy_cases(cases: Iterable[str], source: HeldOut, images: Path, labels: Path, file_ending: str) -> list[str]:
    """Copy the images (every channel) and labels of ``cases`` into ``images`` and ``labels`` (made if missing); a
    case without images or label is refused in one line. Returns the cases."""
    cases = list(cases)
    for folder in (images, labels):
        folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        channels = case_images(source.images, case, file_ending)
        label = source.labels / f"{case}{file_ending}"
        if not channels or not label.is_file():
            raise UserError(f"case {case} lacks its images in {source.images} or its label {label}")
        for image in channels:
            shutil.copy(image, images / image.name)
        shutil.copy(label, labels / label.name)
    return cases


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


def check_msd_folder(folder: str | Path) -> tuple[Path, int]:
    """Check that ``folder`` is a Medical Segmentation Decathlon task; return it and its task id."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"MSD folder {folder} does not exist: pass the path of an unpacked task, e.g. .../Task04_Hippocampus"
        )
    match = re.fullmatch(r"Task(\d+)_([A-Za-z0-9]+)", folder.resolve().name)
    missing = [p for p in ("dataset.json", "imagesTr", "labelsTr", "imagesTs") if not (folder / p).exists()]
    if match is None or missing:
        why = f"it lacks {', '.join(missing)}" if missing else "its name is not TaskNN_Name"
        raise UserError(
            f"{folder} is not an MSD task folder ({why}): pass an unpacked Decathlon task such as "
            "Task04_Hippocampus with dataset.json, imagesTr, labelsTr and imagesTs"
        )
    return folder.resolve(), int(match.group(1))


def convert_msd(folder: Path, env: dict[str, str], log: Path | None = None) -> int:
    """Convert an MSD task with nnU-Net's own converter (once); return the nnU-Net dataset id."""
    from nnunet_sparseattn.harness.commands import run_command

    folder, task_id = check_msd_folder(folder)
    if dataset_folder(Path(env["nnUNet_raw"]), task_id) is None:
        run_command(["nnUNetv2_convert_MSD_dataset", "-i", folder, "-np", "2"], env, log)
    return task_id


def downsize_2d_pairs(
    images: Path, masks: Path, target: Path, cases: int, size: int, mask_suffix: str = "_segmentation"
) -> Path:
    """The first ``cases`` images (``NAME.jpg``/``.png``) and their masks (``NAME<mask_suffix>.png``) resized to
    ``size`` x ``size`` (images bilinear, masks nearest) into ``target/images`` and ``target/masks``, the layout
    ``convert_2d`` reads: a 2D dataset small enough for CPU runs."""
    from PIL import Image

    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "masks").mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:cases]
    for image in sources:
        mask = masks / f"{image.stem}{mask_suffix}.png"
        Image.open(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(
            target / "images" / f"{image.stem}.png"
        )
        Image.open(mask).convert("L").resize((size, size), Image.Resampling.NEAREST).save(target / "masks" / mask.name)
    return target

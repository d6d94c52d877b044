"""``nnunet-sparseattn export``: nnU-Net's own model zip, with our version stamped into the model's ``plans.json``.

The zip is written by nnU-Net's ``export_pretrained_model`` (the same file ``nnUNetv2_export_model_to_zip`` writes, so
``nnUNetv2_install_pretrained_model_from_zip`` installs it), into a temporary file beside the output; the stamp is then
put into the zip's copies of ``plans.json`` (``model_stamp.py``). The user's results folder is only read, and the
output appears complete or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nnunet_sparseattn.errors import UserError, check_output_path
from nnunet_sparseattn.model_stamp import stamp
from nnunet_sparseattn.version import __version__

FINAL_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ExportedModel:
    path: Path
    dataset_name: str
    model_folders: tuple[str, ...]  # TRAINER__PLANS__CONFIGURATION, one per configuration
    folds: tuple[str, ...]
    stamped_plans: int


def parse_folds(folds: Sequence[str | int]) -> tuple[int | str, ...]:
    """nnU-Net's fold names: integers, or ``all``."""
    parsed: list[int | str] = []
    for fold in folds:
        text = str(fold)
        if text == "all":
            parsed.append("all")
        elif text.isdigit():
            parsed.append(int(text))
        else:
            raise UserError(f"fold {text!r} is not a fold: give numbers (-f 0 1 2 3 4) or all")
    return tuple(parsed)


def _check_model(
    dataset_name: str, configuration: str, trainer: str, plans_identifier: str, folds: Sequence[int | str]
) -> str:
    """The model folder of one configuration, refused in one line when nnU-Net's export would fail on it."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    folder = Path(get_output_folder(dataset_name, trainer, plans_identifier, configuration))
    train = f"nnUNetv2_train {dataset_name} {configuration} FOLD -tr {trainer} -p {plans_identifier}"
    if not (folder / "plans.json").is_file():
        raise UserError(f"no trained model in {folder}: train it first ({train})")
    for fold in folds:
        fold_folder = folder / f"fold_{fold}"
        if not (fold_folder / FINAL_CHECKPOINT).is_file():
            raise UserError(
                f"{fold_folder} has no {FINAL_CHECKPOINT} (training not finished): finish it "
                f"({train.replace('FOLD', str(fold))} --c) or leave fold {fold} out of -f"
            )
        for needed in ("progress.png", "validation/summary.json"):  # nnU-Net's export copies both
            if not (fold_folder / needed).is_file():
                raise UserError(
                    f"{fold_folder} has no {needed}, which nnU-Net's export copies: run the fold's "
                    f"validation ({train.replace('FOLD', str(fold))} --val)"
                )
    return folder.name


def _stamp_zip(source: Path, target: Path) -> int:
    """Copy nnU-Net's zip member by member, stamping every ``plans.json``; returns how many were stamped."""
    stamped = 0
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if PurePosixPath(info.filename).name == "plans.json":
                data = json.dumps(stamp(json.loads(data)), indent=4).encode()
                stamped += 1
            zout.writestr(info, data)
    return stamped


def export_model(
    dataset: str | int,
    configurations: Sequence[str],
    trainer: str,
    folds: Sequence[str | int],
    output: str | Path,
    plans_identifier: str = "nnUNetPlans",
) -> ExportedModel:
    """Write nnU-Net's zip of the trained model to ``output``, stamped with the installed nnunet-sparseattn version."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    check_output_path(output, "-o", kind="file")  # before nnU-Net's export builds the zip
    results = os.environ.get("nnUNet_results")
    if not results or not Path(results).is_dir():
        raise UserError(
            "nnUNet_results is not set to an existing folder: export nnUNet_results=/path/to/results "
            "(where nnUNetv2_train wrote the model)"
        )
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise UserError(
            f"no dataset {dataset} in nnUNet_results={results} (nor nnUNet_raw/nnUNet_preprocessed): "
            "give the id or name the model was trained on"
        ) from None
    fold_ids = parse_folds(folds)
    if not fold_ids or not configurations:
        raise UserError("give at least one configuration (-c) and one fold (-f)")
    model_folders = tuple(_check_model(dataset_name, c, trainer, plans_identifier, fold_ids) for c in configurations)
    output = Path(output).expanduser().resolve()
    if not output.parent.is_dir():
        raise UserError(f"the folder of {output} does not exist: mkdir -p {output.parent}")

    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as tmp:
        unstamped, stamped = Path(tmp) / "nnunet.zip", Path(tmp) / "stamped.zip"
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates each file; we print one summary line
            export_pretrained_model(
                dataset_name,
                str(unstamped),
                configurations=tuple(configurations),
                trainer=trainer,
                plans_identifier=plans_identifier,
                folds=fold_ids,
                strict=True,
            )
        count = _stamp_zip(unstamped, stamped)
        os.replace(stamped, output)  # same folder, so atomic: the output is complete or absent
    return ExportedModel(output, dataset_name, model_folders, tuple(map(str, fold_ids)), count)


def describe(model: ExportedModel) -> str:
    return (
        f"{model.path}: {model.dataset_name} {', '.join(model.model_folders)}, folds {' '.join(model.folds)}; "
        f"plans stamped with nnunet-sparseattn {__version__} ({model.stamped_plans} plans.json)"
    )


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``nnunet-sparseattn export``."""
    p = commands.add_parser(
        "export",
        help="nnU-Net's model zip, stamped with our version, for nnUNetv2_install_pretrained_model_from_zip elsewhere",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configurations", nargs="+", required=True, help="configurations, e.g. 3d_fullres")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-o", "--output", required=True, help="the zip file to write")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    print(describe(export_model(args.dataset, args.configurations, args.trainer, args.folds, args.output, args.plans)))
    return 0

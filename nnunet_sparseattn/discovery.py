"""Where nnU-Net looks for our trainers, and one-line errors for the ways that goes wrong."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from nnunet_sparseattn.errors import UserError


def ext_trainer_path() -> Path:
    """The folder to put in ``nnUNet_extTrainer``: it holds only a shim module that imports our trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_is_configured(environ: os._Environ | dict | None = None) -> bool:
    """True when ``nnUNet_extTrainer`` lists our shim folder."""
    value = (os.environ if environ is None else environ).get("nnUNet_extTrainer", "")
    ours = ext_trainer_path()
    return any(entry.strip() and Path(entry.strip()).resolve() == ours for entry in value.split(os.pathsep))


def ext_trainer_fix() -> str:
    return f"export nnUNet_extTrainer={ext_trainer_path()}   (or: export nnUNet_extTrainer=$(nnunet-sparseattn ext-path))"


def require_trainer(name: str) -> type:
    """Find ``name`` the way ``nnUNetv2_train -tr`` does, with a one-line error when it cannot be found."""
    from nnunet_sparseattn import trainers

    if name in trainers.__all__ and not ext_trainer_is_configured():
        raise UserError(f"nnU-Net cannot find {name} because nnUNet_extTrainer does not list our trainers: "
                        f"{ext_trainer_fix()}")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError as error:
        raise UserError(f"no nnU-Net trainer named {name}: ours are {', '.join(trainers.__all__)}") from error

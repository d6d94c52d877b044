"""How nnU-Net finds our trainers (``nnUNet_extTrainer``, normally set by the startup hook), and one-line errors for
the ways that goes wrong."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nnunet_sparseattn_autodiscovery as autodiscovery
from nnunet_sparseattn.errors import UserError

DISTRIBUTION = "nnunet-sparseattn"
_UNSET = object()
# timm (imported by nnU-Net's dynamic_network_architectures) decorates with torch.jit.interface, which torch deprecates
# with a FutureWarning on import: two lines of no concern to our users before every command's output
TORCH_JIT_WARNING = "`torch.jit.interface` is deprecated"


def silence_torch_jit_warning() -> None:
    """Ignore that one warning in this process (our command line calls this; importing never does)."""
    warnings.filterwarnings("ignore", message=re.escape(TORCH_JIT_WARNING), category=FutureWarning)


def quiet_warnings_variable(current: str | None) -> str:
    """``PYTHONWARNINGS`` for the nnU-Net commands we start: the user's filters and that one warning ignored (the
    variable's message field matches the start of a warning's text)."""
    ours = f"ignore:{TORCH_JIT_WARNING}:FutureWarning"
    return ",".join(e for e in (current, ours) if e) if ours not in (current or "") else str(current)


def ext_trainer_path() -> Path:
    """The folder to put in ``nnUNet_extTrainer``: it holds only a shim module that imports our trainers."""
    return Path(autodiscovery.shim_folder()).resolve()


def ext_trainer_is_configured(environ: os._Environ | dict | None = None) -> bool:
    """True when ``nnUNet_extTrainer`` lists our shim folder."""
    environ = os.environ if environ is None else environ
    return autodiscovery.lists_shim(environ.get(autodiscovery.EXT_TRAINER_VARIABLE))


def ext_trainer_fix() -> str:
    return (
        f"export nnUNet_extTrainer={ext_trainer_path()}   (or: export nnUNet_extTrainer=$(nnunet-sparseattn ext-path))"
    )


def environment_for_nnunet_commands(environ: os._Environ | dict | None = None) -> dict[str, str]:
    """A copy of the environment for the nnU-Net commands we start (demo, harness, end-to-end tests), set so they
    find ours as a user's shell makes them find ours.

    Where this interpreter's startup hook added our folder, each command's own interpreter adds it again: the variable
    is passed on without it (unset when nothing else is listed), exactly what a user's shell gives those commands;
    entries set since (the user's own folders) are kept. Where no hook runs (a checkout on PYTHONPATH), our folder is
    added to the variable.
    """
    env = dict(os.environ if environ is None else environ)
    variable = autodiscovery.EXT_TRAINER_VARIABLE
    if autodiscovery.startup_outcome == autodiscovery.ADDED:
        others = [e for e in env.get(variable, "").split(os.pathsep) if e.strip() and not autodiscovery.lists_shim(e)]
        if others:
            env[variable] = os.pathsep.join(others)
        else:
            env.pop(variable, None)
    elif not ext_trainer_is_configured(env):
        env[variable] = autodiscovery.with_shim_folder(env.get(variable))
    return env


def installed_startup_file() -> Path | None:
    """The startup hook's ``.pth`` file as installed with the package (wheel or editable), or None where the installed
    distribution has none (a checkout on PYTHONPATH, an install older than the hook)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == autodiscovery.PTH_NAME:
            path = Path(str(dist.locate_file(file))).resolve()  # typed as a protocol (SimplePath); a path
            return path if path.is_file() else None
    return None


@dataclass(frozen=True)
class Mechanism:
    """How (and whether) nnU-Net finds our trainers in an environment."""

    active: bool  # nnUNet_extTrainer lists our shim folder
    how: str  # one line: what put it there, or why nothing did
    fix: str = ""  # one line: what to do when not active


def describe_mechanism(
    environ: os._Environ | dict | None = None,
    outcome: str | None | object = _UNSET,
    startup_file: Path | None | object = _UNSET,
) -> Mechanism:
    """Which mechanism makes ``nnUNet_extTrainer`` list our trainers. By default: this process's environment, what
    the startup hook did when this interpreter started, and the installed ``.pth`` file."""
    environ = os.environ if environ is None else environ
    outcome = autodiscovery.startup_outcome if outcome is _UNSET else outcome
    startup_file = installed_startup_file() if startup_file is _UNSET else startup_file
    hook = f"the startup hook {startup_file or autodiscovery.PTH_NAME}"
    current = environ.get(autodiscovery.EXT_TRAINER_VARIABLE)
    if ext_trainer_is_configured(environ):
        if outcome == autodiscovery.ADDED:
            return Mechanism(
                True,
                f"{hook} added our trainers to nnUNet_extTrainer (nothing to export; opt out: "
                f"{autodiscovery.OPT_OUT_VARIABLE}=1)",
            )
        if outcome == autodiscovery.ALREADY_LISTED:
            return Mechanism(
                True,
                "nnUNet_extTrainer already listed our trainers when Python started (set by hand, "
                f"or inherited); {hook} kept it as it is",
            )
        if outcome == autodiscovery.OPTED_OUT:
            return Mechanism(
                True,
                f"nnUNet_extTrainer lists our trainers, set by hand (autodiscovery is off: "
                f"{autodiscovery.OPT_OUT_VARIABLE}={environ.get(autodiscovery.OPT_OUT_VARIABLE)})",
            )
        return Mechanism(
            True, "nnUNet_extTrainer lists our trainers, set by hand (no startup hook ran in this interpreter)"
        )
    state = "nnUNet_extTrainer is not set" if not current else f"nnUNet_extTrainer={current} does not list our trainers"
    if outcome == autodiscovery.OPTED_OUT:
        return Mechanism(
            False,
            f"{state} and autodiscovery is off "
            f"({autodiscovery.OPT_OUT_VARIABLE}={environ.get(autodiscovery.OPT_OUT_VARIABLE)})",
            f"{ext_trainer_fix()}, or unset {autodiscovery.OPT_OUT_VARIABLE}",
        )
    if outcome is not None:  # the hook ran, then something took our folder out of the variable
        return Mechanism(False, f"{state} (changed after Python started, where {hook} had added it)", ext_trainer_fix())
    if startup_file is not None:
        return Mechanism(
            False,
            f"{state} and {hook} did not run in this interpreter (started with -S, or not the "
            "environment's own Python?)",
            ext_trainer_fix(),
        )
    return Mechanism(
        False,
        f"{state} and no startup hook is installed for this copy of nnunet-sparseattn (a checkout on PYTHONPATH?)",
        f"pip install it (the hook comes with it), or {ext_trainer_fix()}",
    )


def require_trainer(name: str) -> type:
    """Find ``name`` the way ``nnUNetv2_train -tr`` does, with a one-line error when it cannot be found."""
    from nnunet_sparseattn import trainers

    if name in trainers.__all__:
        mechanism = describe_mechanism()
        if not mechanism.active:
            raise UserError(f"nnU-Net cannot find {name}: {mechanism.how}: {mechanism.fix}")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError as error:
        raise UserError(f"no nnU-Net trainer named {name}: ours are {', '.join(trainers.__all__)}") from error


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``nnunet-sparseattn ext-path``."""
    p = commands.add_parser("ext-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_ext_path)


def _ext_path(args: argparse.Namespace) -> int:
    print(ext_trainer_path())
    return 0

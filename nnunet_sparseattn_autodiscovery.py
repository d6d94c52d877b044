"""The startup hook that lets nnU-Net's commands find nnunet-sparseattn's trainers with nothing exported.

nnU-Net 2.8 finds trainers outside its own package only in the folders listed in ``nnUNet_extTrainer`` (read from
``os.environ`` at each lookup); it has no plugin registry. The installed file ``nnunet_sparseattn_autodiscovery.pth``
(at the root of site-packages, from a wheel or an editable install) runs one line at every interpreter start of that
environment: it imports this module and calls :func:`at_startup`, which appends our shim folder to
``nnUNet_extTrainer`` and keeps whatever the user set there. Child processes inherit the variable.

This runs in EVERY Python process of the environment, so it is a top-level module (importing the package would run
its ``__init__`` too) that imports nothing but ``os`` (already loaded by ``site``) and touches the file system only
when the user set ``nnUNet_extTrainer``. docs/installation.md states its measured cost
(``benchmarks/startup_hook.py``). It lies beside the package in both layouts (site-packages, or the checkout of an
editable install), which is how it finds the shim folder; everything of ours that needs that folder's path gets it
from here.
"""

import os  # the only import, see above (no __future__ either: these annotations are valid at run time on 3.10+)

OPT_OUT_VARIABLE = "nnUNet_sparseattn_no_autodiscovery"
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
# Named to sort after the .pth files of editable installs, which put the checkout on sys.path first.
PTH_NAME = "nnunet_sparseattn_autodiscovery.pth"

# What at_startup() did in this process: None when it did not run (no .pth, or python -S), else one of these.
ADDED, ALREADY_LISTED, OPTED_OUT = "added", "already listed", "opted out"
startup_outcome: str | None = None
value_before_startup: str | None = None  # nnUNet_extTrainer as the user had it (None: unset)


def shim_folder() -> str:
    """The folder for ``nnUNet_extTrainer``: it holds only a shim module that imports our trainers."""
    return os.path.join(os.path.dirname(__file__), "nnunet_sparseattn", "ext_trainers")


def opted_out(environ: os._Environ | dict) -> bool:
    """True when the user switched the hook off (``nnUNet_sparseattn_no_autodiscovery=1``, or true/t/yes)."""
    return environ.get(OPT_OUT_VARIABLE, "").strip().lower() in ("1", "true", "t", "yes")


def lists_shim(value: str | None) -> bool:
    """True when a ``nnUNet_extTrainer`` value names our shim folder (any spelling of the same path)."""
    entries = [entry.strip() for entry in (value or "").split(os.pathsep) if entry.strip()]
    if not entries:
        return False
    ours = os.path.realpath(shim_folder())
    return any(os.path.realpath(entry) == ours for entry in entries)


def with_shim_folder(value: str | None) -> str:
    """A ``nnUNet_extTrainer`` value with our folder appended (the user's folders stay first)."""
    return os.pathsep.join([value, shim_folder()]) if value and value.strip() else shim_folder()


def add_shim_folder(environ: os._Environ | dict) -> str:
    """Append our shim folder to ``environ['nnUNet_extTrainer']`` unless it is listed or the user opted out.

    Returns what happened: ``ADDED``, ``ALREADY_LISTED`` or ``OPTED_OUT``. The user's own folders stay first.
    """
    if opted_out(environ):
        return OPTED_OUT
    current = environ.get(EXT_TRAINER_VARIABLE, "")
    if lists_shim(current):
        return ALREADY_LISTED
    environ[EXT_TRAINER_VARIABLE] = with_shim_folder(current)
    return ADDED


def at_startup() -> None:
    """Called by the installed .pth file at interpreter start; records the outcome for ``doctor``.

    The first call counts: Python 3.11's ``site`` may process a venv's site-packages (and so run the .pth) twice,
    and the second call would find our folder listed by the first.
    """
    global startup_outcome, value_before_startup
    if startup_outcome is None:
        value_before_startup = os.environ.get(EXT_TRAINER_VARIABLE)
        startup_outcome = add_shim_folder(os.environ)

"""The version of nnunet-sparseattn a shared model was exported with, stamped into its ``plans.json``.

nnU-Net's model zip carries no code and no note of what the model needs. ``nnunet-sparseattn export`` writes our
version under a top-level key of our own (nnU-Net reads plans by the keys it knows and ignores this one); our
trainers' ``build_network_architecture`` reads it back and refuses, in one line, a model made by a newer version than
the installed one, instead of failing later on a network that does not match the checkpoint.
"""

from __future__ import annotations

from packaging.version import InvalidVersion, Version

from nnunet_sparseattn.errors import UserError, install_user_error_hook
from nnunet_sparseattn.version import __version__

STAMP_KEY = "nnunet_sparseattn"


class ModelVersionError(UserError):
    """A model that needs another version of nnunet-sparseattn than the installed one."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # raised inside nnUNetv2_predict, which prints tracebacks: make sure this one prints as one line
        install_user_error_hook()


def stamp(plans: dict) -> dict:
    """A copy of ``plans`` stamped with the installed version."""
    return {**plans, STAMP_KEY: {"version": __version__}}


def stamped_version(plans: dict) -> str | None:
    """The version a model's plans were stamped with, or None (not exported by us, or trained here)."""
    entry = plans.get(STAMP_KEY)
    return entry.get("version") if isinstance(entry, dict) else None


def check_installed_version(plans: dict, installed: str = __version__) -> None:
    """Refuse, in one line, plans stamped by a newer nnunet-sparseattn than ``installed``."""
    needed = stamped_version(plans)
    if needed is None:
        return
    try:
        newer = Version(str(needed)) > Version(installed)
    except InvalidVersion:
        raise ModelVersionError(
            f"the model's plans.json names nnunet-sparseattn version {needed!r}, which is not a "
            f"version number: export the model again with nnunet-sparseattn export"
        ) from None
    if newer:
        raise ModelVersionError(
            f"this model needs nnunet-sparseattn >= {needed} (installed: {installed}): pip install -U nnunet-sparseattn"
        )

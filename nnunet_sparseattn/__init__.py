"""nnunet-sparseattn: sparse-attention segmentation networks and the narrow-band loss for nnU-Net v2.

Trainers are importable from here (``from nnunet_sparseattn import nnUNetTrainerNB``). They are loaded lazily, so
that the command-line tool (``nnunet-sparseattn ext-path``) answers without importing torch and nnU-Net.
"""

from __future__ import annotations

from nnunet_sparseattn.version import __version__ as __version__


def __getattr__(name: str):
    if name.startswith("nnUNetTrainer"):
        from nnunet_sparseattn import trainers

        try:
            return getattr(trainers, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'nnunet_sparseattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    from nnunet_sparseattn.trainers import __all__ as trainer_names

    return sorted(list(globals()) + list(trainer_names))

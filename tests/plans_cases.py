"""nnU-Net plans configurations the networks are held to (architecture kwargs as a plans file stores them), and the
factories every test builds its plans and ``dataset.json`` with (``plans_for``, ``dataset_json``).

HIPPOCAMPUS_* are what nnUNetv2_plan_and_preprocess 2.8.1 wrote for MSD Task04 on this machine; the others are
harder shapes: five stages on a non-power-of-two patch, seven 2D stages, anisotropic [1, 2, 2] strides.
Shared by every network's tests: import ``PLANS_CASES`` (name -> (arch_kwargs, patch_size)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_COMMON = {
    "conv_bias": True,
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}


def plain_arch(ndim: int, features, kernels, strides, n_conv=2) -> dict[str, Any]:
    """PlainConvUNet's architecture kwargs as nnU-Net's planner writes them (``n_conv`` convolutions per stage)."""
    n = len(features)
    return {
        "n_stages": n,
        "features_per_stage": list(features),
        "conv_op": f"torch.nn.modules.conv.Conv{ndim}d",
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [n_conv] * n,
        "n_conv_per_stage_decoder": [n_conv] * (n - 1),
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        **_COMMON,
    }


HIPPOCAMPUS_3D = (plain_arch(3, [32, 64, 128, 256], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3), (40, 56, 40))
HIPPOCAMPUS_2D = (plain_arch(2, [32, 64, 128, 256], [[3, 3]] * 4, [[1, 1]] + [[2, 2]] * 3), (56, 40))
# nnUNetPlannerResEnc* writes ResidualEncoderUNet kwargs: n_blocks_per_stage instead of n_conv_per_stage.
_resenc = plain_arch(3, [32, 64, 128, 256], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)
_resenc["n_blocks_per_stage"] = [1, 3, 4, 6]
_resenc["n_conv_per_stage_decoder"] = [1, 1, 1]
del _resenc["n_conv_per_stage"]
HIPPOCAMPUS_RESENC_3D = (_resenc, (40, 56, 40))
# 40 is not divisible by 16: like nnU-Net's planner, the fifth stage stops halving the odd axis (5x6x6 -> 5x3x3)
FIVE_STAGE_3D = (
    plain_arch(3, [32, 64, 128, 256, 320], [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 3 + [[1, 2, 2]]),
    (40, 48, 48),
)
SEVEN_STAGE_2D = (
    plain_arch(2, [32, 64, 128, 256, 512, 512, 512], [[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6),
    (256, 192),
)
ANISOTROPIC_3D = (
    plain_arch(
        3,
        [32, 64, 128, 256, 320, 320],
        [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
        [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
    ),
    (20, 192, 160),
)
# A typical large-organ 3d_fullres plan: six stages on 128^3 (for parameter and FLOP figures, not unit tests).
SIX_STAGE_128 = (
    plain_arch(3, [32, 64, 128, 256, 320, 320], [[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5),
    (128,) * 3,
)

PLANS_CASES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "hippocampus_3d": HIPPOCAMPUS_3D,
    "hippocampus_2d": HIPPOCAMPUS_2D,
    "hippocampus_resenc_3d": HIPPOCAMPUS_RESENC_3D,
    "five_stage_3d": FIVE_STAGE_3D,
    "seven_stage_2d": SEVEN_STAGE_2D,
    "anisotropic_3d": ANISOTROPIC_3D,
}

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def plans_for(
    case: tuple[dict[str, Any], tuple[int, ...]], configuration: str | None = None, batch_size: int | None = None
) -> dict[str, Any]:
    """A minimal nnU-Net plans dict holding ``case`` as one configuration (what variant plans are made from); with
    ``batch_size``, the configuration's batch (what a trainer built from it needs)."""
    arch_kwargs, patch = case
    configuration = configuration or f"{len(patch)}d" + ("_fullres" if len(patch) == 3 else "")
    network = RESENC_UNET if "n_blocks_per_stage" in arch_kwargs else PLAIN_UNET
    return {
        "dataset_name": "Dataset999_Contracts",
        "plans_name": "nnUNetPlans",
        "configurations": {
            configuration: {
                "data_identifier": f"nnUNetPlans_{configuration}",
                "patch_size": list(patch),
                "spacing": [1.0] * len(patch),
                "batch_dice": False,
                **({"batch_size": batch_size} if batch_size is not None else {}),
                "architecture": {
                    "network_class_name": network,
                    "arch_kwargs": arch_kwargs,
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            }
        },
    }


def dataset_json(
    labels: Sequence[str] | dict[str, Any] = ("a", "b"),
    channels: Sequence[str] = ("MRI",),
    file_ending: str = ".nii.gz",
    num_training: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A ``dataset.json`` as nnU-Net's raw data carries it: ``labels`` names the foreground classes 1, 2, ... after
    background 0 (or is the labels dict itself), ``channels`` the input channels 0, 1, ...; ``extra`` keys added."""
    if not isinstance(labels, dict):
        labels = {"background": 0, **{name: i for i, name in enumerate(labels, start=1)}}
    return {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": dict(labels),
        "numTraining": num_training,
        "file_ending": file_ending,
        **extra,
    }

"""``nnunet-sparseattn doctor``: check what nnU-Net needs to train with our trainers, and say how to fix it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from nnunet_sparseattn.discovery import describe_mechanism, ext_trainer_is_configured, ext_trainer_path

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass
class Finding:
    status: str  # "ok", "warn" (works, but worth knowing) or "fix" (a problem)
    message: str


def check_path_variables(environ: dict) -> list[Finding]:
    findings = []
    for name in NNUNET_PATH_VARIABLES:
        value = environ.get(name)
        if not value:
            findings.append(Finding("fix", f"{name} is not set: export {name}=/path/to/{name} (a folder of yours)"))
        elif not Path(value).is_dir():
            findings.append(Finding("fix", f"{name}={value} does not exist: mkdir -p {value}"))
        else:
            findings.append(Finding("ok", f"{name}={value}"))
    return findings


def check_ext_trainer(environ: dict) -> list[Finding]:
    """Which mechanism lets nnU-Net find our trainers (the startup hook and its installed file, the variable set by
    hand, or the opt-out), or what to do when none does."""
    if not ext_trainer_path().is_dir():
        return [Finding("fix", f"the shim folder {ext_trainer_path()} is missing: reinstall nnunet-sparseattn")]
    mechanism = describe_mechanism(environ)
    if not mechanism.active:
        return [Finding("fix", f"{mechanism.how}: {mechanism.fix}")]
    return [Finding("ok", f"trainers: {mechanism.how}")]


def check_trainer_lookup() -> list[Finding]:
    """Ask nnU-Net itself to find our trainer, as ``nnUNetv2_train -tr`` will."""
    from nnunet_sparseattn.discovery import require_trainer
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.trainers import DEMO_TRAINER

    try:
        found = require_trainer(DEMO_TRAINER.__name__)
    except UserError as error:
        return [Finding("fix", str(error))]
    except Exception as error:  # an import inside nnU-Net's search broke: say which
        return [
            Finding(
                "fix",
                f"nnU-Net's trainer lookup failed ({type(error).__name__}: {error}); see the torch/torchvision line",
            )
        ]
    if found is not DEMO_TRAINER:
        return [
            Finding(
                "fix",
                f"nnU-Net found another class named {DEMO_TRAINER.__name__} "
                f"({found.__module__}): remove it from nnUNet_extTrainer's other folders",
            )
        ]
    return [Finding("ok", f"nnU-Net finds {DEMO_TRAINER.__name__} in nnunet_sparseattn")]


def _local_tag(version: str) -> str:
    return version.split("+", 1)[1] if "+" in version else ""


def check_torch_torchvision() -> list[Finding]:
    import torch

    try:
        import torchvision

        _ = torch.ops.torchvision.nms  # the operator a mismatched pair lacks (the look-up raises)
    except Exception as error:
        return [
            Finding(
                "fix",
                f"torchvision does not load with torch {torch.__version__} ({error}): "
                "install a matching pair, e.g. pip install --force-reinstall torch torchvision",
            )
        ]
    if _local_tag(torch.__version__) != _local_tag(torchvision.__version__):
        return [
            Finding(
                "fix",
                f"torch {torch.__version__} and torchvision {torchvision.__version__} are built for "
                "different devices: install both from the same index",
            )
        ]
    return [Finding("ok", f"torch {torch.__version__} and torchvision {torchvision.__version__} match")]


def check_gpu() -> list[Finding]:
    import torch

    if torch.cuda.is_available():
        return [Finding("ok", f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})")]
    if torch.version.cuda is None:
        return [
            Finding(
                "warn",
                "this torch has no CUDA support: training runs only with -device cpu (slow); "
                "install a CUDA build of torch to train on a GPU",
            )
        ]
    return [
        Finding(
            "warn", "no CUDA GPU visible: train with -device cpu (slow), or check the driver and CUDA_VISIBLE_DEVICES"
        )
    ]


def run_doctor(environ: dict | None = None) -> list[Finding]:
    environ = dict(os.environ if environ is None else environ)
    findings = check_path_variables(environ) + check_ext_trainer(environ) + check_torch_torchvision()
    if findings[-1].status == "ok" and ext_trainer_is_configured(environ):
        findings += check_trainer_lookup()
    return findings + check_gpu()


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``nnunet-sparseattn doctor``."""
    p = commands.add_parser("doctor", help="check nnU-Net's variables, trainer discovery, torch/torchvision, GPU")
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    findings = run_doctor()
    for finding in findings:
        print(f"{finding.status:<4} {finding.message}")
    problems = sum(f.status == "fix" for f in findings)
    print(f"\n{problems} problem(s) to fix" if problems else "\nready to train with nnunet-sparseattn")
    return 1 if problems else 0

"""The ``nnunet-sparseattn`` command: ext-path, doctor, make-demo-dataset, demo."""
from __future__ import annotations

import argparse
import os
import sys

from nnunet_sparseattn.discovery import UserError, ext_trainer_path


def _ext_path(args: argparse.Namespace) -> int:
    print(ext_trainer_path())
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.doctor import run_doctor

    findings = run_doctor()
    for finding in findings:
        print(f"{finding.status:<4} {finding.message}")
    problems = sum(f.status == "fix" for f in findings)
    print(f"\n{problems} problem(s) to fix" if problems else "\nready to train with nnunet-sparseattn")
    return 1 if problems else 0


def _make_demo_dataset(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.demo.dataset import make_demo_dataset

    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw, or pass --raw FOLDER")
    folder = make_demo_dataset(raw, args.id, num_training=args.num_training, num_test=args.num_test, seed=args.seed)
    print(folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.demo.run import run_demo

    run_demo(args.work, msd=args.msd, trainer=args.trainer, num_heldout=args.num_heldout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from nnunet_sparseattn.demo.dataset import DEMO_DATASET_ID

    parser = argparse.ArgumentParser(prog="nnunet-sparseattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("ext-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_ext_path)

    p = commands.add_parser("doctor", help="check nnU-Net's variables, trainer discovery, torch/torchvision, GPU")
    p.set_defaults(func=_doctor)

    p = commands.add_parser("make-demo-dataset", help="write the synthetic 3D demo dataset into nnUNet_raw")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--id", type=int, default=DEMO_DATASET_ID, help=f"dataset id (default {DEMO_DATASET_ID})")
    p.add_argument("--num-training", type=int, default=24)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_demo_dataset)

    p = commands.add_parser("demo", help="plan, train, predict and evaluate on the CPU in minutes")
    p.add_argument("--work", default="demo_work", help="folder for nnU-Net's data and results (default demo_work)")
    p.add_argument("--msd", help="an unpacked Medical Segmentation Decathlon task instead of the synthetic dataset")
    p.add_argument("--trainer", help="trainer to use (default: our best trainer's _demo variant)")
    p.add_argument("--num-heldout", type=int, default=6, help="held-out cases to predict and evaluate")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"nnunet-sparseattn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

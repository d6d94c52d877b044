"""``nnunet-sparseattn make-demo-dataset`` and ``nnunet-sparseattn demo``: their arguments and what they run."""

from __future__ import annotations

import argparse
import os

from nnunet_sparseattn.demo import DEMO_DATASET_ID
from nnunet_sparseattn.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("make-demo-dataset", help="write the synthetic 3D demo dataset into nnUNet_raw")
    p.add_argument("--raw", help="nnUNet_raw folder (default: $nnUNet_raw)")
    p.add_argument("--id", type=int, default=DEMO_DATASET_ID, help=f"dataset id (default {DEMO_DATASET_ID})")
    p.add_argument("--num-training", type=int, default=24)
    p.add_argument("--num-test", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_demo_dataset)

    p = commands.add_parser(
        "demo", help="plan, train, predict, evaluate and explain our flagship trainer on the CPU in minutes"
    )
    p.add_argument("--work", default="demo_work", help="folder for nnU-Net's data and results (default demo_work)")
    p.add_argument("--msd", help="an unpacked Medical Segmentation Decathlon task instead of the synthetic dataset")
    p.add_argument("--trainer", help="trainer to use (default: our best trainer's _demo variant)")
    p.add_argument("--num-heldout", type=int, default=6, help="held-out cases to predict and evaluate")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also train stock nnU-Net (nnUNetTrainer_demo, the same schedule) and show both side by side",
    )
    p.set_defaults(func=_demo)


def _make_demo_dataset(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.demo.dataset import make_demo_dataset

    raw = args.raw or os.environ.get("nnUNet_raw")
    if not raw:
        raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw, or pass --raw FOLDER")
    if args.num_training < 5:  # the function writes fewer (tests do); nnUNetv2_train would fail on them
        raise UserError(
            f"--num-training {args.num_training}: nnU-Net's 5-fold cross-validation needs at least 5 training cases"
        )
    folder = make_demo_dataset(raw, args.id, num_training=args.num_training, num_test=args.num_test, seed=args.seed)
    print(folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.num_heldout < 1:  # here too: importing the demo takes torch and nnU-Net, seconds before a refusal
        raise UserError(f"--num-heldout {args.num_heldout}: predict and evaluate at least 1 held-out case")
    from nnunet_sparseattn.demo.run import run_demo

    run_demo(args.work, msd=args.msd, trainer=args.trainer, num_heldout=args.num_heldout, compare=args.compare)
    return 0

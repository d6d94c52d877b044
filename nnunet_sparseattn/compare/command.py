"""``nnunet-sparseattn compare``: its arguments and the run (:func:`.run.run_compare`) they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_sparseattn.compare.baselines import BASELINES
from nnunet_sparseattn.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "compare",
        help="train, predict and score stock nnU-Net and our trainers on one dataset "
        "under one budget; a table, a plot and paired tests",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name in nnUNet_raw")
    p.add_argument("-c", "--configuration", required=True, help="nnU-Net configuration, e.g. 3d_fullres or 2d")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="folder for models, predictions, logs and reports (run again with the same arguments to resume)",
    )
    p.add_argument(
        "--trainers",
        help="comma-separated trainers: ours, nnU-Net's or any nnU-Net finds (default: "
        "stock nnUNetTrainer and our main trainers, NB, BSA, MDSA and Bilateral)",
    )
    p.add_argument(
        "--baselines",
        default="stock",
        help=f"comma-separated references: {', '.join(BASELINES)} (default stock; resenc-m: nnU-Net's ResEnc M preset)",
    )
    p.add_argument(
        "--budget", help="tiny, cpu, gpu or EPOCHSxITERATIONS, e.g. 20x50 (default: gpu on CUDA, cpu otherwise)"
    )
    p.add_argument("--folds", default="0", help="folds to train: 0, 0,1,... or all (nnU-Net's five; default 0)")
    p.add_argument("--device", help="cpu, cuda or mps (default: cuda when available)")
    p.add_argument(
        "--plans",
        default="nnUNetPlans",
        help="plans identifier of the trainers and the stock baseline (default nnUNetPlans)",
    )
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    if args.trainers is not None and not _names(args.trainers):  # before importing torch: a refusal is instant
        raise UserError(
            f"--trainers {args.trainers!r} names no trainer: give comma-separated trainer names, or leave "
            "--trainers out for stock nnU-Net and our main trainers"
        )
    import torch

    from nnunet_sparseattn.compare.run import CompareRequest, default_trainers, run_compare

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    request = CompareRequest(
        args.dataset,
        args.configuration,
        Path(args.output),
        trainers=_names(args.trainers) if args.trainers is not None else default_trainers(),
        baselines=_names(args.baselines),
        budget=args.budget or ("gpu" if device == "cuda" else "cpu"),
        folds=args.folds,
        device=device,
        plans=args.plans,
        command=args.command_line,
    )
    results = run_compare(request)
    failed = [r.get("label", k) for k, r in results["runs"].items() if r.get("status") == "failed"]
    print(f"\n{Path(args.output) / 'compare.md'}\n")
    print((Path(args.output) / "compare.md").read_text())
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their logs in {Path(args.output) / 'logs'})")
    return 1 if failed else 0


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]

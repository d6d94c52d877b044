"""``nnunet-sparseattn explain``: its arguments and the explanation (:func:`.run.run_explain`) they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "explain",
        help="run nnU-Net's predictor on one image and draw where the attention looks from query points: routed "
        "regions, coarse attention, Swin window weights, FSAM channel weights, refined points",
    )
    p.add_argument("-i", "--input", required=True, help="the image (CASE_0000<ending>; other channels beside it)")
    p.add_argument("-o", "--output", required=True, help="folder for the pictures, maps and explain.json")
    p.add_argument("-m", "--model", help="a trained model folder (instead of -d/-c/-tr/-p)")
    p.add_argument("-d", "--dataset", help="dataset id or name (with -c and -tr: the model in nnUNet_results)")
    p.add_argument("-c", "--configuration", help="configuration, e.g. 3d_fullres or 2d")
    p.add_argument("-tr", "--trainer", help="trainer class the model was trained with")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", "--fold", default="0", help="fold of the model (default 0; 'all' for a model trained on all)")
    p.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint (default checkpoint_final.pth)")
    p.add_argument(
        "--point",
        action="append",
        metavar="Z,Y,X",
        help="a query voxel in the image's own 0-based coordinates (y,x for a 2D image; repeatable; default: the "
        "centroid of each predicted structure and the most uncertain voxel)",
    )
    p.add_argument("--reference", help="the image's reference labels: shown, and routing compared with its foreground")
    p.add_argument("-device", "--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    p.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.explain.run import ExplainRequest, run_explain

    run_explain(
        ExplainRequest(
            image=Path(args.input),
            output=Path(args.output),
            model=args.model,
            dataset=args.dataset,
            configuration=args.configuration,
            trainer=args.trainer,
            plans=args.plans,
            fold=args.fold,
            checkpoint=args.checkpoint,
            points=args.point or (),
            reference=Path(args.reference) if args.reference else None,
            device=args.device,
        )
    )
    print(f"explanation: {Path(args.output) / 'overview.png'} (all files in {args.output})")
    return 0

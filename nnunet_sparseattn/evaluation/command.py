"""``nnunet-sparseattn evaluate``: its arguments and the scoring (:func:`.evaluate.evaluate_folders`) they ask for."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="nnU-Net's Dice/IoU, HD95, NSD and (2D) the polyp papers' metrics, "
        "as a table with one row per prediction folder",
    )
    p.add_argument("reference", help="folder of reference labels, e.g. nnUNet_raw/DatasetXXX_NAME/labelsTs")
    p.add_argument("predictions", nargs="+", help="nnUNetv2_predict output folders (one table row each)")
    p.add_argument(
        "--original-size",
        action="store_true",
        help="bring predictions of a convert-2d --resize dataset back to the original sizes and score "
        "them there (writes PRED_DIR/original_size/)",
    )
    p.add_argument(
        "--nsd-tolerance",
        type=float,
        default=1.0,
        help="NSD tolerance in the data's spacing unit: mm, or pixels for PNG data (default 1)",
    )
    p.add_argument(
        "--dataset-json", help="dataset.json (default: the prediction folder's, else the reference's dataset folder's)"
    )
    p.add_argument(
        "--table", help="Markdown table to write (default: paper_table.md in the prediction folders' common folder)"
    )
    p.add_argument("-np", "--num-processes", type=int, help="processes for nnU-Net's evaluation (default: nnU-Net's)")
    p.add_argument("--chill", action="store_true", help="score only the predicted cases of the reference folder")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.evaluation import PAPER_METRICS_FILE, evaluate_folders

    results, table, path = evaluate_folders(
        Path(args.reference),
        [Path(p) for p in args.predictions],
        dataset_json=args.dataset_json,
        nsd_tolerance=args.nsd_tolerance,
        original_size=args.original_size,
        num_processes=args.num_processes,
        chill=args.chill,
        table=args.table,
    )
    print(table)
    print(f"table: {path}")
    for result in results:
        print(f"per case: {Path(result['predictions']) / PAPER_METRICS_FILE}")
    return 0

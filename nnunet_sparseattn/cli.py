"""nnU-Net's companion for sparse-attention segmentation: check the setup (doctor), write variant plans (plan),
count networks (info), convert 2D datasets (convert-2d), score predictions (evaluate), compare trainers (compare),
explain a prediction (explain), export a model (export) and run the demo (demo)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from nnunet_sparseattn.discovery import ext_trainer_path, silence_torch_jit_warning
from nnunet_sparseattn.errors import UserError, install_user_error_hook


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


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected KEY=VALUE with a JSON value, e.g. --set topk=8")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"--set {key}: {value!r} is not JSON (lists like [4,4,4], null, true, numbers)") from None
    return out


def _plan(args: argparse.Namespace) -> int:
    overrides = _overrides(args.set)  # malformed settings: refused before the (slow) imports below
    from nnunet_sparseattn.harness import datasets
    from nnunet_sparseattn.plans import get_variant, write_variant_plans

    root = datasets.nnunet_folder("nnUNet_preprocessed")
    source = datasets.plans_file(root, datasets.parse_dataset(args.dataset), args.plans)
    datasets.read_json(source)  # a broken plans file: one line naming it, before the variant is built
    path = write_variant_plans(source, args.variant, args.configurations, overrides)
    plans_name = path.stem
    print(path)
    print(f"train it with nnU-Net's stock trainer: nnUNetv2_train {args.dataset} CONFIG FOLD -p {plans_name}")
    print(f"(or with ours on any plans: -tr {get_variant(args.variant).trainer})")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.dataset is not None:
        if args.variant is not None:
            raise UserError(
                "info takes --variant NAME (a paper-scale network) or -d ID -c CONFIGURATION (the "
                "networks for a dataset's plans), not both"
            )
        if args.configuration is None:
            raise UserError(f"info -d {args.dataset} needs -c CONFIGURATION too, e.g. -c 2d or -c 3d_fullres")
        from nnunet_sparseattn.harness.networks import dataset_networks_table

        print(dataset_networks_table(args.dataset, args.configuration, args.plans))
        return 0
    if args.configuration is not None:
        raise UserError(f"-c {args.configuration} goes with -d ID (a dataset's plans): add -d, or drop -c")
    if args.variant is None:
        raise UserError("info needs --variant NAME (mdsa-paper, bilateral-paper) or -d ID -c CONFIGURATION")
    from nnunet_sparseattn.complexity import count_flops, count_parameters
    from nnunet_sparseattn.plans.variants import PAPER_CONFIGURATIONS

    if args.variant not in PAPER_CONFIGURATIONS:
        names = ", ".join(PAPER_CONFIGURATIONS)
        raise UserError(f"info --variant {args.variant!r}: no such paper-scale network; choose one of {names}")
    build, paper = PAPER_CONFIGURATIONS[args.variant].load()
    net = build()
    shape = tuple(paper.get("PAPER_INPUT", ()))
    params, flops = count_parameters(net), count_flops(net, shape)
    print(f"{args.variant}: input {'x'.join(map(str, shape))}")
    print(
        f"  parameters  {params / 1e6:8.2f} M"
        + (f"   (paper: {paper['PAPER_PARAMS'] / 1e6:.2f} M)" if "PAPER_PARAMS" in paper else "")
    )
    print(f"  FLOPs       {flops / 1e9:8.2f} G   (torch.utils.flop_counter: 2 per multiply-add)")
    print(
        f"  MACs        {flops / 2e9:8.2f} G"
        + (
            f'   (paper: {paper["PAPER_FLOPS"] / 1e9:.2f} G "FLOPs", most likely multiply-adds)'
            if "PAPER_FLOPS" in paper
            else ""
        )
    )
    return 0


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


def _convert_2d(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.convert2d import convert_2d, parse_size

    folder = convert_2d(
        Path(args.images),
        Path(args.masks),
        args.dataset,
        name=args.name,
        mask_suffix=args.mask_suffix,
        num_test=args.num_test,
        limit=args.limit,
        overwrite=args.overwrite,
        threshold=args.threshold,
        resize=parse_size(args.resize) if args.resize else None,
        test_list=args.test_list,
        train_list=args.train_list,
    )
    print(folder)
    return 0


def _export(args: argparse.Namespace) -> int:
    from nnunet_sparseattn.export import describe, export_model

    print(describe(export_model(args.dataset, args.configurations, args.trainer, args.folds, args.output, args.plans)))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    from nnunet_sparseattn.demo.dataset import DEMO_DATASET_ID

    parser = argparse.ArgumentParser(prog="nnunet-sparseattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("ext-path", help="print the folder to export as nnUNet_extTrainer")
    p.set_defaults(func=_ext_path)

    p = commands.add_parser("doctor", help="check nnU-Net's variables, trainer discovery, torch/torchvision, GPU")
    p.set_defaults(func=_doctor)

    p = commands.add_parser("plan", help="write nnUNetPlans_<VARIANT>.json: a plans file the stock trainer trains")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (already planned and preprocessed)")
    p.add_argument("--variant", required=True, help="bsa, mdsa or bilateral")
    p.add_argument("--plans", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    p.add_argument("-c", "--configurations", nargs="+", help="configurations to change (default: all)")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="fix a network setting, e.g. topk=8")
    p.set_defaults(func=_plan)

    p = commands.add_parser(
        "info",
        help="parameters, FLOPs (and attention layout) of a paper-scale configuration "
        "or of every network for a dataset's plans",
    )
    p.add_argument("--variant", help="mdsa-paper or bilateral-paper")
    p.add_argument("-d", "--dataset", help="dataset id or name (planned): every network for its plans")
    p.add_argument("-c", "--configuration", help="configuration of the plans, e.g. 3d_fullres or 2d (with -d)")
    p.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.set_defaults(func=_info)

    from nnunet_sparseattn.compare.baselines import BASELINES

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

    p = commands.add_parser("convert-2d", help="a folder of 2D images and masks -> nnU-Net's raw format")
    p.add_argument("images", help="folder of images (png, jpg, ...)")
    p.add_argument("masks", help="folder of masks, paired with the images by name")
    p.add_argument("-d", "--dataset", type=int, required=True, help="dataset id to write (DatasetXXX_NAME)")
    p.add_argument("--name", help="dataset name (default: the images folder's parent's name)")
    p.add_argument("--mask-suffix", help="mask name = image stem + suffix, e.g. _segmentation (default: detected)")
    p.add_argument("--num-test", type=int, default=0, help="cases to hold out into imagesTs/labelsTs")
    p.add_argument("--limit", type=int, help="convert only the first N pairs (by name)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the existing dataset of this id and name (DatasetXXX_NAME; never one of another name)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="binarise masks: foreground where the grey value > T (RGB: the brightest channel); for "
        "masks saved lossily (JPEG)",
    )
    p.add_argument(
        "--resize",
        metavar="HxW",
        help="resize images (bilinear) and masks (nearest), e.g. 256x256; the original sizes are recorded",
    )
    p.add_argument("--test-list", metavar="FILE", help="image names (one a line) to hold out into imagesTs")
    p.add_argument("--train-list", metavar="FILE", help="image names (one a line) to train on")
    p.set_defaults(func=_convert_2d)

    p = commands.add_parser(
        "export",
        help="nnU-Net's model zip, stamped with our version, for nnUNetv2_install_pretrained_model_from_zip elsewhere",
    )
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name")
    p.add_argument("-c", "--configurations", nargs="+", required=True, help="configurations, e.g. 3d_fullres")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="trainer class (default nnUNetTrainer)")
    p.add_argument("-f", "--folds", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-o", "--output", required=True, help="the zip file to write")
    p.set_defaults(func=_export)
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
    return parser


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: every ``finally`` runs, so staged outputs (``.NAME.partial``) are removed
    raise SystemExit(128 + signum)


def _os_error_line(error: OSError) -> str:
    """A file-system failure (permission, disk full, a file where a folder must be) as one line naming the path."""
    where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    fix = {
        errno.EACCES: "choose a path you may write, or fix its permissions",
        errno.EPERM: "choose a path you may write, or fix its permissions",
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder; give a file",
        errno.EEXIST: "it exists already; give a new path",
    }.get(error.errno or 0, "check the path")
    return f"{where}: {error.strerror or error}: {fix}"


def main(argv: list[str] | None = None) -> int:
    install_user_error_hook()  # refusals raised where this function does not catch them (e.g. at exit)
    silence_torch_jit_warning()  # it used to precede doctor's, explain's and compare's output
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["nnunet-sparseattn", *(sys.argv[1:] if argv is None else argv)])
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return args.func(args)
    except UserError as error:
        print(f"nnunet-sparseattn: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:  # no path to name: not a user's file-system mistake, keep the traceback
            raise
        print(f"nnunet-sparseattn: error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

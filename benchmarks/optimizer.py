"""nnU-Net's SGD or AdamW + warm-up for the three attention networks? ``compare`` on ISIC 2017 with both.

Usage (from the project's root; ISIC 2017 is read from ``../shared/data``):

    .venv/bin/python -m benchmarks.optimizer [--budget cpu] [--device cpu] [--update-docs]

It runs ``nnunet-sparseattn compare`` on the accuracy benchmark's ISIC 2017 data and comparison folder
(``benchmarks/accuracy.py``: the same 40 training cases, budget, seed and fold 0; runs that benchmark already made
are kept, not trained again) with each attention network's SGD trainer (nnU-Net's: lr 1e-2, Nesterov momentum
0.99, poly decay) and its ``_AdamW`` trainer (AdamW, linear warm-up over 5 % of the iterations, poly decay), stock
nnU-Net beside them. Per network it writes to ``benchmarks/results/optimizer-<device>-<budget>.json`` and the
optimizer section of BENCHMARKS.md (``--update-docs``): both trainers' Dice, the AdamW - SGD difference per case
with the Wilcoxon test, the loss over the first and last quarter of the iterations, the gradient norms the
optimiser stepped with, s/iter, and whether both saw the same batches; and a verdict: AdamW or SGD is "clearly
better" when its mean Dice is at least 2 points higher and p < 0.05, otherwise "no clear difference".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.accuracy import DATASETS, compare_dataset, work_folder
from benchmarks.common import DATA, RESULTS, add_docs_arguments, check_section, command_line, update_section

MARKERS = ("<!-- optimizer:begin -->", "<!-- optimizer:end -->")
# per network: (its trainer with nnU-Net's SGD, its AdamW trainer); the bilateral network's default is AdamW since
# this benchmark's first run, so its SGD trainer is the _SGD variant
NETWORKS = {
    "BSA": ("nnUNetTrainerBSA", "nnUNetTrainerBSA_AdamW"),
    "MDSA": ("nnUNetTrainerMDSA", "nnUNetTrainerMDSA_AdamW"),
    "Bilateral": ("nnUNetTrainerBilateral_SGD", "nnUNetTrainerBilateral_AdamW"),
}
CLEAR_POINTS, CLEAR_P = 2.0, 0.05


def pair(results: dict[str, Any], sgd: str, adamw: str) -> dict[str, Any]:
    """SGD against AdamW for one network, from compare's records of both runs."""
    from nnunet_sparseattn.compare.results import paired_test

    runs = {name: results["runs"].get(f"{name}__nnUNetPlans", {}) for name in (sgd, adamw)}
    if any(r.get("status") != "done" for r in runs.values()):
        return {"status": "incomplete", **{n: r.get("status", "absent") for n, r in runs.items()}}
    fields = (
        "mean_dice",
        "dice",
        "s_per_iter",
        "loss_first_quarter",
        "loss_last_quarter",
        "grad_norm_median",
        "grad_norm_max",
        "iterations_clipped_at_12",
    )
    out: dict[str, Any] = {"status": "done"}
    for label, name in (("sgd", sgd), ("adamw", adamw)):
        fold = runs[name]["folds"]["0"]
        out[label] = {
            "trainer": name,
            **{k: runs[name].get(k, fold.get(k)) for k in fields},
            "curve": fold.get("curve"),
        }
    test = paired_test(
        {c: v["mean_dice"] for c, v in runs[adamw]["per_case"].items()},
        {c: v["mean_dice"] for c, v in runs[sgd]["per_case"].items()},
    )
    out["adamw_minus_sgd"] = test
    out["same_batches"] = runs[sgd]["folds"]["0"].get("batches_digest") == runs[adamw]["folds"]["0"].get(
        "batches_digest"
    )
    points = 100 * test["mean_difference"]
    clear = abs(points) >= CLEAR_POINTS and test["p_value"] is not None and test["p_value"] < CLEAR_P
    out["verdict"] = f"{'AdamW' if points > 0 else 'SGD'} clearly better" if clear else "no clear difference"
    return out


def render(record: dict[str, Any]) -> str:
    from nnunet_sparseattn.compare.report import num, p_value

    lines = [
        "<!-- written by benchmarks/optimizer.py from benchmarks/results/optimizer-*.json: do not edit -->",
        f"Command: `{record['command']}`  ",
        f"Data: ISIC 2017 `2d`, the accuracy benchmark's {record['training_cases']} training cases, "
        f"{record['cases']} validation cases of fold 0. Budget `{record['budget']['name']}`: "
        f"{record['budget_text']}. Machine: {record['machine']}.",
        "",
        "| network | optimizer | mean Dice | AdamW - SGD: Dice points (p, AdamW better) | loss, first -> last "
        "quarter | gradient norm: median, max (clipped at 12) | s/iter | same batches | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for network, r in record["networks"].items():
        if r["status"] != "done":
            lines.append(f"| {network} | – | – | – | – | – | – | – | {r['status']} |")
            continue
        test = r["adamw_minus_sgd"]
        for label in ("sgd", "adamw"):
            x = r[label]
            versus = (
                (f"{100 * test['mean_difference']:+.1f} (p {p_value(test['p_value'])}, {test['wins']}/{test['cases']})")
                if label == "adamw"
                else "–"
            )
            lines.append(
                f"| {network} | {'SGD (nnU-Net)' if label == 'sgd' else 'AdamW + warm-up'} | {num(x['mean_dice'])} "
                f"| {versus} | {num(x['loss_first_quarter'])} -> {num(x['loss_last_quarter'])} "
                f"| {num(x['grad_norm_median'], 2)}, {num(x['grad_norm_max'], 2)} ({x['iterations_clipped_at_12']}) "
                f"| {num(x['s_per_iter'])} | {'yes' if r['same_batches'] else 'no'} "
                f"| {r['verdict'] if label == 'adamw' else ''} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from nnunet_sparseattn.errors import UserError
    from nnunet_sparseattn.harness.budgets import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="default: the accuracy benchmark's work folder")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    add_docs_arguments(parser, "optimizer")
    args = parser.parse_args(argv)
    command = command_line("optimizer", sys.argv[1:] if argv is None else argv)
    try:
        if args.update_docs:
            check_section(args.docs, MARKERS)
        trainers = ["nnUNetTrainer"] + [t for pair_ in NETWORKS.values() for t in pair_]
        work = (args.work or work_folder(args.budget, args.device)).resolve()
        results = compare_dataset(DATASETS["isic2017"], args.budget, args.device, trainers, work, args.data, command)
        record = {
            "benchmark": "optimizer",
            "command": command,
            "dataset": results["dataset"],
            "training_cases": json.loads(
                (work / "nnUNet_raw" / results["dataset"]["name"] / "dataset.json").read_text()
            )["numTraining"],
            "cases": sum(len(c) for c in results["heldout"]["cases"].values()),
            **{k: results[k] for k in ("budget", "budget_text", "device", "machine", "torch", "nnunetv2")},
            "networks": {n: pair(results, sgd, adamw) for n, (sgd, adamw) in NETWORKS.items()},
        }
        args.out_dir.mkdir(parents=True, exist_ok=True)
        path = args.out_dir / f"optimizer-{args.device}-{args.budget}.json"
        write_json_atomic(path, record)
        section = render(record)
        print(f"\nwrote {path}\n\n{section}")
        if args.update_docs:
            update_section(args.docs, section, MARKERS)
            print(f"updated the optimizer section of {args.docs}")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

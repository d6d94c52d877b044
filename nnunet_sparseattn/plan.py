"""``nnunet-sparseattn plan``: a variant plans file (nnUNetPlans_<VARIANT>.json) that nnU-Net's stock trainer trains."""

from __future__ import annotations

import argparse
import json

from nnunet_sparseattn.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("plan", help="write nnUNetPlans_<VARIANT>.json: a plans file the stock trainer trains")
    p.add_argument("-d", "--dataset", required=True, help="dataset id or name (already planned and preprocessed)")
    p.add_argument("--variant", required=True, help="bsa, mdsa or bilateral")
    p.add_argument("--plans", default="nnUNetPlans", help="source plans identifier (default nnUNetPlans)")
    p.add_argument("-c", "--configurations", nargs="+", help="configurations to change (default: all)")
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="fix a network setting, e.g. topk=8")
    p.set_defaults(func=_plan)


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

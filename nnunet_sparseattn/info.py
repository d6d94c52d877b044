"""``nnunet-sparseattn info``: parameters and FLOPs of a paper-scale network, or of every network for a dataset's
plans (with their attention layout)."""

from __future__ import annotations

import argparse

from nnunet_sparseattn.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> None:
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
    _paper_network(args.variant)
    return 0


def _paper_network(name: str) -> None:
    """A paper-scale network's parameters, FLOPs and multiply-adds beside the paper's own figures."""
    from nnunet_sparseattn.complexity import count_flops, count_parameters
    from nnunet_sparseattn.plans.variants import PAPER_CONFIGURATIONS

    if name not in PAPER_CONFIGURATIONS:
        names = ", ".join(PAPER_CONFIGURATIONS)
        raise UserError(f"info --variant {name!r}: no such paper-scale network; choose one of {names}")
    build, paper = PAPER_CONFIGURATIONS[name].load()
    net = build()
    shape = tuple(paper.get("PAPER_INPUT", ()))
    params, flops = count_parameters(net), count_flops(net, shape)
    print(f"{name}: input {'x'.join(map(str, shape))}")
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

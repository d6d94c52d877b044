"""Write the saved networks that ``tests/test_saved_networks.py`` loads: for each network, 2D and 3D, a small
configuration's weights (state dict), a fixed input and the outputs it gave (eval mode; training mode with deep
supervision), with the package version that wrote them.

    .venv/bin/python tests/data/make_reference_networks.py tests/data/networks-<version>

Run it only when a release changes state-dict keys or outputs ON PURPOSE (and say so in CHANGELOG.md): the files
exist so that an accidental rename or numerical change is caught.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

import nnunet_sparseattn
from nnunet_sparseattn.plans import VARIANTS, get_variant
from nnunet_sparseattn.plans.variants import network_class


def _plans(ndim: int) -> tuple[dict, tuple[int, ...]]:
    patch: tuple[int, ...]
    if ndim == 3:
        features, patch, strides = [4, 8, 16, 16], (16, 24, 32), [[1, 1, 1]] + [[2, 2, 2]] * 3
    else:
        features, patch, strides = [4, 8, 16, 16, 16], (32, 64), [[1, 1]] + [[2, 2]] * 4
    n = len(features)
    arch = {
        "n_stages": n,
        "features_per_stage": features,
        "conv_op": f"torch.nn.Conv{ndim}d",
        "kernel_sizes": [[3] * ndim] * n,
        "strides": strides,
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.InstanceNorm{ndim}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    return arch, patch


# Small, but every mechanism on (sparse routing with more regions than top-k, several heads, padded and shifted
# Swin windows, the rendering module): each registration's ``small_settings``.
def small_settings(variant: str, ndim: int) -> dict:
    return copy.deepcopy(dict(get_variant(variant).small_settings[ndim]))


def build(variant: str, ndim: int, deep_supervision: bool, overrides: dict | None = None) -> torch.nn.Module:
    arch, patch = _plans(ndim)
    cls = network_class(get_variant(variant))
    kwargs = small_settings(variant, ndim) if overrides is None else overrides
    return cls.from_plans(arch, patch, 1, 2, deep_supervision, overrides=kwargs)


def record(variant: str, ndim: int) -> dict:
    torch.manual_seed(0)
    net = build(variant, ndim, deep_supervision=True)
    _, patch = _plans(ndim)
    x = torch.randn(1, 1, *patch)
    net.train()
    torch.manual_seed(1)  # the rendering module samples its training points at random
    with torch.no_grad():
        train_outputs = [o.clone() for o in net(x)]
    eval_net = build(variant, ndim, deep_supervision=False)
    eval_net.load_state_dict(net.state_dict())
    eval_net.eval()
    with torch.no_grad():
        eval_output = eval_net(x).clone()
    return {
        "version": nnunet_sparseattn.__version__,
        "variant": variant,
        "ndim": ndim,
        "overrides": small_settings(variant, ndim),
        "state_dict": net.state_dict(),
        "input": x,
        "train_outputs": train_outputs,
        "eval_output": eval_output,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # thread count changes reduction order, hence the last bits
    for variant in VARIANTS:
        for ndim in (2, 3):
            path = args.out / f"{variant}_{ndim}d.pt"
            torch.save(record(variant, ndim), path)
            print(path, f"{path.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

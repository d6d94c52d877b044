"""Parameters and forward FLOPs of our networks beside nnU-Net's default U-Net, on the same plans.

    .venv/bin/python benchmarks/model_size.py            # writes benchmarks/results/model-size.json

Plans: MSD Hippocampus 3d_fullres as nnU-Net 2.8.1 plans it (4 stages, patch 40x56x40) and a typical six-stage
128^3 plan. FLOPs: ``torch.utils.flop_counter`` (2 per multiply-add; see ``nnunet_sparseattn.complexity``), batch 1,
one forward in eval mode with deep supervision off (what inference runs), on the CPU. The counts depend only on
the shapes, not on the machine (the attention's routing picks WHICH regions, never how many).
"""
from __future__ import annotations

import json
import platform
import pydoc
import sys
from datetime import date
from pathlib import Path

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from plans_cases import HIPPOCAMPUS_3D, SIX_STAGE_128  # noqa: E402

from nnunet_sparseattn.complexity import count_flops, count_parameters  # noqa: E402
from nnunet_sparseattn.plans import VARIANTS  # noqa: E402

PLANS = {"hippocampus_3d_fullres": (HIPPOCAMPUS_3D, 3), "six_stage_128": (SIX_STAGE_128, 14)}


def _default_unet(arch_kwargs: dict, num_classes: int) -> torch.nn.Module:
    return get_network_from_plans(
        "dynamic_network_architectures.architectures.unet.PlainConvUNet", arch_kwargs,
        ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, num_classes, allow_init=False, deep_supervision=False,
    )


def measure() -> dict:
    rows = {}
    for plan_name, ((arch_kwargs, patch), num_classes) in PLANS.items():
        rows[plan_name] = {"patch_size": list(patch), "num_classes": num_classes, "networks": {}}
        nets = {"nnU-Net PlainConvUNet": lambda: _default_unet(arch_kwargs, num_classes)}
        for name, variant in VARIANTS.items():
            cls = pydoc.locate(variant.network_class)
            if cls is None:
                rows[plan_name]["networks"][name] = {"status": f"absent: {variant.network_class} not importable"}
                continue
            nets[name] = lambda cls=cls: cls.from_plans(arch_kwargs, patch, 1, num_classes, False, initialize=False)
        for name, build in nets.items():
            torch.manual_seed(0)
            net = build()
            params, flops = count_parameters(net), count_flops(net, (1, 1, *patch))
            rows[plan_name]["networks"][name] = {"params": params, "flops": flops}
            print(f"{plan_name:24s} {name:24s} {params / 1e6:7.2f} M params {flops / 1e9:8.1f} GFLOPs")
    return rows


if __name__ == "__main__":
    result = {
        "command": ".venv/bin/python benchmarks/model_size.py",
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "flops": "torch.utils.flop_counter, 2 per multiply-add, batch 1, eval, deep supervision off",
        "plans": measure(),
    }
    out = ROOT / "benchmarks" / "results" / "model-size.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)

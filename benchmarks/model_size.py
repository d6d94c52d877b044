"""Parameters and forward FLOPs of our networks beside nnU-Net's default U-Net, on the same plans.

    .venv/bin/python -m benchmarks.model_size            # writes benchmarks/results/model-size.json

Plans: the network speed benchmark's (``benchmarks/plans/``, made by nnU-Net 2.8.1's own planner): MSD Hippocampus
``3d_fullres`` (4 stages, patch 40x56x40) and the six-stage 128^3 ``3d_fullres`` plan. Each network as its trainer
builds it (``network_speed.build_network``). FLOPs: ``torch.utils.flop_counter`` (2 per multiply-add; see
``nnunet_sparseattn.complexity``), batch 1, one forward in eval mode with deep supervision off (what inference
runs), on the CPU. The counts depend only on the shapes, not on the machine (the attention's routing picks WHICH
regions, never how many).
"""

from __future__ import annotations

import json
import platform
from datetime import date

import torch

from benchmarks.network_speed import NETWORKS, RESULTS, STOCK, build_network, load_plan
from nnunet_sparseattn.complexity import count_flops, count_parameters

# results key -> the benchmark's plan (the key names model-size.json's rows, kept from before the plans moved here)
PLANS = {"hippocampus_3d_fullres": "hippocampus_3d_fullres", "six_stage_128": "six_stage_128_3d"}
LABELS = {STOCK: "nnU-Net PlainConvUNet"}


def measure() -> dict:
    rows: dict[str, dict] = {}
    for row, plan_name in PLANS.items():
        plan = load_plan(plan_name)
        rows[row] = {"patch_size": list(plan.patch_size), "num_classes": plan.num_classes, "networks": {}}
        for key in NETWORKS:
            torch.manual_seed(0)
            net = build_network(key, plan, deep_supervision=False)
            params = count_parameters(net)
            flops = count_flops(net, (1, plan.input_channels, *plan.patch_size))
            name = LABELS.get(key, key)
            rows[row]["networks"][name] = {"params": params, "flops": flops}
            print(f"{row:24s} {name:24s} {params / 1e6:7.2f} M params {flops / 1e9:8.1f} GFLOPs", flush=True)
    return rows


if __name__ == "__main__":
    result = {
        "command": ".venv/bin/python -m benchmarks.model_size",
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "flops": "torch.utils.flop_counter, 2 per multiply-add, batch 1, eval, deep supervision off",
        "plans": measure(),
    }
    out = RESULTS / "model-size.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)

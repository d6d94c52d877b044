"""Per-layer timings behind ``layers/conv.py``'s CPU paths: each grouped or depthwise convolution of the benchmark's
plans run plain, channels-last, and (depthwise) with ``_DepthwiseConv``'s backward, in training and in inference.

    .venv/bin/python -m benchmarks.conv_paths [--threads 2] [--repeats 7]     # ~3 min on 2 cores

Writes ``benchmarks/results/conv-paths-cpu.json`` and prints a table: milliseconds (best of ``--repeats`` after a
warm-up, the paths interleaved, twice), forward + backward ("train") and forward under ``no_grad`` ("infer"), batch 2,
and which path ``_CPUConvolution`` takes. Shapes: the grouped and depthwise convolutions the networks run on
MSD Hippocampus (3D) and ISIC 2017 (2D) plans.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, command_line, write_results
from nnunet_sparseattn.harness.machine import describe_machine, load_average
from nnunet_sparseattn.layers import conv

# (dimensions, channels, groups, spatial, stride, kernel)
CASES = [
    (3, 16, 4, (40, 56, 40), 1, 3),  # Bilateral: ResNeXt, full resolution
    (3, 32, 8, (40, 56, 40), 2, 3),  # its strided first block of stage 1
    (3, 32, 8, (20, 28, 20), 1, 3),
    (3, 64, 16, (20, 28, 20), 2, 3),
    (3, 128, 32, (5, 7, 5), 1, 3),
    (3, 128, 128, (10, 14, 10), 1, 3),  # BSA, MDSA: positional and LCE convolutions
    (3, 128, 128, (10, 14, 10), 1, 7),  # MDSA: the aggregation's summed kernel
    (3, 256, 256, (5, 7, 5), 1, 7),
    (2, 16, 4, (256, 256), 1, 3),  # Bilateral 2D
    (2, 32, 8, (256, 256), 2, 3),
    (2, 64, 16, (64, 64), 1, 3),
    (2, 128, 128, (64, 64), 1, 3),  # BSA, MDSA 2D
    (2, 128, 128, (64, 64), 1, 7),
    (2, 256, 256, (32, 32), 1, 3),
    (2, 256, 256, (32, 32), 1, 7),
    (2, 512, 512, (16, 16), 1, 7),
]


def _best(fn: Callable[[], None], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


ConvPath = Callable[[torch.Tensor], torch.Tensor]  # one way of running the convolution


def _paths(
    module: conv.GroupedConv2d | conv.GroupedConv3d, ndim: int, channels: int, groups: int, stride: int, k: int
) -> dict[str, ConvPath]:
    """The ways the convolution is timed: plain, channels-last, and (depthwise) ``_DepthwiseConv``'s backward."""
    weight, bias = module.weight, module.bias
    layout = torch.channels_last_3d if ndim == 3 else torch.channels_last
    plain_conv = F.conv3d if ndim == 3 else F.conv2d

    def plain(t: torch.Tensor) -> torch.Tensor:
        return plain_conv(t, weight, bias, stride, k // 2, 1, groups)

    def channels_last(t: torch.Tensor) -> torch.Tensor:
        return plain(t.contiguous(memory_format=layout)).contiguous()

    paths: dict[str, ConvPath] = {"plain": plain, "channels-last": channels_last}
    if groups == channels and stride == 1:  # depthwise

        def fast_backward(t: torch.Tensor) -> torch.Tensor:  # as _CPUConvolution runs it: 3D in channels-last
            t = t.contiguous(memory_format=layout) if ndim == 3 else t
            return conv._DepthwiseConv.apply(t, weight, bias, [k // 2] * ndim).contiguous()

        paths["depthwise backward"] = fast_backward
    return paths


def _train(path: ConvPath, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        y = path(x)
        y.backward(torch.ones_like(y))

    return run


def _infer(path: ConvPath, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            path(x)

    return run


def measure(case: tuple, repeats: int) -> dict:
    ndim, c, groups, spatial, stride, k = case
    torch.manual_seed(0)
    x = torch.randn(2, c, *spatial, requires_grad=True)
    # the class grouped_conv_op gives the networks for this dimension
    module = (conv.GroupedConv3d if ndim == 3 else conv.GroupedConv2d)(c, c, k, stride, k // 2, groups=groups)
    paths = _paths(module, ndim, c, groups, stride, k)
    record: dict = {
        "case": {
            "ndim": ndim,
            "channels": c,
            "groups": groups,
            "spatial": list(spatial),
            "stride": stride,
            "kernel": k,
        },
        "train_ms": {},
        "infer_ms": {},
    }
    for _ in range(2):  # interleaved twice: the best of both
        for name, path in paths.items():
            for kind, make in (("train_ms", _train), ("infer_ms", _infer)):
                if kind == "infer_ms" and name == "depthwise backward":
                    continue  # the same forward as plain
                ms = _best(make(path, x), repeats)
                record[kind][name] = round(min(ms, record[kind].get(name, ms)), 2)
    with torch.enable_grad():
        record["taken_training"] = module._cpu_path(x, module.weight)
    with torch.no_grad():
        record["taken_inference"] = module._cpu_path(x, module.weight)
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS / "conv-paths-cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "command": command_line("conv_paths", sys.argv[1:] if argv is None else argv),
        "machine": describe_machine("cpu"),
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_start": load_average(),
        "records": [],
    }
    print("| conv | train: plain | channels-last | depthwise backward | taken | infer: plain | channels-last | taken |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        r = measure(case, args.repeats)
        result["records"].append(r)
        c = r["case"]
        name = (
            f"{c['ndim']}D {c['channels']} ch / {c['groups']} groups, {'x'.join(map(str, c['spatial']))}, "
            f"k{c['kernel']} s{c['stride']}"
        )
        t, i = r["train_ms"], r["infer_ms"]
        print(
            f"| {name} | {t['plain']} | {t['channels-last']} | {t.get('depthwise backward', '–')} | "
            f"{r['taken_training']} | {i['plain']} | {i['channels-last']} | {r['taken_inference']} |",
            flush=True,
        )
    result["load_average_end"] = load_average()
    write_results(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Routed attention benchmark: dense SDPA vs a BiFormer-style gather vs our gather and flex backends.

Usage (defaults: CPU, 2 threads, full sweep, ~15 min on a 2-core CPU):
    .venv/bin/python -m benchmarks.attention [--device cpu|cuda] [--quick] [--threads 2] [--max-seconds 150]

Writes ``benchmarks/results/attention-<device>.json``: a list of records with exactly the fields
``backend, tokens, channels, heads, topk, region_tokens, fwd_s, fwdbwd_s, peak_bytes, peak_fwdbwd_bytes,
device`` (null where a backend cannot or was not run), plus ``attention-<device>.meta.json`` (machine, torch,
command, memory method, and the reason for every null). Prints a table.

Inputs are 3D token grids ``side^3``, batch 1, channel-first q/k/v ``(1, C, side, side, side)``; regions of
``region^3`` tokens (grid = side / region); routing is computed inside every routed backend (part of its cost).

- dense:    ``scaled_dot_product_attention`` over all tokens, given q/k/v already as ``(B, heads, N, d)``.
- biformer: BiFormer's scheme written here as the baseline: region partition, the same routing, then the routed
            key/value regions copied with ``torch.gather`` along the region axis of a ``(B, Nq, Nk, r, 2C)``
            *expanded* view (its backward scatter-adds into a buffer of that full size), then SDPA per region.
- gather:   ``routed_attention(..., backend="gather")`` (index_select + SDPA).
- flex:     ``routed_attention(..., backend="flex")`` (compiled flex_attention with a BlockMask; forward only
            on the CPU, where flex has no backward). The first (compile) call is excluded from the timing and
            reported in the meta file.

Peak memory: bytes allocated above what was live before the call. On CUDA: ``torch.cuda.max_memory_allocated``.
On the CPU: torch's profiler with ``profile_memory=True``; every tensor allocation/free event of the run is
replayed in time order and the maximum of the running sum is taken. It counts tensors allocated through torch's
allocator (including those made inside SDPA, autograd and inductor kernels), not scratch memory that BLAS or
oneDNN allocate privately.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, command_line, cpu_peak_bytes, memory_events, sync, write_results
from nnunet_sparseattn.harness.machine import describe_machine, load_average
from nnunet_sparseattn.layers import (
    compute_routing,
    from_regions,
    region_layout,
    routed_attention,
    to_regions,
)

FIELDS = (
    "backend",
    "tokens",
    "channels",
    "heads",
    "topk",
    "region_tokens",
    "fwd_s",
    "fwdbwd_s",
    "peak_bytes",
    "peak_fwdbwd_bytes",
    "device",
)


# ----------------------------------------------------------------------------------------------- backends
def biformer_attention(q, k, v, num_heads: int, grid: int, topk: int) -> torch.Tensor:
    """BiFormer-style routed attention (baseline): expanded ``torch.gather`` of whole K/V regions, no masking."""
    b, c = q.shape[:2]
    lay = region_layout(q.shape[2:], grid)
    nr, r, d = lay.num_regions, lay.region_tokens, c // num_heads
    idx = compute_routing(q, k, grid, topk)  # (B, Nr, k): same routing as ours, to compare only the gather
    kk = idx.shape[-1]
    qr = to_regions(q, lay, 1)[:, 0]  # (B, Nr, r, C)
    kv = torch.cat([to_regions(k, lay, 1)[:, 0], to_regions(v, lay, 1)[:, 0]], dim=-1)  # (B, Nr, r, 2C)
    kv_sel = torch.gather(
        kv.unsqueeze(1).expand(b, nr, nr, r, 2 * c),  # one copy of all regions per query region (a view)
        dim=2,
        index=idx.view(b, nr, kk, 1, 1).expand(b, nr, kk, r, 2 * c),
    )  # (B, Nr, k, r, 2C)
    k_sel, v_sel = kv_sel.split(c, dim=-1)
    heads = lambda t, n: t.reshape(b, nr, n, num_heads, d).permute(0, 1, 3, 2, 4)  # noqa: E731
    o = F.scaled_dot_product_attention(heads(qr, r), heads(k_sel, kk * r), heads(v_sel, kk * r))
    o = o.permute(0, 1, 3, 2, 4).reshape(b, nr, r, num_heads, d).permute(0, 3, 1, 2, 4)  # (B, h, Nr, r, d)
    return from_regions(o, lay)


def make_fn(backend: str, q, k, v, heads: int, grid: int, topk: int) -> Callable[[], torch.Tensor]:
    if backend == "dense":
        b, c = q.shape[:2]
        d = c // heads
        # give dense its preferred (B, h, N, d) layout up front: conservative for the comparison
        qs, ks, vs = (t.detach().reshape(b, heads, d, -1).transpose(-1, -2).contiguous() for t in (q, k, v))
        qs.requires_grad_(q.requires_grad)
        ks.requires_grad_(k.requires_grad)
        vs.requires_grad_(v.requires_grad)
        return lambda: F.scaled_dot_product_attention(qs, ks, vs)
    if backend == "biformer":
        return lambda: biformer_attention(q, k, v, heads, grid, topk)
    return lambda: routed_attention(q, k, v, heads, grid, topk, backend=backend)


# ------------------------------------------------------------------------------------------- measurement
def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return cpu_peak_bytes(memory_events(prof))


def measure(
    fn: Callable[[], object], device: torch.device, reps: int, slow_s: float, profile_first: bool
) -> tuple[float, int, float]:
    """Returns (best time of the timed runs, peak bytes, time of the first call).

    On the CPU the first (warm-up) call is the one profiled for memory when ``profile_first`` (profiling a
    few large ops costs little), so a slow case runs only once; flex profiles a later call (its first call
    compiles). A first call slower than ``slow_s`` is also the timing (no repeats).
    """
    peak = None
    gc.collect()
    sync(device)
    t0 = time.perf_counter()
    if device.type == "cpu" and profile_first:
        peak = _cpu_peak_bytes(fn)
    else:
        fn()
    sync(device)
    first = time.perf_counter() - t0
    times = []
    if first > slow_s and device.type != "cuda" and profile_first:
        times.append(first)
    else:
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    elif peak is None:
        peak = _cpu_peak_bytes(fn)
    return min(times), int(peak), first


# ------------------------------------------------------------------------------------------------- main
def cases(quick: bool, device: torch.device, density_side: Optional[int] = None, region: int = 4) -> list[dict]:
    """(side, channels, heads, topk); region 4^3 everywhere. The anchor is 64 ch / 2 heads / top-k 8.
    ``density_side``: only the GPU target's case, 12.5 % density (an eighth of the regions) at that many tokens per
    axis (32: top-k 64 of 512 regions; ``benchmarks/gpu.sh`` runs it, its dry run at 8)."""
    if density_side is not None:
        return [dict(side=density_side, channels=64, heads=2, topk=max(1, (density_side // region) ** 3 // 8))]
    out = []
    sides = [16, 24] if quick else [16, 24, 32, 48]
    for s in sides:
        out.append(dict(side=s, channels=64, heads=2, topk=8))
    if not quick:
        for c, h, t in [(128, 4, 4), (128, 4, 16), (256, 8, 8)]:
            out.append(dict(side=24, channels=c, heads=h, topk=t))
        out.append(dict(side=32, channels=256, heads=8, topk=8))
    if device.type == "cuda":  # the GPU target is set at 12.5 % density: 64 of 512 regions at 32^3
        out.append(dict(side=32, channels=64, heads=2, topk=64))
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--quick", action="store_true", help="16^3 and 24^3 anchor only, 1 repeat")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--region", type=int, default=4, help="region edge in tokens (default 4 -> 64 tokens)")
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="skip a dense/biformer case whose predicted time exceeds this (default 150)",
    )
    ap.add_argument("--backends", default="dense,biformer,gather,flex")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the markdown table of a results file")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/attention-<device>.json)")
    ap.add_argument(
        "--density-case",
        type=int,
        default=None,
        metavar="SIDE",
        help="only the 12.5 %%-density case (an eighth of the regions routed) at SIDE^3 tokens (GPU: 32)",
    )
    return ap


@dataclass
class Sweep:
    """The run's settings and what it has learnt so far (the times that predict the next cases' skips)."""

    device: torch.device
    dtype: torch.dtype
    reps: int
    region: int
    max_seconds: float
    available_bytes: int
    slow_s: float = 20.0  # above this, a case is timed once (its first, profiled call: overhead negligible then)
    notes: list[str] = dataclasses.field(default_factory=list)  # why a value is null
    compile_s: dict[str, float] = dataclasses.field(default_factory=dict)  # flex's first (compiling) calls
    # (backend, channels, topk) -> (tokens, fwd s, fwd+bwd s) of the last case measured
    history: dict[tuple, tuple[int, Any, Any]] = dataclasses.field(default_factory=dict)


def _skips(sweep: Sweep, backend: str, case: dict) -> tuple[Optional[str], Optional[str]]:
    """Why the forward and the forward+backward of a case are not run (None: they are)."""
    side, c, topk = case["side"], case["channels"], case["topk"]
    n, r, nr = side**3, sweep.region**3, (side // sweep.region) ** 3
    skip_fwd = skip_bwd = None
    prev = sweep.history.get((backend, c, topk))
    if backend in ("dense", "biformer") and prev is not None:
        pn, pf, pb = prev
        scale = (n / pn) ** 2  # dense is O(N^2); biformer's expanded backward buffer is O(Nr^2)
        if pf is not None and pf * scale > sweep.max_seconds:
            skip_fwd = f"predicted fwd {pf * scale:.0f} s > --max-seconds {sweep.max_seconds:.0f}"
        if pb is not None and pb * scale > sweep.max_seconds:
            skip_bwd = f"predicted fwd+bwd {pb * scale:.0f} s > --max-seconds {sweep.max_seconds:.0f}"
    if backend == "biformer":
        need = nr * nr * r * 2 * c * torch.finfo(sweep.dtype).bits // 8  # grad of the expanded K/V view
        avail = sweep.available_bytes
        if need > 0.6 * avail:
            skip_bwd = skip_bwd or f"backward buffer {need / 2**30:.0f} GiB > 60% of {avail / 2**30:.0f} GiB"
    if backend == "flex" and sweep.device.type != "cuda":
        skip_bwd = "flex_attention has no backward on the CPU"
    return skip_fwd, skip_bwd


def measure_case(sweep: Sweep, backend: str, case: dict) -> dict:
    """One backend on one case: forward and forward+backward timed and their peaks (null where skipped or failed,
    with the reason in ``sweep.notes``)."""
    side, c, h, topk = case["side"], case["channels"], case["heads"], case["topk"]
    device, grid = sweep.device, side // sweep.region
    rec: dict[str, Any] = dict(
        backend=backend,
        tokens=side**3,
        channels=c,
        heads=h,
        topk=topk,
        region_tokens=sweep.region**3,
        fwd_s=None,
        fwdbwd_s=None,
        peak_bytes=None,
        peak_fwdbwd_bytes=None,
        device=device.type,
    )
    label = f"{backend} N={side}^3 C={c} h={h} k={topk}"
    skip_fwd, skip_bwd = _skips(sweep, backend, case)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, c, side, side, side, device=device, dtype=sweep.dtype) for _ in range(3))
    try:
        if skip_fwd is None:
            with torch.no_grad():
                fn = make_fn(backend, q, k, v, h, grid, topk)
                t, p, first = measure(fn, device, sweep.reps, sweep.slow_s, backend != "flex")
            rec["fwd_s"], rec["peak_bytes"] = round(t, 5), p
            if backend == "flex":
                sweep.compile_s[label] = round(first, 2)
        else:
            sweep.notes.append(f"{label} fwd: {skip_fwd}")
        if skip_bwd is None:
            qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
            fn = make_fn(backend, qg, kg, vg, h, grid, topk)

            def step(fn: Callable[[], torch.Tensor] = fn, inputs: tuple = (qg, kg, vg)) -> None:
                fn().sum().backward()
                for x in inputs:
                    x.grad = None

            t, p, _ = measure(step, device, sweep.reps, sweep.slow_s, backend != "flex")
            rec["fwdbwd_s"], rec["peak_fwdbwd_bytes"] = round(t, 5), p
        else:
            sweep.notes.append(f"{label} fwd+bwd: {skip_bwd}")
    except (RuntimeError, MemoryError) as e:  # OOM or an unsupported case: record null, say why
        sweep.notes.append(f"{label}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    sweep.history[(backend, c, topk)] = (side**3, rec["fwd_s"], rec["fwdbwd_s"])
    return rec


def main(argv: Optional[list[str]] = None) -> None:
    args = parser().parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(Path(args.table).read_text())))
        return

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    sweep = Sweep(device, dtype, 1 if args.quick else 3, args.region, args.max_seconds, _available_bytes(device))
    load_start = load_average()
    t_start = time.perf_counter()
    records = []
    for case in cases(args.quick, device, args.density_case, args.region):
        for backend in args.backends.split(","):
            records.append(measure_case(sweep, backend, case))
            print(_row(records[-1]), flush=True)
            gc.collect()

    out = Path(args.out) if args.out else RESULTS / f"attention-{device.type}.json"
    write_results(out, [{f: r[f] for f in FIELDS} for r in records])
    meta = dict(
        command=command_line("attention", sys.argv[1:] if argv is None else argv),
        machine=describe_machine(device),
        torch=torch.__version__,
        threads=args.threads,
        dtype=str(dtype),
        batch=1,
        region=f"{args.region}^3",
        memory_method=(
            "torch.cuda.max_memory_allocated minus memory_allocated before the call"
            if device.type == "cuda"
            else "torch.profiler profile_memory: peak of the running sum of tensor alloc/free events"
        ),
        flex_first_call_s=sweep.compile_s,
        load_average_start=load_start,
        load_average_end=load_average(),
        wall_s=round(time.perf_counter() - t_start, 1),
        nulls=sweep.notes,
    )
    write_results(out.with_suffix(".meta.json"), meta)
    print("\n" + "\n".join(sweep.notes))
    print(f"\nwrote {out} and {out.with_suffix('.meta.json').name}")
    _print_ratios(records)
    print("\n" + markdown_table(records))


def markdown_table(records: list[dict]) -> str:
    """The records as the markdown table used in BENCHMARKS.md (times in s, memory in MiB)."""
    mib = lambda x: "null" if x is None else f"{x / 2**20:.1f}"  # noqa: E731
    sec = lambda x: "null" if x is None else f"{x:.4g}"  # noqa: E731
    rows = [
        "| tokens | C | heads | top-k | backend | fwd s | fwd+bwd s | fwd peak MiB | fwd+bwd peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        side = round(r["tokens"] ** (1 / 3))
        rows.append(
            f"| {side}^3 | {r['channels']} | {r['heads']} | {r['topk']} | {r['backend']} | {sec(r['fwd_s'])} "
            f"| {sec(r['fwdbwd_s'])} | {mib(r['peak_bytes'])} | {mib(r['peak_fwdbwd_bytes'])} |"
        )
    return "\n".join(rows)


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _fmt(x, unit=""):
    if x is None:
        return "null"
    if unit == "B":
        return f"{x / 2**20:.1f}M"
    return f"{x:.4f}"


def _row(r: dict) -> str:
    return (
        f"{r['backend']:8s} N={r['tokens']:6d} C={r['channels']:3d} h={r['heads']} k={r['topk']:2d} "
        f"fwd={_fmt(r['fwd_s']):>8s} fwdbwd={_fmt(r['fwdbwd_s']):>8s} "
        f"mem={_fmt(r['peak_bytes'], 'B'):>8s} mem_fb={_fmt(r['peak_fwdbwd_bytes'], 'B'):>8s}"
    )


def _print_ratios(records: list[dict]) -> None:
    def get(be, n, c=64, k=8):
        for r in records:
            if r["backend"] == be and r["tokens"] == n and r["channels"] == c and r["topk"] == k:
                return r
        return None

    def ratio(a, b, field):
        if a is None or b is None or a[field] is None or b[field] is None or b[field] == 0:
            return None
        return a[field] / b[field]

    n = 32**3
    g, d, bf, fx = get("gather", n), get("dense", n), get("biformer", n), get("flex", n)
    lines = [
        ("fwd+bwd dense / gather (target >= 3)", ratio(d, g, "fwdbwd_s")),
        ("fwd+bwd biformer / gather (target >= 3)", ratio(bf, g, "fwdbwd_s")),
        ("fwd dense / gather (target >= 10)", ratio(d, g, "fwd_s")),
        ("fwd dense / flex (target >= 10)", ratio(d, fx, "fwd_s")),
        ("fwd peak biformer / flex (target >= 4)", ratio(bf, fx, "peak_bytes")),
        ("fwd peak biformer / gather", ratio(bf, g, "peak_bytes")),
    ]
    print("\nanchor ratios at 32^3 tokens, 64 ch, 2 heads, top-k 8:")
    for name, val in lines:
        print(f"  {name}: {'n/a' if val is None else f'{val:.2f}'}")
    # GPU target: 12.5 % density (top-k 64 of 512 regions) at 32^3: speed-up and throughput per useful FLOP
    for be in ("flex", "gather"):
        s, dd = get(be, n, k=64), get("dense", n, k=64)
        for field in ("fwd_s", "fwdbwd_s"):
            rr = ratio(dd, s, field)
            if rr is not None:
                # useful FLOPs are 12.5 % of dense: throughput per useful FLOP = speed-up * density
                print(
                    f"  12.5% density {field} dense / {be}: {rr:.2f} (target >= 4); "
                    f"throughput per useful FLOP vs dense: {rr * 64 / 512:.0%} (target >= 40%)"
                )
    print("flex forward peak bytes per token:")
    for s in (16, 24, 32, 48):
        r = get("flex", s**3)
        if r and r["peak_bytes"]:
            print(f"  {s}^3: {r['peak_bytes'] / s**3:.0f} B/token ({r['peak_bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()

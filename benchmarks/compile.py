"""Every network under ``torch.compile`` on the CPU, as nnU-Net's trainer and predictor use it: outputs and gradients
against eager, graph breaks, recompilations, flex attention in the graph, and compile time with where it goes.

    python -m benchmarks.compile --size tiny              # all networks, three plans at dry-run size, inductor
    python -m benchmarks.compile --size narrow            # features / 8 at the plans' own patch: flex in the graph
    python -m benchmarks.compile --plans isic2017_2d      # the plans' own sizes (long on 2 CPU cores)
    python -m benchmarks.compile --docs-only              # the BENCHMARKS.md section from the results JSON

Networks: ``benchmarks/network_speed.py``'s (each built as its trainer builds it), from the plans in
``benchmarks/plans`` (``--size tiny``: ``tiny_plan``, features / 8 and patch / 4, where every routed attention is
dense; ``--size narrow``: features / 8 at the plans' own patch, the plans' graph with flex where it picks flex).
``--checkpointing`` turns on the
attention blocks' activation checkpointing (the plans' ``"activation_checkpointing": true``).

One case = one network and plan in its own process (a fresh dynamo and inductor state; ``--timeout`` each; results
written after each case, and a rerun skips the cases already in the JSON). The case walks through what nnU-Net does
to one compiled module, counting the graphs dynamo compiles at each phase (a graph after the first phase is a
recompilation):

1. ``train``: deep supervision on, ``train()``, a full batch (2, or the plans' batch if smaller), nnU-Net's Dice + CE
   deep-supervision loss, backward. Outputs and every parameter's gradient against an eager copy with the same
   weights and inputs. Its wall time minus an eager step's is the compile time.
2. ``train_again``: the next step (no recompilation expected).
3. ``partial_batch``: a batch of 1 (nnU-Net's loader never yields one, but a user's loop may).
4. ``validation``: ``eval()`` under ``no_grad``, deep supervision still on (``nnUNetTrainer.validation_step``).
5. ``train_after_validation``: back to ``train()`` for the next epoch.
6. ``inference``: deep supervision off, ``eval()``, ``inference_mode`` (nnU-Net's predictor and final validation).
   Here the routed attention's backend ``"auto"`` picks flex on the CPU (inside compile, no gradient), as it does on
   a GPU: the flex calls found in the graph are counted against the routed-attention calls an eager run makes.

Errors are ``max |compiled - eager| / max |eager|`` per tensor, the largest over the outputs (and over the
parameters' gradients). Random ops draw as eager (``torch._inductor.config.fallback_random``). In training both are
also held to a float64 copy of the network (the layers' float32 places keep float64 there: ``layers/precision.py``):
where a network amplifies float32 rounding (the bilateral network's eager float32 gradients are 1.5e-3 from its
float64 ones at dry-run size) a correct compiled graph can miss the fixed tolerances; a step then passes when the
compiled step is as close to the float64 step as eager's own float32 step is (at most 2x eager's error against it).
The bilateral network's rendering picks its voxels by top-k of uncertainty, where a near-tie flips with rounding:
eager and the float64 copy refine the voxels the compiled step picked.

Compile time: dynamo's own timers (``torch._dynamo.utils.compilation_time_metrics``), summed per stage: dynamo's
tracing, AOTAutograd, inductor's lowering and code generation, and the C++ build of the generated kernels.
Inductor's FX graph cache and its C++ build cache live in ``TORCHINDUCTOR_CACHE_DIR``: ``--cache-dir`` (default: a
fresh folder per case, i.e. a cold compile); ``--warm`` runs each case twice on one cache folder and reports both.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from benchmarks.common import DOCS, ROOT, update_section
from benchmarks.common import RESULTS as RESULTS_DIR
from benchmarks.network_speed import NETWORKS, STOCK, Plan, build_loss, build_network, load_plan, tiny_plan

RESULTS = RESULTS_DIR / "compile-cpu.json"
MARKERS = ("<!-- compile:begin -->", "<!-- compile:end -->")
PLANS = ("hippocampus_3d_fullres", "isic2017_2d", "six_stage_128_3d")
METHODS = tuple(k for k in NETWORKS if k != STOCK)
PHASES = ("train", "train_again", "partial_batch", "validation", "train_after_validation", "inference")

# Stated tolerances on the relative error (max |compiled - eager| / max |eager|). Inductor reorders float32 sums
# (fused reductions, other convolution algorithms), so the error grows with depth; the gradient of the deepest
# parameters passes the whole network twice. An error beyond these is a bug, not rounding.
OUTPUT_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-3
# beyond the tolerances, a compiled training step passes at most this many times eager's own error against float64
FLOAT64_MARGIN = 2.0

# dynamo_timed timers that do not nest in one another, one per stage (torch 2.14; a name missing in another version
# counts 0): dynamo's bytecode tracing, AOTAutograd's tracing of the joint graph, inductor's lowering to its IR, its
# code generation (scheduling, fusion, writing the C++), and the wait for the C++ compiler (a worker pool).
STAGES = {
    "dynamo_trace": ("bytecode_tracing",),
    "aot_autograd": ("aot_collect_metadata", "aot_trace_joint_graph"),
    "inductor_lowering": ("GraphLowering.run",),
    "inductor_codegen": ("GraphLowering.codegen",),
    "cpp_build": ("async_compile.wait",),
}


# ------------------------------------------------------------------------------------------------------- helpers
def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` (0 for two zero tensors)."""
    scale = float(want.detach().abs().max())
    diff = float((got.detach().float() - want.detach().float()).abs().max())
    return diff / scale if scale > 0 else diff


def max_error(got: Any, want: Any) -> float:
    """The largest :func:`relative_error` over matching tensors (a tensor, or lists of them)."""
    if isinstance(got, torch.Tensor):
        return relative_error(got, want)
    return max(relative_error(g, w) for g, w in zip(got, want))


def gradient_error(compiled: nn.Module, eager: nn.Module) -> dict[str, Any]:
    """Over all parameters: ``max |compiled grad - eager grad| / max |eager grad|`` (``gradient_error``), and the
    parameter with the largest error relative to its own largest gradient (small gradients magnify rounding)."""
    diff, scale, worst = 0.0, 0.0, ("", 0.0)
    for (name, c), e in zip(compiled.named_parameters(), eager.parameters()):
        if c.grad is None or e.grad is None:
            continue
        diff = max(diff, float((c.grad - e.grad).abs().max()))
        scale = max(scale, float(e.grad.abs().max()))
        own = relative_error(c.grad, e.grad)
        if own > worst[1]:
            worst = (name, own)
    return {
        "gradient_error": diff / scale if scale > 0 else diff,
        "worst_parameter": worst[0],
        "worst_parameter_error": worst[1],
    }


def stage_times(timers: dict[str, float]) -> dict[str, float]:
    """:data:`STAGES` summed from dynamo's timers (name -> seconds)."""
    return {stage: round(sum(timers.get(n, 0.0) for n in names), 1) for stage, names in STAGES.items()}


def all_timers(top: int = 40) -> dict[str, float]:
    """Every dynamo_timed timer summed (nested timers overlap: a parent includes its children), largest first."""
    from torch._dynamo.utils import compilation_time_metrics

    sums = {k: round(sum(v), 2) for k, v in compilation_time_metrics.items()}
    return dict(sorted(sums.items(), key=lambda kv: -kv[1])[:top])


class GraphRecorder:
    """A dynamo backend that records every graph it is given (flex and SDPA calls, node count), then hands the graph
    to the real backend (inductor, aot_eager, ...)."""

    def __init__(self, backend: str):
        from torch._dynamo import lookup_backend

        self.inner = lookup_backend(backend)
        self.graphs: list[dict[str, int]] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        names = [str(getattr(n.target, "__name__", n.target)) for n in gm.graph.nodes if n.op == "call_function"]
        self.graphs.append(
            {
                "nodes": len(gm.graph.nodes),
                "flex_attention": sum("flex_attention" in n for n in names),
                "sdpa": sum("scaled_dot_product_attention" in n for n in names),
            }
        )
        return self.inner(gm, example_inputs)


def routed_calls(network: nn.Module, x: torch.Tensor) -> int:
    """How many routed-attention calls one eager inference forward makes that are not dense (the calls whose
    backend "auto" resolves to flex on a GPU, and on the CPU inside compile without gradient)."""
    from nnunet_sparseattn.layers import sparse_attention

    calls = [0]
    real = sparse_attention._gather

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return real(*args, **kwargs)

    sparse_attention._gather = counting  # eager CPU inference resolves "auto" to gather
    try:
        with torch.inference_mode():
            network(x)
    finally:
        sparse_attention._gather = real
    return calls[0]


def _targets(outputs: Any, num_classes: int, generator: torch.Generator) -> list[torch.Tensor]:
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [torch.randint(0, num_classes, (o.shape[0], 1, *o.shape[2:]), generator=generator).float() for o in outs]


@contextlib.contextmanager
def _rendering_points(network: nn.Module, index: Optional[torch.Tensor]) -> Iterator[None]:
    """The bilateral network's rendering refines the voxels ``index`` (the compiled step's) instead of choosing them
    (None, or a network without rendering: nothing changes)."""
    rendering = getattr(network, "rendering", None)
    if index is None or rendering is None:
        yield
        return
    rendering.select = lambda coarse: index  # an instance attribute shadows the method for the call
    try:
        yield
    finally:
        del rendering.select


def _set_deep_supervision(network: nn.Module, enabled: bool) -> None:
    decoder: Any = network.decoder
    decoder.deep_supervision = enabled  # what nnUNetTrainer.set_deep_supervision_enabled sets


# ---------------------------------------------------------------------------------------------------- one case
def run_case(
    key: str, plan: Plan, backend: str, checkpointing: bool = False, phases_run: tuple[str, ...] = PHASES
) -> dict[str, Any]:
    """The phases of the module docstring for one network and plan, in this process (``phases_run``: a subset; the
    first training step always runs)."""
    import torch._dynamo
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import compilation_time_metrics, counters

    inductor_config.fallback_random = True
    torch._dynamo.reset()
    counters.clear()
    compilation_time_metrics.clear()

    torch.manual_seed(0)
    eager = build_network(key, plan, deep_supervision=True)
    if checkpointing:
        eager.enable_activation_checkpointing()  # type: ignore[operator]
    network = copy.deepcopy(eager)
    reference = copy.deepcopy(eager).double()
    recorder = GraphRecorder(backend)
    compiled: Any = torch.compile(network, backend=recorder)
    loss = build_loss(plan, compile_dice=False)
    batch = min(2, plan.batch_size) if plan.batch_size > 1 else 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, plan.input_channels, *plan.patch_size, generator=g)
    result: dict[str, Any] = {"network": key, "plan": plan.name, "backend": backend, "batch": batch}
    result["patch_size"] = list(plan.patch_size)
    result["checkpointing"] = checkpointing
    phases: dict[str, dict[str, Any]] = {}

    def breaks() -> int:
        return int(sum(counters.get("graph_break", {}).values()))

    def phase(name: str, run: Callable[[], dict[str, Any]]) -> None:
        if name not in phases_run + ("eager_step", "train"):
            return
        before, breaks_before = len(recorder.graphs), breaks()
        t = time.perf_counter()
        entry = run()
        entry["s"] = round(time.perf_counter() - t, 2)
        entry["graphs"] = len(recorder.graphs) - before
        entry["graph_breaks"] = breaks() - breaks_before
        phases[name] = entry

    with torch.no_grad():  # one target per output (deep supervision's scales) for each batch size
        targets = {n: _targets(eager(x[:n]), plan.num_classes, torch.Generator().manual_seed(n)) for n in (1, batch)}

    def train_step(inputs: torch.Tensor, compare: bool) -> dict[str, Any]:
        compiled.train()
        eager.train()
        target = targets[inputs.shape[0]]
        network.zero_grad(set_to_none=True)
        torch.manual_seed(2)  # the same draws for both (the bilateral network samples its rendering points)
        out = compiled(inputs)
        loss(out, target).backward()
        if not compare:
            return {}
        points = getattr(getattr(network, "rendered", None), "index", None)
        results = []
        for model, dtype in ((eager, torch.float32), (reference, torch.float64)):
            model.train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(2)
            with _rendering_points(model, points):
                want = model(inputs.to(dtype))
            loss(want, [t.to(dtype) for t in target]).backward()
            results.append(want)
        want, exact = results
        reference_error = {
            "output_error_vs_float64": max_error(out, exact),
            "eager_output_error_vs_float64": max_error(want, exact),
            "gradient_error_vs_float64": gradient_error(network, reference)["gradient_error"],
            "eager_gradient_error_vs_float64": gradient_error(eager, reference)["gradient_error"],
        }
        return {"output_error": max_error(out, want), **gradient_error(network, eager), **reference_error}

    def eager_step() -> dict[str, Any]:
        eager.train()
        loss(eager(x), targets[batch]).backward()
        return {}

    def evaluate(deep_supervision: bool, context: Callable[[], Any], inputs: torch.Tensor) -> dict[str, Any]:
        _set_deep_supervision(network, deep_supervision)
        _set_deep_supervision(eager, deep_supervision)
        compiled.eval()
        eager.eval()
        with context():
            got, want = compiled(inputs), eager(inputs)
        return {"output_error": max_error(got, want)}

    phase("eager_step", eager_step)  # the reference for the compile time (and warms eager's caches)
    phase("train", lambda: train_step(x, compare=True))
    phase("train_again", lambda: train_step(x, compare=True))
    phase("partial_batch", lambda: train_step(x[:1], compare=True))
    phase("validation", lambda: evaluate(True, torch.no_grad, x))
    phase("train_after_validation", lambda: train_step(x, compare=False))
    if "inference" in phases_run:
        _set_deep_supervision(eager, False)
        eager.eval()
        flex_expected = routed_calls(eager, x[:1])
        phase("inference", lambda: evaluate(False, torch.inference_mode, x[:1]))
        phases["inference"]["flex_expected"] = flex_expected
        new = recorder.graphs[len(recorder.graphs) - phases["inference"]["graphs"] :]
        phases["inference"]["flex_in_graph"] = sum(gr["flex_attention"] for gr in new)

    reasons: dict[str, int] = dict(counters.get("graph_break", {}))
    result.update(
        phases=phases,
        compile_s=round(phases["train"]["s"] - phases["eager_step"]["s"], 1),
        graph_breaks=breaks(),
        graph_break_reasons=sorted({str(r).splitlines()[0][:200] for r in reasons}),
        graphs=len(recorder.graphs),
        recompilations=len(recorder.graphs) - phases["train"]["graphs"],
        timers_s=all_timers(),
        train_output_error=max(v["output_error"] for p, v in phases.items() if "gradient_error" in v),
        train_gradient_error=max(v["gradient_error"] for p, v in phases.items() if "gradient_error" in v),
        inference_output_error=max(
            (phases[p]["output_error"] for p in ("validation", "inference") if p in phases), default=0.0
        ),
    )
    trained = [v for v in phases.values() if "gradient_error" in v]
    result["train_vs_float64"] = {
        key: max(v[key] for v in trained)
        for key in (
            "output_error_vs_float64",
            "eager_output_error_vs_float64",
            "gradient_error_vs_float64",
            "eager_gradient_error_vs_float64",
        )
    }
    result["within_tolerance"] = within_tolerance(result)
    return result


def within_tolerance(result: dict[str, Any]) -> bool:
    """Inference within the output tolerance, and training within both tolerances or, step by step, as close to the
    float64 step as eager's float32 step is (see the module docstring)."""
    if result["inference_output_error"] > OUTPUT_TOLERANCE:
        return False
    if result["train_output_error"] <= OUTPUT_TOLERANCE and result["train_gradient_error"] <= GRADIENT_TOLERANCE:
        return True
    steps = [v for v in result["phases"].values() if "gradient_error_vs_float64" in v]
    return bool(steps) and all(
        v["output_error_vs_float64"] <= max(FLOAT64_MARGIN * v["eager_output_error_vs_float64"], OUTPUT_TOLERANCE)
        and v["gradient_error_vs_float64"]
        <= max(FLOAT64_MARGIN * v["eager_gradient_error_vs_float64"], GRADIENT_TOLERANCE)
        for v in steps
    )


# ------------------------------------------------------------------------------------------------------ driver
SIZES = ("tiny", "narrow", "full")


def narrow_plan(plan: Plan) -> Plan:
    """The plan with ``tiny_plan``'s features (/ 8) but its own patch: the graph of the plans' own network (the same
    stages, blocks and routed-attention regions: flex is picked where the plans' network picks it), cheap to run."""
    cfg = json.loads(json.dumps(tiny_plan(plan).configuration))
    for name in ("patch_size", "median_image_size_in_voxels"):
        cfg[name] = plan.configuration[name]
    return Plan(plan.name, plan.source + " (narrow: features / 8, the plans' patch)", cfg, plan.dataset_json)


def sized_plan(name: str, size: str) -> Plan:
    plan = load_plan(name)
    return {"tiny": tiny_plan, "narrow": narrow_plan, "full": lambda p: p}[size](plan)


def case_key(plan: str, network: str, size: str, checkpointing: bool, backend: str) -> str:
    """``plan (size) +ckpt/network/backend``; the table's first column is the part before the first "/"."""
    return f"{plan}{'' if size == 'full' else f' ({size})'}{' +ckpt' if checkpointing else ''}/{network}/{backend}"


def run_isolated(
    plan: str,
    network: str,
    size: str,
    backend: str,
    checkpointing: bool,
    phases: tuple[str, ...],
    cache_dir: Path,
    timeout: float,
) -> dict[str, Any]:
    """:func:`run_case` in a fresh process (its own dynamo and inductor state) on the inductor cache ``cache_dir``."""
    args = [sys.executable, "-m", "benchmarks.compile", "--case", plan, network, "--backend", backend]
    args += ["--size", size, "--phases", ",".join(phases)] + ["--checkpointing"] * checkpointing
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir), PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"network": network, "plan": plan, "failed": f"did not finish in {timeout:.0f} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return {"network": network, "plan": plan, "failed": f"exit {done.returncode}: {tail}"}
    result = json.loads(lines[-1])
    result["process_s"] = round(time.perf_counter() - t, 1)
    return result


def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"cases": {}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = load_results(args.out)
    results.update(
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)",
        torch=torch.__version__,
        tolerances={"output": OUTPUT_TOLERANCE, "gradient": GRADIENT_TOLERANCE},
    )
    for plan in args.plans:
        for network in args.networks:
            key = case_key(plan, network, args.size, args.checkpointing, args.backend)
            if key in results["cases"] and "failed" not in results["cases"][key] and not args.force:
                continue
            case = (plan, network, args.size, args.backend, args.checkpointing, args.phases)
            with tempfile.TemporaryDirectory(prefix="compile-cache-") as fresh:
                cache = Path(args.cache_dir or fresh)
                entry = run_isolated(*case, cache_dir=cache, timeout=args.timeout)
                if args.warm and "failed" not in entry:
                    again = run_isolated(*case, cache_dir=cache, timeout=args.timeout)
                    entry["warm_compile_s"] = again.get("compile_s")
                    entry["warm_timers_s"] = again.get("timers_s")
            entry["command"] = " ".join(["python -m benchmarks.compile", *args.argv])
            # after every case (a rerun resumes), re-read: runs with other settings may share the file
            results["cases"] = {**load_results(args.out)["cases"], key: entry}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            print(key, summary_line(entry), flush=True)
    return results


# ------------------------------------------------------------------------------------------------------ report
def _e(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1e}"


def summary_line(entry: dict[str, Any]) -> str:
    if "failed" in entry:
        return entry["failed"]
    return (
        f"compile {entry['compile_s']} s, breaks {entry['graph_breaks']}, recompilations {entry['recompilations']}, "
        f"errors {_e(entry['train_output_error'])}/{_e(entry['train_gradient_error'])}/"
        f"{_e(entry['inference_output_error'])}"
    )


def _vs_float64(entry: dict[str, Any]) -> str:
    v = entry.get("train_vs_float64")
    if not v:
        return "–"  # measured before the float64 reference existed
    return (
        f"{_e(v['output_error_vs_float64'])} / {_e(v['eager_output_error_vs_float64'])}; "
        f"{_e(v['gradient_error_vs_float64'])} / {_e(v['eager_gradient_error_vs_float64'])}"
    )


def _graphs(phases: dict[str, Any], names: tuple[str, ...], field: str) -> str:
    return "/".join(str(phases[p][field]) if p in phases else "–" for p in names)


def render(results: dict[str, Any]) -> str:
    tol = results["tolerances"]
    lines = [
        f"<!-- written by benchmarks/compile.py from {RESULTS.relative_to(ROOT)}: do not edit -->",
        f"torch {results['torch']}, {results['machine']}. Errors: max |compiled − eager| / max |eager| "
        f"(tolerances: outputs {tol['output']:.0e}, gradients {tol['gradient']:.0e}; beyond them, a training step "
        f"passes when the compiled step is within {FLOAT64_MARGIN:g}x eager float32's own error against a float64 copy "
        "of the network, column 'vs float64', largest over the steps); training: outputs and every "
        "parameter's gradient of nnU-Net's deep-supervision loss; inference: validation and deep supervision off. "
        "Graph breaks and graphs compiled per phase: training / partial batch / validation / back to training / "
        "inference (– : phase not run). Flex: flex-attention calls in the inference graph / routed (non-dense) "
        "attention calls of an eager forward. Compile s: the first compiled training step minus an eager step "
        "(cold inductor cache); stages: seconds in dynamo's bytecode tracing / AOTAutograd's tracing / inductor's "
        "lowering / its code generation / the wait for the C++ compiler, over all phases run (dynamo's timers; "
        "the rest of the compile is Python around them).",
        "",
        "| plan | network | backend | compile s | stages s (trace/aot/lower/codegen/C++) | graph breaks | graphs "
        "| flex | train out err | train grad err | vs float64: compiled / eager (out; grad) | inference err | ok |",
        "|---|---|---|---:|---|---|---|---|---:|---:|---|---:|---|",
    ]
    names = ("train", "partial_batch", "validation", "train_after_validation", "inference")
    for key, e in sorted(results["cases"].items()):
        plan, network = key.split("/")[:2]
        label = NETWORKS[network].label if network in NETWORKS else network
        if "failed" in e:
            backend = key.split("/")[2] if key.count("/") > 1 else "–"
            lines.append(f"| {plan} | {label} | {backend} | {e['failed']} | | | | | | | | | no |")
            continue
        ph, st = e["phases"], stage_times(e["timers_s"])
        stages = "/".join(str(st[name]) for name in STAGES)
        if e.get("warm_compile_s") is not None:
            stages += f" (warm cache: {e['warm_compile_s']} s)"
        inference = ph.get("inference", {})
        flex = f"{inference['flex_in_graph']}/{inference['flex_expected']}" if inference else "–"
        lines.append(
            f"| {plan} | {label} | {e['backend']} | {e['compile_s']} | {stages} | "
            f"{_graphs(ph, names, 'graph_breaks')} | {_graphs(ph, names, 'graphs')} | {flex} | "
            f"{_e(e['train_output_error'])} | {_e(e['train_gradient_error'])} | {_vs_float64(e)} | "
            f"{_e(e['inference_output_error'])} | "
            f"{'yes' if e['within_tolerance'] else 'no'} |"
        )
    commands = sorted({e["command"] for e in results["cases"].values() if "command" in e})
    lines += ["", "Made by:", "", *[f"    {c}" for c in commands]]
    return "\n".join(lines)


def update_docs(results: dict[str, Any], docs: Path = DOCS) -> None:
    update_section(docs, render(results), MARKERS)


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", default=",".join(PLANS), help="comma-separated plans in benchmarks/plans")
    ap.add_argument("--networks", default=",".join(METHODS), help="comma-separated: " + ", ".join(NETWORKS))
    ap.add_argument("--size", choices=SIZES, default="full", help="tiny: tiny_plan; narrow: features / 8, own patch")
    ap.add_argument("--tiny", action="store_true", help="the same as --size tiny")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, aot_eager, eager)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the attention blocks")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of: " + ", ".join(PHASES))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--cache-dir", type=Path, help="TORCHINDUCTOR_CACHE_DIR for every case (default: fresh per case)")
    ap.add_argument("--warm", action="store_true", help="compile each case twice on one cache; report both")
    ap.add_argument("--force", action="store_true", help="rerun cases already in the results")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--update-docs", action="store_true", help="write the BENCHMARKS.md section afterwards")
    ap.add_argument("--docs-only", action="store_true", help="only write the BENCHMARKS.md section")
    ap.add_argument("--case", nargs=2, metavar=("PLAN", "NETWORK"), help=argparse.SUPPRESS)  # one case, JSON out
    args = ap.parse_args(argv)
    args.argv = argv
    args.size = "tiny" if args.tiny else args.size
    args.phases = tuple(args.phases.split(","))
    if args.case:
        plan = sized_plan(args.case[0], args.size)
        result = run_case(args.case[1], plan, args.backend, args.checkpointing, args.phases)
        print(json.dumps(result))
        return
    if args.docs_only:
        update_docs(load_results(args.out))
        return
    args.plans, args.networks = args.plans.split(","), args.networks.split(",")
    results = run(args)
    if args.update_docs:
        update_docs(results)


if __name__ == "__main__":
    main()

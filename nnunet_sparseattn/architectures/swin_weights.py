"""Transfer learning without downloads: a local timm Swin checkpoint mapped onto the ISAMs of a network.

The paper initialises its Swin blocks from ImageNet weights. Nothing is downloaded here: the user gives a local
file (``nnUNet_sparseattn_swin_weights=/path/swin_tiny_patch4_window7_224.pth``; ``.pth``/``.pt``/``.bin`` through
``torch.load`` without unpickling code, or ``.safetensors``), in timm's Swin state-dict layout::

    layers.<stage>.blocks.<block>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}
    layers.<stage>.blocks.<block>.attn.relative_position_bias_table          ((2w - 1)^2, heads)

(the original Microsoft checkpoints use the same block names; ``{'model': sd}`` / ``{'state_dict': sd}`` wrappers
and a ``module.`` or ``backbone.`` prefix are accepted).

Mapping rules:
- an ISAM of width d takes the Swin stage of width d (Swin-T/S: 96, 192, 384, 768; Swin-B: 128, ...) and the same
  number of heads; an ISAM no Swin stage matches keeps its initialisation (reported);
- ISAM block j takes Swin block j; a stage with fewer blocks than the ISAM (Swin-T's first stages have 2) is
  repeated, keeping the shifted / not-shifted alternation (block j from block j mod depth);
- the relative position bias table is fitted to the ISAM's window: centre-cropped where the window is smaller (the
  offsets it keeps are exactly the checkpoint's), bicubically resized where it is larger; for 3D the 2D table is
  inflated over the depth offsets (every depth offset gets the in-plane bias: I3D-style inflation of a 2D prior);
- linear and norm weights act per token, so they are the same in 2D and 3D; a tensor whose shape differs (another
  MLP ratio) is skipped with its reason. Patch embedding, patch merging, the final norm and the classifier have no
  counterpart in ISAM and are reported as unused.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.layers.isam import ISAM
from nnunet_sparseattn.layers.window_attention import SwinBlock

__all__ = [
    "SWIN_WEIGHTS_ENV",
    "SwinLoadReport",
    "SwinStage",
    "fit_bias_table",
    "load_swin_into",
    "map_swin_onto_isams",
    "read_swin_state_dict",
    "swin_stages",
]

SWIN_WEIGHTS_ENV = "nnUNet_sparseattn_swin_weights"

_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)$")
_BLOCK_PARAMS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "attn.relative_position_bias_table",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
_EXPECTED = (
    "timm's Swin layout: layers.<stage>.blocks.<block>.attn.qkv.weight, ...attn.relative_position_bias_table, "
    "...mlp.fc1.weight (e.g. timm.create_model('swin_tiny_patch4_window7_224').state_dict())"
)


@dataclass
class SwinStage:
    index: int
    width: int
    heads: int
    window: int
    blocks: list[dict[str, torch.Tensor]]


@dataclass
class SwinLoadReport:
    source: str
    loaded: list[tuple[str, str, str]] = field(default_factory=list)  # (target, source key, how)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (target or source, why)
    unused: list[str] = field(default_factory=list)  # checkpoint keys with no counterpart in ISAM

    def summary(self) -> str:
        lines = [
            f"Swin weights from {self.source}: {len(self.loaded)} tensors loaded, {len(self.skipped)} "
            f"skipped, {len(self.unused)} checkpoint tensors without a counterpart in ISAM"
        ]
        by_module: dict[str, list[str]] = defaultdict(list)
        for target, source, how in self.loaded:
            module = target.rsplit(".blocks.", 1)[0]
            by_module[module].append(f"{target.split(module + '.', 1)[1]} <- {source}" + (f" ({how})" if how else ""))
        for module, entries in by_module.items():
            lines.append(f"  loaded into {module}: " + "; ".join(entries))
        for target, why in self.skipped:
            lines.append(f"  skipped {target}: {why}")
        if self.unused:
            groups = sorted({re.sub(r"\.\d+\.", ".*.", k).split(".weight")[0].split(".bias")[0] for k in self.unused})
            lines.append("  unused checkpoint tensors: " + ", ".join(groups))
        return "\n".join(lines)


def _unwrap(obj: Any) -> Any:
    for key in ("model", "state_dict", "model_state", "network_weights"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def read_swin_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local Swin checkpoint, wrappers and prefixes removed; ``UserError`` when it is missing,
    not a state dict, or not in timm's Swin layout."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"Swin checkpoint {path} does not exist: set {SWIN_WEIGHTS_ENV} to a local timm Swin "
            "state dict (.pth or .safetensors)"
        )
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors comes with timm
            raise UserError(
                f"{path} is a .safetensors file but safetensors is not installed: pip install safetensors"
            ) from None
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as error:
            raise UserError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"{path} is not a PyTorch state dict that loads without running code ({first}); "
                f"save one with torch.save(model.state_dict(), path)"
            ) from None
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors): expected {_EXPECTED}")
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "backbone.", "encoder.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    if not any(_BLOCK_KEY.match(k) for k in state):
        sample = ", ".join(list(state)[:3])
        raise UserError(f"{path} has no Swin blocks (wrong layout: its keys look like {sample}); expected {_EXPECTED}")
    return state


def swin_stages(state: Mapping[str, torch.Tensor]) -> dict[int, SwinStage]:
    """The checkpoint's Swin stages: width, heads, window and each block's tensors."""
    blocks: dict[int, dict[int, dict[str, torch.Tensor]]] = defaultdict(dict)
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match and match.group(3) in _BLOCK_PARAMS:
            blocks[int(match.group(1))].setdefault(int(match.group(2)), {})[match.group(3)] = value
    stages = {}
    for s, by_index in sorted(blocks.items()):
        ordered = [by_index[i] for i in sorted(by_index)]
        first = ordered[0]
        if "attn.qkv.weight" not in first or "attn.relative_position_bias_table" not in first:
            raise UserError(
                f"Swin stage {s} of the checkpoint lacks attn.qkv.weight or the relative position bias "
                f"table: expected {_EXPECTED}"
            )
        rows, heads = first["attn.relative_position_bias_table"].shape
        side = math.isqrt(int(rows))
        if side * side != rows or side % 2 == 0:
            raise UserError(
                f"Swin stage {s}: a relative position bias table of {rows} rows is not (2w - 1)^2 for a "
                "square window; only square 2D windows are supported"
            )
        stages[s] = SwinStage(s, int(first["attn.qkv.weight"].shape[1]), int(heads), (side + 1) // 2, ordered)
    return stages


def _fit_axis(table: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Centre-crop ``table`` along ``axis`` to ``size`` (sizes are odd: 2 w - 1)."""
    start = (table.shape[axis] - size) // 2
    return table.narrow(axis, start, size)


def fit_bias_table(table: torch.Tensor, source_window: int, window: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """A 2D Swin bias table ((2w - 1)^2, heads) fitted to ``window`` (2D (h, w) or 3D (d, h, w)); returns the table
    (prod(2 window - 1), heads) and how it was changed ('' when copied as is)."""
    heads = table.shape[1]
    side = 2 * source_window - 1
    grid = table.reshape(side, side, heads)
    plane = window[-2:]
    target = [2 * w - 1 for w in plane]
    how = []
    # crop the axes that shrink (exact), then resize the ones that grow (interpolated)
    for axis, size in enumerate(target):
        if size < side:
            grid = _fit_axis(grid, axis, size)
    if any(size > side for size in target):
        grown = [max(t, g) for t, g in zip(target, grid.shape[:2])]
        grid = (
            F.interpolate(grid.permute(2, 0, 1)[None].float(), size=grown, mode="bicubic", align_corners=True)[0]
            .permute(1, 2, 0)
            .to(table.dtype)
        )
        how.append(f"resized {side}x{side} -> {grown[0]}x{grown[1]}")
    elif list(grid.shape[:2]) != [side, side]:
        how.append(f"cropped {side}x{side} -> {grid.shape[0]}x{grid.shape[1]}")
    if len(window) == 3:
        depth = 2 * window[0] - 1
        grid = grid[None].expand(depth, *grid.shape).contiguous()
        how.append(f"inflated to 3D over {depth} depth offsets")
    return grid.reshape(-1, heads), ", ".join(how)


def _copy_block(
    report: SwinLoadReport,
    used: set[str],
    target_block: str,
    block: SwinBlock,
    stage: SwinStage,
    m: int,
    repeated: bool,
) -> None:
    """Copy Swin block ``m`` of ``stage`` into ``block`` (named ``target_block``; ``repeated``: another block's
    copy), tensor by tensor, the relative position bias fitted to the block's window; what does not fit is reported
    and left as it was."""
    params = dict(block.named_parameters())
    for key in _BLOCK_PARAMS:
        src_key = f"layers.{stage.index}.blocks.{m}.{key}"
        target = f"{target_block}.{key}"
        if key not in stage.blocks[m]:
            report.skipped.append((target, f"{src_key} is not in the checkpoint"))
            continue
        value = stage.blocks[m][key]
        how = "repeated" if repeated else ""
        if key == "attn.relative_position_bias_table":
            value, fitted = fit_bias_table(value, stage.window, block.window)
            how = ", ".join(h for h in (how, fitted) if h)
        if tuple(value.shape) != tuple(params[key].shape):
            report.skipped.append(
                (target, f"{src_key} has shape {tuple(value.shape)}, this block {tuple(params[key].shape)}")
            )
            continue
        with torch.no_grad():
            params[key].copy_(value.to(params[key].dtype))
        report.loaded.append((target, src_key, how))
        used.add(src_key)


def map_swin_onto_isams(
    network: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict", repeat_blocks: bool = True
) -> SwinLoadReport:
    """Copy the matching Swin tensors into every ISAM of ``network`` (in place); returns what was done."""
    report = SwinLoadReport(source)
    stages = swin_stages(state)
    used: set[str] = set()
    isams = [(name, m) for name, m in network.named_modules() if isinstance(m, ISAM)]
    if not isams:
        raise UserError("this network has no ISAM to load Swin weights into")
    for name, isam in isams:
        matches = [st for st in stages.values() if st.width == isam.dim]
        if not matches:
            widths = ", ".join(str(st.width) for st in stages.values())
            report.skipped.append(
                (
                    f"{name} (width {isam.dim})",
                    f"no Swin stage of width {isam.dim} in the "
                    f"checkpoint (its widths: {widths}); kept its initialisation",
                )
            )
            continue
        stage = matches[-1]
        if stage.heads != isam.num_heads:
            report.skipped.append(
                (
                    name,
                    f"Swin stage {stage.index} has {stage.heads} heads, this ISAM "
                    f"{isam.num_heads}; kept its initialisation",
                )
            )
            continue
        depth = len(stage.blocks)
        for j, block in enumerate(isam.blocks):
            if j < depth:
                m = j
            elif repeat_blocks:
                m = j % depth if depth % 2 == 0 else max(i for i in range(depth) if i % 2 == j % 2)
            else:
                report.skipped.append((f"{name}.blocks.{j}", f"Swin stage {stage.index} has only {depth} blocks"))
                continue
            _copy_block(report, used, f"{name}.blocks.{j}", cast(SwinBlock, block), stage, m, repeated=m != j)
    report.unused = [k for k in state if k not in used]
    return report


def load_swin_into(network: nn.Module, path: str | Path, repeat_blocks: bool = True) -> SwinLoadReport:
    """Read the checkpoint at ``path`` and map it onto ``network``'s ISAMs; ``UserError`` when nothing matches."""
    report = map_swin_onto_isams(network, read_swin_state_dict(path), str(path), repeat_blocks)
    if not report.loaded:
        raise UserError(
            f"nothing of {path} fits this network's ISAMs: "
            + "; ".join(f"{t}: {why}" for t, why in report.skipped[:3])
            + ". Use a checkpoint whose stage widths match the ISAM widths (swin_embed_dim)"
        )
    return report

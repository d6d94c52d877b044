"""``nnunet-sparseattn plan``: a variant plans file derived from a dataset's existing nnU-Net plans.

nnU-Net's ``-pl`` only searches inside nnunetv2, so no planner of ours can be named there. We do not need one:
a variant keeps every decision of the source plans (spacing, normalisation, patch and batch size, stages,
kernels, strides, widths) and changes only each configuration's ``architecture``: the dotted path of our network
and its attention settings, chosen for that configuration's patch size. ``data_identifier`` is kept, so the
variant trains on the default preprocessed data without preprocessing again, with the STOCK trainer::

    nnunet-sparseattn plan -d 4 --variant bsa       # writes nnUNetPlans_BSA.json
    nnUNetv2_train 4 3d_fullres 0 -p nnUNetPlans_BSA
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from nnunet_sparseattn.architectures.base import PlansError, serialize_arch_kwargs
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.plans.variants import get_variant, network_class


def _dataset_folder(dataset: int | str, preprocessed_root: Optional[Path]) -> Path:
    root = preprocessed_root or os.environ.get("nnUNet_preprocessed")
    if not root:
        raise UserError("nnUNet_preprocessed is not set: export nnUNet_preprocessed=/path/to/nnUNet_preprocessed")
    root = Path(root)
    if isinstance(dataset, str) and dataset.startswith("Dataset"):
        folder = root / dataset
    else:
        try:
            ident = int(dataset)
        except ValueError:
            raise UserError(f"dataset {dataset!r} is neither an id (4) nor a name (Dataset004_Hippocampus)") from None
        found = sorted(root.glob(f"Dataset{ident:03d}_*"))
        if not found:
            raise UserError(f"no Dataset{ident:03d}_* in {root}: run nnUNetv2_plan_and_preprocess -d {ident} first")
        folder = found[0]
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: run nnUNetv2_plan_and_preprocess for this dataset first")
    return folder


def variant_plans(
    plans: Mapping[str, Any],
    variant: str,
    configurations: Optional[Sequence[str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """A copy of ``plans`` whose configurations build ``variant``'s network (refused per stage if it cannot)."""
    v = get_variant(variant)
    cls = network_class(v)
    out = copy.deepcopy(dict(plans))
    out["plans_name"] = f"{plans['plans_name']}_{v.plans_suffix}"
    names = list(configurations) if configurations else list(plans["configurations"])
    unknown = [c for c in names if c not in plans["configurations"]]
    if unknown:
        raise UserError(f"configuration(s) {unknown} not in these plans; they have {list(plans['configurations'])}")
    changed = []
    for name in names:
        conf = out["configurations"][name]
        if "architecture" not in conf:  # e.g. 3d_cascade_fullres inherits its parent's architecture
            continue
        try:
            kwargs = cls.resolve_arch_kwargs(conf["architecture"]["arch_kwargs"], conf["patch_size"], overrides)
        except PlansError as error:
            raise PlansError(f"configuration {name}: {error}") from None
        arch_kwargs, requires_import = serialize_arch_kwargs(kwargs)
        conf["architecture"] = {
            "network_class_name": v.network_class,
            "arch_kwargs": arch_kwargs,
            "_kw_requires_import": requires_import,
        }
        changed.append(name)
    if not changed:
        raise UserError(f"none of the configurations {names} defines an architecture to replace")
    return out


def write_variant_plans(
    dataset: int | str,
    variant: str,
    source_plans: str = "nnUNetPlans",
    configurations: Optional[Sequence[str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    preprocessed_root: Optional[Path] = None,
) -> Path:
    """Write ``<source_plans>_<SUFFIX>.json`` beside the source plans; returns its path."""
    folder = _dataset_folder(dataset, preprocessed_root)
    source = folder / f"{source_plans}.json"
    if not source.is_file():
        raise UserError(
            f"{source} does not exist: run nnUNetv2_plan_and_preprocess -d {dataset} first "
            f"(or name existing plans with --plans)"
        )
    plans = json.loads(source.read_text())
    out = variant_plans(plans, variant, configurations, overrides)
    target = folder / f"{out['plans_name']}.json"
    target.write_text(json.dumps(out, indent=4, sort_keys=False))
    return target

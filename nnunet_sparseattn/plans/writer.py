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
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from nnunet_sparseattn.architectures.base import PlansError, serialize_arch_kwargs
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.outputs import write_text_whole
from nnunet_sparseattn.plans.variants import get_variant, network_class


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
    source: Path,
    variant: str,
    configurations: Optional[Sequence[str]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``<source plans>_<SUFFIX>.json`` beside the plans file ``source`` (found by the caller: the command line
    looks it up in ``nnUNet_preprocessed``); returns its path."""
    source = Path(source)
    plans = json.loads(source.read_text())
    out = variant_plans(plans, variant, configurations, overrides)
    target = source.parent / f"{out['plans_name']}.json"
    return write_text_whole(target, json.dumps(out, indent=4, sort_keys=False))

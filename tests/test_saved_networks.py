"""Weights saved by a released version load into today's networks and give the outputs they gave then.

The files are written by ``tests/data/make_reference_networks.py`` (small 2D and 3D configurations of every network,
with sparse routing, padded and shifted Swin windows and the rendering module on). A failure here means a state-dict
key or a numerical result changed: if on purpose, bump the version, say so in CHANGELOG.md and write new files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_sparseattn.plans import VARIANTS
from tests.data.make_reference_networks import build

DATA = Path(__file__).parent / "data"

SAVED = sorted(DATA.glob("networks-*/*.pt"))


def test_there_are_saved_networks_of_every_kind():
    kinds = {path.stem for path in SAVED}
    for variant in VARIANTS:  # every registered method, from the release that added it on
        for ndim in (2, 3):
            assert f"{variant}_{ndim}d" in kinds, f"no saved {variant} {ndim}D network: run make_reference_networks.py"
    assert {p.stem for p in SAVED if p.parent.name == "networks-0.2.0"} >= {
        "bsa_2d",
        "bsa_3d",
        "mdsa_2d",
        "mdsa_3d",
        "bilateral_2d",
        "bilateral_3d",
    }


@pytest.mark.parametrize("path", SAVED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_saved_weights_load_strictly_and_give_the_saved_outputs(path):
    saved = torch.load(path, weights_only=False)
    torch.set_num_threads(1)  # as when they were written: the same reduction order
    net = build(saved["variant"], saved["ndim"], True, saved["overrides"])
    net.load_state_dict(saved["state_dict"], strict=True)
    net.train()
    torch.manual_seed(1)  # the rendering module's random training points, as when saved
    with torch.no_grad():
        outputs = net(saved["input"])
    for out, ref in zip(outputs, saved["train_outputs"], strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # fp32 round-off
    inference = build(saved["variant"], saved["ndim"], False, saved["overrides"])
    inference.load_state_dict(saved["state_dict"], strict=True)
    inference.eval()
    with torch.no_grad():
        torch.testing.assert_close(inference(saved["input"]), saved["eval_output"], rtol=1e-5, atol=1e-5)

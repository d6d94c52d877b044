"""``nnunet-sparseattn explain`` on BSA-Seg in 2D (ISIC 2017, converted by convert_2d), the one network x dimension
no other end-to-end test trains. (The other five explain the models their own end-to-end tests train: BSA in 3D,
MDSA and the bilateral network in 2D and 3D, and the stock U-Net of ``nnUNetTrainerNB``.)

Slow (minutes): CI runs it.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_explained, explain

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerBSA_debug"


def test_explain_a_bsa_model_in_2d(isic_nnunet, trained_debug_model):
    run = isic_nnunet
    trained_debug_model(run, TRAINER)  # shared with the fresh-install test's export
    image = sorted(run["images"].glob("*.png"))[0]
    reference = run["labels"] / image.name.replace("_0000.png", ".png")
    out = run["work"] / "explain_bsa_2d"
    printed = explain(run, TRAINER, "2d", image, out, "--point", "64,50", "--reference", str(reference))
    summary = assert_explained(out, image, {"routed", "coarse"})
    assert summary["points"][0]["voxel"] == [64, 50]
    maps = np.load(out / "points" / "point_0" / "maps.npz")
    sparse = [m for m, e in summary["modules"].items() if e.get("points") and e["points"]["point 0"]["routed"]]
    assert sparse, summary["modules"]  # the 32 x 32 and 16 x 16 maps route (regions of 8 x 8 tokens)
    for module in sparse:
        entry = summary["modules"][module]["points"]["point 0"]
        regions = maps[f"{module}_regions"]
        assert regions[64, 50] == 2
        # the routed regions carry the routing weights explain.json lists for them
        routed = maps[f"{module}_routing"]
        np.testing.assert_allclose(np.unique(routed[routed > 0]), sorted(entry["routing_weights"]), atol=6e-5)
        assert f"{module} query region {entry['query_region']}" in printed
    assert "routing_foreground" in summary

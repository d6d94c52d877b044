"""What the layers expose for ``explain``: the records are what the layers computed, the hooks change no output, and
nothing is computed for an explanation when nobody explains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plans_cases import plain_arch

from nnunet_sparseattn.architectures.bilateral import BilateralUNet
from nnunet_sparseattn.architectures.bsa import BSAUNet
from nnunet_sparseattn.architectures.mdsa import MDSAUNet
from nnunet_sparseattn.explain.analysis import QueryPoint, RoutedView, routed_views
from nnunet_sparseattn.explain.geometry import Geometry, Patch, token_of
from nnunet_sparseattn.explain.recorder import Recorder, attention_modules
from nnunet_sparseattn.layers.bilevel_attention import coarse_region_attention
from nnunet_sparseattn.layers.routing import region_layout, route
from nnunet_sparseattn.layers.sparse_attention import compute_routing
from nnunet_sparseattn.layers.window_attention import (
    SwinBlock,
    WindowWeights,
    locate_in_windows,
    window_partition,
    window_token_positions,
)


def _plans(ndim: int, features=(8, 16, 32, 32)) -> dict:
    n = len(features)
    return plain_arch(ndim, list(features), [[3] * ndim] * n, [[1] * ndim] + [[2] * ndim] * (n - 1), n_conv=1)


def _networks():
    torch.manual_seed(0)
    return {
        "bsa_3d": (
            BSAUNet.from_plans(
                _plans(3),
                (16, 32, 32),
                1,
                3,
                False,
                overrides={"head_dim": 8, "topk": 2, "region_sizes": [None, None, [2, 4, 4], None]},
            ),
            (16, 32, 32),
        ),
        "mdsa_2d": (
            MDSAUNet.from_plans(_plans(2), (64, 64), 1, 3, False, overrides={"head_dim": 8, "topk": 2}),
            (64, 64),
        ),
        "bilateral_2d": (
            BilateralUNet.from_plans(
                _plans(2, (8, 16, 32)), (20, 24), 1, 3, False, overrides={"isam_depth": 2, "head_dim": 8}
            ),
            (20, 24),
        ),
        "bilateral_3d": (
            BilateralUNet.from_plans(
                _plans(3, (8, 16, 32)), (8, 12, 16), 1, 3, False, overrides={"isam_depth": 2, "head_dim": 8}
            ),
            (8, 12, 16),
        ),
    }


NETWORKS = _networks()


def _hooks(network) -> list:
    return [(name, list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in network.named_modules()]


def _count_window_weights(network) -> tuple[list[int], list]:
    calls = [0]
    handles = [
        m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in network.modules()
        if isinstance(m, WindowWeights)
    ]
    return calls, handles


@pytest.mark.parametrize("name", list(NETWORKS))
def test_recording_leaves_outputs_bit_identical_and_costs_nothing_without_a_recorder(name):
    network, patch = NETWORKS[name]
    network.eval()
    x = torch.randn(1, 1, *patch)
    before = _hooks(network)
    calls, counting = _count_window_weights(network)
    with torch.no_grad():
        plain = network(x)
        assert calls[0] == 0  # nobody explains: no explicit attention weights are computed
        centre = [p // 2 for p in patch]
        with Recorder(network, window_requests={0: [centre]}) as recorder:
            recorded = network(x)
        swin_blocks = len(attention_modules(network)["window"])
        assert calls[0] == swin_blocks  # one window per block, in the one patch asked for
        again = network(x)
    for handle in counting:
        handle.remove()
    assert torch.equal(plain, recorded) and torch.equal(plain, again)
    assert recorder.calls == 1
    assert any([recorder.routing, recorder.coarse, recorder.windows, recorder.channels, recorder.rendered])
    assert _hooks(network) == before  # closed: every hook of the recorder gone (the network's own stay)
    assert all(m.windows is None for m in network.modules() if isinstance(m, WindowWeights))
    for hooks in (torch.nn.modules.module._global_forward_hooks, torch.nn.modules.module._global_forward_pre_hooks):
        assert not hooks


def _attention_inputs(network, x):
    """The input each attention module received (captured without the recorder)."""
    seen = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=n: seen.__setitem__(name, args[0].detach()))
        for n, m in network.named_modules()
        if n in attention_modules(network)["routed"]
    ]
    with torch.no_grad():
        network(x)
    for h in handles:
        h.remove()
    return seen


def test_bsa_routing_drawn_is_the_routing_the_layer_computes():
    network, patch = NETWORKS["bsa_3d"]
    network.eval()
    x = torch.randn(1, 1, *patch)
    inputs = _attention_inputs(network, x)
    with torch.no_grad(), Recorder(network) as recorder:
        network(x)
    assert recorder.routing, "the BSA stages at 1/4 resolution route"
    # the identity geometry: the patch is the image
    geometry = Geometry(patch, (0, 1, 2), (0, 0, 0), patch, patch, (0, 0, 0))
    window = Patch(0, (None,) * 3, (0, 0, 0), patch)
    for record in recorder.routing:
        attn = network.get_submodule(record.module)
        with torch.no_grad():
            q, k, v = attn.qkv(inputs[record.module]).chunk(3, dim=1)
            layout = region_layout(q.shape[2:], attn.grid_for(q.shape[2:]))
            scores = coarse_region_attention(q, k, v, layout, attn.num_heads).scores
        np.testing.assert_array_equal(record.indices, route(scores, attn.topk)[0].numpy())
        np.testing.assert_allclose(record.weights(), torch.softmax(scores[0].double(), -1).numpy(), atol=1e-6)
        # every query region: the regions drawn (label 1 or the query's own) are exactly the routed ones
        for voxel in [(0, 0, 0), (15, 31, 31), (9, 3, 20)]:
            point = QueryPoint("p", voxel, voxel, window)
            views = [v for v in routed_views(recorder, [record.module], [point], patch) if v.module == record.module]
            view = views[0]
            token = token_of(voxel, record.query_layout.spatial, patch)
            assert view.query_token == token
            maps = view.maps(geometry)
            keys = view.key_ids(geometry)
            drawn = set(np.unique(keys[maps["regions"] == 1]).tolist())
            routed = set(record.indices[view.query_region].tolist())
            assert drawn == routed - {view.query_region}
            assert (maps["regions"][tuple(voxel)] == 2) and (view.query_region in routed) == bool(
                maps["routing"][tuple(voxel)] > 0
            )
            np.testing.assert_allclose(
                np.unique(maps["routing"][maps["routing"] > 0]),
                np.unique(record.weights()[view.query_region][list(routed)]),
                rtol=1e-6,
            )
            coarse = recorder.coarse[[c.module for c in recorder.coarse].index(record.module)].weights
            np.testing.assert_allclose(view.coarse, coarse[:, view.query_region].mean(0))


def test_mdsa_kept_key_regions_are_the_layers_routing():
    network, patch = NETWORKS["mdsa_2d"]
    network.eval()
    x = torch.randn(1, 1, *patch)
    inputs = _attention_inputs(network, x)
    with torch.no_grad(), Recorder(network) as recorder:
        network(x)
    assert recorder.routing
    for record in recorder.routing:
        attn = network.get_submodule(record.module)
        with torch.no_grad():
            y = inputs[record.module]
            q = attn.q(y)
            k, _ = attn.kv(attn.aggregate(y)).chunk(2, dim=1)
            expected = compute_routing(q, k, attn.regions(y.shape[2:]), attn.topk)
        np.testing.assert_array_equal(record.indices, expected[0].numpy())
        assert record.key_layout.num_regions > record.indices.shape[1]  # sparse: some key regions dropped


@pytest.mark.parametrize(
    "spatial,window,shift", [((6, 6), (3, 3), (1, 1)), ((5, 7), (3, 3), (1, 1)), ((4, 7, 5), (2, 3, 5), (1, 1, 0))]
)
def test_window_location_follows_the_blocks_padding_and_roll(spatial, window, shift):
    # what the block does: pad at the end, roll by -shift, cut into windows; each token carries its position
    padded = [-(-s // w) * w for s, w in zip(spatial, window)]
    coords = torch.stack(torch.meshgrid(*[torch.arange(p) for p in padded], indexing="ij"), dim=-1)
    rolled = torch.roll(coords, shifts=[-s for s in shift], dims=list(range(len(spatial))))
    windows = window_partition(rolled[None], window)[0]  # (nW, N, ndim): the original position of every token
    for index in range(windows.shape[0]):
        positions, valid = window_token_positions(index, spatial, window, shift)
        assert torch.equal(positions, windows[index])
        assert torch.equal(valid, (windows[index] < torch.tensor(spatial)).all(1))
        for token, position in enumerate(positions[valid].tolist()):
            assert locate_in_windows(position, spatial, window, shift) == (index, valid.nonzero()[token].item())


def test_window_weights_are_the_weights_the_fused_attention_used():
    torch.manual_seed(0)
    block = SwinBlock(8, 2, (3, 3), shift=True).eval()
    x = torch.randn(2, 5, 7, 8)
    captured = {}
    block.attn.qkv.register_forward_hook(lambda m, a, o: captured.__setitem__("qkv", o))
    block.attn.proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("attended", a[0]))
    block.attn.weights.register_forward_hook(lambda m, a, o: captured.__setitem__("weights", o))
    block.attn.weights.windows = (0, 4)
    with torch.no_grad():
        block(x)
    b, nw, n, c = captured["attended"].shape
    v = captured["qkv"].reshape(b, nw, n, 3, 2, c // 2)[:, :, :, 2].permute(0, 1, 3, 2, 4)  # (B, nW, h, N, d)
    weights = captured["weights"]  # (B, 2, h, N, N)
    assert weights.shape == (2, 2, 2, 9, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 2, 9))
    for j, w in enumerate((0, 4)):
        out = torch.matmul(weights[:, j], v[:, w].float())  # (B, h, N, d)
        attended = captured["attended"][:, w].reshape(b, n, 2, c // 2).transpose(1, 2)
        torch.testing.assert_close(out, attended, rtol=1e-5, atol=1e-5)
    # a masked key (other side of the shift's wrap, or padding) gets no weight
    assert (weights == 0).any()


def test_a_routed_view_of_a_dense_stage_has_nothing_routed():
    network, patch = NETWORKS["bsa_3d"]
    with torch.no_grad(), Recorder(network.eval()) as recorder:
        network(torch.randn(1, 1, *patch))
    dense = [m for m in attention_modules(network)["routed"] if not any(r.module == m for r in recorder.routing)]
    assert dense  # the bottleneck: one region
    window = Patch(0, (None,) * 3, (0, 0, 0), patch)
    views = routed_views(recorder, dense, [QueryPoint("p", (1, 1, 1), (1, 1, 1), window)], patch)
    assert all(isinstance(v, RoutedView) and v.dense and v.coarse is not None for v in views)


def test_routing_foreground_shares_agree_with_a_count_voxel_by_voxel():
    from nnunet_sparseattn.explain.analysis import routing_foreground
    from nnunet_sparseattn.explain.recorder import RoutingRecord

    rng = np.random.default_rng(0)
    patch = (4, 8, 12)  # the image is the window (identity geometry); the map is at half resolution
    layout = region_layout((2, 4, 6), (1, 2, 3))  # 6 regions of 2 x 2 x 2 tokens
    nr, k = layout.num_regions, 2
    indices = np.sort(np.stack([rng.choice(nr, k, replace=False) for _ in range(nr)]), axis=1)
    record = RoutingRecord("m", 0, indices, rng.standard_normal((nr, nr)).astype(np.float32), layout, layout)
    with Recorder(torch.nn.Identity()) as recorder:  # a record as the router's hook writes it
        recorder.routing.append(record)
    geometry = Geometry(patch, (0, 1, 2), (0, 0, 0), patch, patch, (0, 0, 0))
    reference = np.zeros(patch, np.int64)
    reference[0:2, 0:3, 0:4] = 1  # in regions 0 and 1 (one voxel column into region 1)
    reference[3, 7, 11] = 2  # one voxel, in the last region
    stats = routing_foreground(
        recorder, ["m"], geometry, [Patch(0, (None,) * 3, (0, 0, 0), patch)], reference, {1: "organ", 2: "nodule"}
    )

    def region(voxel):  # token = voxel // 2, region = token // 2 per axis, row-major over the grid (1, 2, 3)
        t = [v // 2 for v in voxel]
        return (t[1] // 2) * 3 + t[2] // 2

    foreground = {region(v) for v in zip(*np.nonzero(reference))}
    for value, name in ((1, "organ"), (2, "nodule")):
        voxels = list(zip(*np.nonzero(reference == value)))
        label_regions = {region(v) for v in voxels}
        routed = [indices[region(v)] for v in voxels]
        s = stats["m"][name]
        assert s["queries"] == len(voxels)
        assert s["routed_with_foreground"] == pytest.approx(
            np.mean([np.isin(r, list(foreground)).mean() for r in routed])
        )
        assert s["all_with_foreground"] == pytest.approx(len(foreground) / nr)
        assert s["routed_with_label"] == pytest.approx(
            np.mean([np.isin(r, list(label_regions)).mean() for r in routed])
        )
        others = [(r[r != region(v)], region(v)) for r, v in zip(routed, voxels)]
        assert s["routed_with_foreground_other"] == pytest.approx(
            np.mean([np.isin(o, list(foreground)).mean() if len(o) else 0.0 for o, _ in others])
        )
        assert s["all_with_foreground_other"] == pytest.approx(
            np.mean([len(foreground - {q}) / (nr - 1) for _, q in others])
        )

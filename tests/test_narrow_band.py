"""Tests of the narrow-band loss: the band against scipy distance-transform references, the loss values,
gradients and autocast behaviour, and the compound loss with nnU-Net's own Dice + CE and deep supervision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_sparseattn.losses import (
    NarrowBandCompoundLoss,
    NarrowBandLoss,
    narrow_band,
    narrow_band_radii_per_scale,
    radius_in_voxels,
)

# --------------------------------------------------------------------------------------------------
# scipy references (distance transforms only, no max pooling)
# --------------------------------------------------------------------------------------------------

_BIG = 1e4  # a spacing no in-patch distance along a single axis can reach


def _box_dilate_edt(mask: np.ndarray, radius) -> np.ndarray:
    """Dilation of `mask` by the box [-r_a, r_a] per axis, from Euclidean distance transforms.

    The pooling band uses a box (per-axis radii), not a ball, so the reference must build that same set.
    A box dilation is the composition of 1D dilations, one per axis; a 1D dilation along axis a keeps the
    voxels whose distance to the nearest set voxel ON THE SAME LINE is <= r_a. The EDT with spacing 1 on
    axis a and a huge spacing on the others measures exactly that distance (any voxel off the line is at
    least _BIG away). EDT only looks inside the array, like max_pool's -inf padding.
    """
    out = mask.astype(bool)
    for a, r in enumerate(radius):
        if not out.any():  # EDT of an array without zeros is undefined; dilating nothing gives nothing
            return out
        sampling = [_BIG] * mask.ndim
        sampling[a] = 1.0
        out = ndimage.distance_transform_edt(~out, sampling=sampling) <= r
    return out


def _box_dilate_cdt(mask: np.ndarray, r: int) -> np.ndarray:
    """Isotropic box dilation from the chessboard distance transform (max-norm ball = box): a check of
    the reference above that does not rely on separability."""
    mask = mask.astype(bool)
    if not mask.any():
        return mask
    return ndimage.distance_transform_cdt(~mask, metric="chessboard") <= r


def _reference_band(target: np.ndarray, radius, valid: np.ndarray | None = None, dilate=None) -> np.ndarray:
    """band = dilate(Y) - erode(Y) per (sample, channel), the contract's definition with the ignore mask:
    for dilation invalid voxels count as background, for erosion as foreground, then band *= valid.
    erode(Z) = complement of dilate(complement of Z)."""
    dilate = dilate or (lambda m: _box_dilate_edt(m, radius))
    b, k = target.shape[:2]
    band = np.zeros(target.shape, dtype=bool)
    for i in range(b):
        v = np.ones(target.shape[2:], bool) if valid is None else valid[i, 0].astype(bool)
        for c in range(k):
            y = target[i, c].astype(bool)
            dil = dilate(y & v)
            ero = ~dilate(~(y | ~v))  # erode(Y or invalid)
            band[i, c] = dil & ~ero & v
    return band


def _blobs(rng: np.random.Generator, shape, n: int, frac: float, sigma: float = 2.0) -> np.ndarray:
    """n random smooth binary blobs of `shape`, roughly `frac` of the voxels set (they touch the border)."""
    out = []
    for _ in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
        out.append(noise > np.quantile(noise, 1 - frac))
    return np.stack(out)


BAND_CASES = [
    # (shape, radius)
    ((37, 50), (2, 1)),
    ((64, 23), (1, 4)),
    ((7, 40, 33), (1, 3, 2)),
    ((12, 17, 9), (2, 1, 3)),
    ((5, 30, 31), (1, 2, 6)),
    ((6, 11, 13), (4, 0, 1)),  # a radius beyond the axis length, and 0 on an axis
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape,radius", BAND_CASES)
@pytest.mark.parametrize("with_valid", [False, True])
def test_band_matches_distance_transform_reference(seed, shape, radius, with_valid):
    rng = np.random.default_rng(seed)
    b, k = 2, 3
    target = np.stack([_blobs(rng, shape, k, frac=rng.uniform(0.1, 0.6)) for _ in range(b)])
    valid = None
    if with_valid:
        valid = ~np.stack([_blobs(rng, shape, 1, frac=0.25, sigma=1.5) for _ in range(b)])
    ref = _reference_band(target, radius, valid)
    got = narrow_band(torch.from_numpy(target).float(), radius, None if valid is None else torch.from_numpy(valid))
    assert got.dtype == torch.float32 and got.shape == target.shape
    assert set(np.unique(got.numpy())) <= {0.0, 1.0}
    np.testing.assert_array_equal(got.numpy().astype(bool), ref)
    assert ref.any()  # the cases are not trivially empty


@pytest.mark.parametrize("shape,r", [((30, 41), 2), ((9, 20, 17), 1), ((9, 20, 17), 3)])
def test_band_matches_chessboard_reference_isotropic(shape, r):
    rng = np.random.default_rng(7)
    target = _blobs(rng, shape, 2, frac=0.3)[None]
    valid = ~_blobs(rng, shape, 1, frac=0.2)[None]
    ref = _reference_band(target, (r,) * len(shape), valid, dilate=lambda m: _box_dilate_cdt(m, r))
    got = narrow_band(torch.from_numpy(target).float(), (r,) * len(shape), torch.from_numpy(valid).float())
    np.testing.assert_array_equal(got.numpy().astype(bool), ref)


def test_no_false_band_at_patch_border_2d():
    # Foreground = left half, cut by the top, bottom and left borders. Only the vertical interface
    # between columns 5 and 6 is a boundary: with radius 2 along columns the band is columns 4..7,
    # on every row (the interface reaches the borders), and nothing along the borders elsewhere.
    y = torch.zeros(1, 1, 10, 12)
    y[..., :, :6] = 1
    band = narrow_band(y, (1, 2))[0, 0]
    expected = torch.zeros(10, 12)
    expected[:, 4:8] = 1
    assert torch.equal(band, expected)
    np.testing.assert_array_equal(band.numpy().astype(bool), _reference_band(y.numpy(), (1, 2))[0, 0])


def test_no_false_band_at_patch_border_3d():
    # A target filling the whole patch has no boundary at all; one filling a corner block that touches
    # three borders has a band only along its three inner faces.
    full = torch.ones(1, 1, 5, 8, 7)
    assert narrow_band(full, (1, 2, 2)).sum() == 0
    y = torch.zeros(1, 1, 5, 8, 7)
    y[..., :3, :4, :3] = 1
    band = narrow_band(y, (1, 1, 1))[0, 0]
    assert band[0, 0, 0] == 0 and band[0, 0, 1] == 0  # deep inside the corner, on the borders
    assert band[2, 3, 2] == 1 and band[3, 4, 3] == 1  # on both sides of the inner corner
    assert band[4, 7, 6] == 0
    np.testing.assert_array_equal(band.numpy().astype(bool), _reference_band(y.numpy(), (1, 1, 1))[0, 0])


def test_ignore_region_creates_no_boundary():
    # All background except an ignored block: no band (the ignored block is neither fg nor bg).
    y = torch.zeros(1, 1, 20, 20)
    valid = torch.ones(1, 1, 20, 20, dtype=torch.bool)
    valid[..., 5:12, 5:12] = False
    assert narrow_band(y, (2, 2), valid).sum() == 0
    # Foreground adjacent to the ignored block: the fg/ignore edge makes no band, the fg/bg edge does.
    y[..., 12:16, 5:12] = 1
    band = narrow_band(y, (1, 1), valid)[0, 0]
    assert band[5:12, 5:12].sum() == 0  # nothing inside the ignored block
    assert band[12, 6:11].sum() == 0  # fg row touching the ignored block: no boundary there
    assert band[15, 8] == 1 and band[16, 8] == 1  # fg/bg interface
    assert band[11, 4] == 1 and band[12, 4] == 1  # the fg/bg edge at the block's corner is still there
    np.testing.assert_array_equal(band.numpy().astype(bool), _reference_band(y.numpy(), (1, 1), valid.numpy())[0, 0])


def test_band_input_validation():
    with pytest.raises(ValueError):
        narrow_band(torch.zeros(1, 1, 4, 4), (1, 1, 1))
    with pytest.raises(ValueError):
        narrow_band(torch.zeros(1, 1, 4, 4), (1, -1))
    with pytest.raises(ValueError):
        narrow_band(torch.zeros(1, 2, 4, 4), (1, 1), valid=torch.ones(1, 2, 4, 4))


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------


def _label_map(rng, b, shape, k):
    """(B, 1, *S) float label map with labels 0..k-1 from nested blobs (every class present)."""
    lab = np.zeros((b, *shape), np.float32)
    for c in range(1, k):
        lab[_blobs(rng, shape, b, frac=0.5 / c)] = c
    return torch.from_numpy(lab)[:, None]


def _case(dim: int, mode: str, ignore: bool, seed: int = 0):
    """logits-free inputs: target as nnU-Net passes it, the foreground / region channels Y, and valid."""
    rng = np.random.default_rng(seed)
    shape = (24, 19) if dim == 2 else (7, 16, 13)
    radius = (2, 1) if dim == 2 else (1, 2, 1)
    b = 2
    if mode == "softmax":
        k = 3
        t = _label_map(rng, b, shape, k)
        valid = torch.ones_like(t, dtype=torch.bool)
        if ignore:
            valid = ~torch.from_numpy(_blobs(rng, shape, b, frac=0.2))[:, None]
            t = torch.where(valid, t, torch.full_like(t, k))  # ignore label = k, as nnU-Net numbers it
        y = torch.cat([(t == c).float() for c in range(k)], 1)  # class channels incl. background
        return t, y, valid, radius, k, shape
    r = 2
    regions = torch.from_numpy(np.stack([_blobs(rng, shape, r, frac=0.4) for _ in range(b)])).float()
    regions[:, 1] *= regions[:, 0]  # nested regions, as in BraTS-style region training
    valid = torch.ones(b, 1, *shape, dtype=torch.bool)
    t = regions
    if ignore:
        valid = ~torch.from_numpy(_blobs(rng, shape, b, frac=0.2))[:, None]
        t = torch.cat([regions, (~valid).float()], 1)  # ignore mask as the LAST channel
    return t, regions, valid, radius, r, shape


MODES = [("softmax", False), ("softmax", True), ("sigmoid", False), ("sigmoid", True)]


def _perfect_logits(mode, y):
    return 30.0 * (2 * y - 1) if mode == "sigmoid" else 30.0 * y


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("mode,ignore", MODES)
@pytest.mark.parametrize("batch_dice", [False, True])
def test_loss_perfect_wrong_and_gradient(dim, mode, ignore, batch_dice):
    t, y, valid, radius, k, shape = _case(dim, mode, ignore)
    loss_fn = NarrowBandLoss(
        radius,
        apply_nonlin=mode,
        ignore_label=(k if mode == "softmax" else 1) if ignore else None,
        batch_dice=batch_dice,
    )
    torch.manual_seed(0)
    noise = 10 * torch.randn(y.shape)
    # perfect where it counts; ignored voxels get random logits, which must not matter
    logits = torch.where(valid, _perfect_logits(mode, y), noise)
    perfect = loss_fn(logits, t)
    assert perfect.ndim == 0 and perfect.item() < 1e-3

    # wrong: everything predicted background (softmax) / outside every region (sigmoid)
    wrong_target = torch.zeros_like(y)
    if mode == "softmax":
        wrong_target[:, 0] = 1
    assert loss_fn(_perfect_logits(mode, wrong_target), t).item() > 0.5

    logits = torch.randn(y.shape, requires_grad=True)
    loss = loss_fn(logits, t)
    loss.backward()
    assert 0 < loss.item() < 1
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    if ignore:  # no gradient reaches ignored voxels
        assert (logits.grad * (~valid)).abs().sum() == 0


def _hand_loss(logits, y_fg, band, batch_dice, smooth=1e-5):
    axes = tuple(([0] if batch_dice else []) + list(range(2, logits.ndim)))
    p = logits
    inter = (band * p * y_fg).sum(axes)
    denom = (band * (p + y_fg)).sum(axes)
    nb = 1 - (2 * inter + smooth) / (denom + smooth)
    has = band.sum(axes) > 0
    return nb[has].mean()


@pytest.mark.parametrize("mode,ignore", MODES)
@pytest.mark.parametrize("batch_dice", [False, True])
def test_loss_equals_formula_on_reference_band(mode, ignore, batch_dice):
    t, y, valid, radius, k, shape = _case(3, mode, ignore, seed=3)
    ignore_label = (k if mode == "softmax" else 1) if ignore else None
    loss_fn = NarrowBandLoss(radius, apply_nonlin=mode, ignore_label=ignore_label, batch_dice=batch_dice)
    torch.manual_seed(1)
    logits = torch.randn(y.shape, dtype=torch.float64)
    if mode == "softmax":
        p, y_fg = torch.softmax(logits, 1)[:, 1:], y[:, 1:]
    else:
        p, y_fg = torch.sigmoid(logits), y
    band = torch.from_numpy(_reference_band(y_fg.numpy() > 0.5, radius, valid.numpy())).double()
    expected = _hand_loss(p, y_fg.double(), band, batch_dice)
    torch.testing.assert_close(loss_fn(logits, t).double(), expected, rtol=1e-5, atol=1e-6)


def test_loss_only_sees_the_band():
    t, y, valid, radius, k, shape = _case(2, "softmax", False)
    loss_fn = NarrowBandLoss(radius)
    band = narrow_band(y[:, 1:], radius).amax(1, keepdim=True).bool()
    torch.manual_seed(2)
    logits = torch.randn(y.shape)
    changed = torch.where(band, logits, 5 * torch.randn(y.shape))
    torch.testing.assert_close(loss_fn(logits, t), loss_fn(changed, t))
    assert loss_fn(torch.where(band, torch.randn(y.shape), logits), t) != loss_fn(logits, t)


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_no_band_anywhere_gives_connected_zero(mode):
    logits = torch.randn(2, 3, 8, 9, requires_grad=True)
    t = torch.zeros(2, 1, 8, 9) if mode == "softmax" else torch.ones(2, 3, 8, 9)  # no boundary
    loss = NarrowBandLoss((1, 1), apply_nonlin=mode)(logits, t)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("batch_dice", [False, True])
def test_mean_only_over_entries_with_a_band(batch_dice):
    # sample 0 has classes 1 and 2, sample 1 only background: entries without a band must not dilute the
    # mean, so an all-background prediction still scores ~1, not ~1/2 (or ~1/4).
    t = torch.zeros(2, 1, 12, 14)
    t[0, :, 2:6, 3:9] = 1
    t[0, :, 7:10, 4:12] = 2
    logits = torch.zeros(2, 3, 12, 14)
    logits[:, 0] = 30
    loss = NarrowBandLoss((1, 1), batch_dice=batch_dice)(logits, t)
    assert loss.item() > 0.99


def test_loss_input_validation():
    with pytest.raises(ValueError):
        NarrowBandLoss((1, 1), apply_nonlin="relu")
    with pytest.raises(ValueError):  # 2D radius on 3D output
        NarrowBandLoss((1, 1))(torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError):  # sigmoid with ignore expects one extra channel
        NarrowBandLoss((1, 1), apply_nonlin="sigmoid", ignore_label=1)(torch.randn(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))


def _autocast_dtypes():
    dts = [torch.bfloat16]
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            if torch.nn.functional.linear(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.float16:
                dts.append(torch.float16)
    except (RuntimeError, AssertionError):
        pass
    return dts


@pytest.mark.parametrize("amp_dtype", _autocast_dtypes())
@pytest.mark.parametrize("mode,ignore", [("softmax", True), ("sigmoid", False)])
def test_autocast_finite_and_close_to_fp32(amp_dtype, mode, ignore):
    t, y, valid, radius, k, shape = _case(3, mode, ignore, seed=5)
    loss_fn = NarrowBandLoss(
        radius, apply_nonlin=mode, ignore_label=(k if mode == "softmax" else 1) if ignore else None
    )
    torch.manual_seed(3)
    conv = torch.nn.Conv3d(2, y.shape[1], 3, padding=1)
    x = torch.randn(2, 2, *shape)
    ref = loss_fn(conv(x), t)
    with torch.autocast("cpu", dtype=amp_dtype):
        logits = conv(x)
        assert logits.dtype == amp_dtype  # the network really ran in low precision
        loss = loss_fn(logits, t)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) < 1e-2
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_low_precision_logits_use_fp32_probabilities(low, mode):
    # half-precision logits (e.g. a network run under autocast, loss called outside it) give exactly the
    # loss of the same values in fp32: the probabilities and sums are float32, not fp16/bf16.
    t, y, valid, radius, k, shape = _case(3, mode, False, seed=6)
    torch.manual_seed(4)
    logits = (3 * torch.randn(y.shape)).to(low)
    loss_fn = NarrowBandLoss(radius, apply_nonlin=mode)
    got = loss_fn(logits, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, loss_fn(logits.float(), t), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# radii and the compound loss with nnU-Net's own losses
# --------------------------------------------------------------------------------------------------


def test_radius_in_voxels():
    assert radius_in_voxels(2.5, (0.8, 0.8, 5)) == (3, 3, 1)
    assert radius_in_voxels(2.0, (1.0, 0.7)) == (2, 3)
    assert radius_in_voxels(0.1, (1.0, 1.0)) == (1, 1)  # never below one voxel
    assert radius_in_voxels(1.5, (1.0,)) == (2,)  # half rounds up
    for bad_r, bad_sp in [(0, (1, 1)), (-1, (1, 1)), (1, (1, 0)), (1, (1, -2)), (float("nan"), (1, 1))]:
        with pytest.raises(ValueError):
            radius_in_voxels(bad_r, bad_sp)


def test_radii_per_scale():
    # scales exactly as nnUNetTrainer._get_deep_supervision_scales() builds them from pool_op_kernel_sizes
    pools = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]]
    scales = list(list(i) for i in 1 / np.cumprod(np.vstack(pools), axis=0))[:-1]
    assert narrow_band_radii_per_scale(2.5, (0.8, 0.8, 5.0), scales) == [(3, 3, 1), (2, 2, 1), (1, 1, 1)]
    assert narrow_band_radii_per_scale(4.0, (0.5, 0.5), [[1, 1], [0.5, 0.5], [0.25, 0.25]]) == [(8, 8), (4, 4), (2, 2)]
    assert narrow_band_radii_per_scale(2.5, (0.8, 0.8, 5.0), None) == [(3, 3, 1)]
    with pytest.raises(ValueError):
        narrow_band_radii_per_scale(2.5, (0.8, 0.8, 5.0), [[1, 1]])


def _nnunet_base():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    # the arguments nnUNetTrainer._build_loss uses for label training (ddp off: single process)
    return DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        weight_ce=1,
        weight_dice=1,
        ignore_label=None,
        dice_class=MemoryEfficientSoftDiceLoss,
    )


def _ds_weights(n):
    w = np.array([1 / (2**i) for i in range(n)])
    w[-1] = 0  # as nnU-Net: the lowest output gets no weight
    return w / w.sum()


class _MustNotRun(NarrowBandLoss):
    def forward(self, net_output, target):
        raise AssertionError("NB loss of a zero-weight scale was evaluated")


def _ds_batch(seed=0):
    rng = np.random.default_rng(seed)
    full = (16, 20, 12)
    t0 = _label_map(rng, 2, full, 3)
    targets = [t0, t0[..., ::2, ::2, ::2], t0[..., ::4, ::4, ::4]]  # nearest downsampling, like nnU-Net's
    torch.manual_seed(seed)
    outputs = [torch.randn(2, 3, *tt.shape[2:], requires_grad=True) for tt in targets]
    return outputs, targets


def test_compound_with_nnunet_deep_supervision():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    weights = _ds_weights(3)
    base = DeepSupervisionWrapper(_nnunet_base(), weights)
    radii = narrow_band_radii_per_scale(2.0, (1.0, 0.8, 1.5), [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    nb = [NarrowBandLoss(radii[0]), NarrowBandLoss(radii[1]), _MustNotRun(radii[2])]
    loss_fn = NarrowBandCompoundLoss(base, nb, nb_weight=0.7, scale_weights=weights)
    outputs, targets = _ds_batch()
    total = loss_fn(outputs, targets)

    single = _nnunet_base()
    expected_base = sum(weights[i] * single(outputs[i], targets[i]) for i in range(2))
    expected_nb = sum(weights[i] * NarrowBandLoss(radii[i])(outputs[i], targets[i]) for i in range(2))
    expected = expected_base + 0.7 * expected_nb
    torch.testing.assert_close(total, expected.to(total.dtype))
    assert expected_nb.item() > 0.05  # the NB term is really there
    total.backward()
    assert outputs[0].grad.abs().sum() > 0 and outputs[1].grad.abs().sum() > 0
    assert outputs[2].grad is None  # zero-weight scale: neither base nor NB touched it


def test_compound_without_deep_supervision():
    base = _nnunet_base()
    nbl = NarrowBandLoss((1, 2, 1))
    loss_fn = NarrowBandCompoundLoss(base, [nbl], nb_weight=0.5)
    outputs, targets = _ds_batch(1)
    got = loss_fn(outputs[0], targets[0])
    torch.testing.assert_close(got, base(outputs[0], targets[0]) + 0.5 * nbl(outputs[0], targets[0]))
    with pytest.raises(ValueError):  # lists given but built without deep supervision
        loss_fn(outputs, targets)


def test_compound_count_mismatches_raise():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    weights = _ds_weights(3)
    base = DeepSupervisionWrapper(_nnunet_base(), weights)
    nb = [NarrowBandLoss((1, 1, 1)) for _ in range(3)]
    loss_fn = NarrowBandCompoundLoss(base, nb, nb_weight=1.0, scale_weights=weights)
    outputs, targets = _ds_batch()
    with pytest.raises(ValueError, match="mismatch"):
        loss_fn(outputs, targets[:2])
    with pytest.raises(ValueError, match="mismatch"):
        loss_fn(outputs[:2], targets[:2])
    with pytest.raises(ValueError):
        loss_fn(outputs[0], targets[0])  # a tensor where lists are expected
    with pytest.raises(ValueError):
        NarrowBandCompoundLoss(base, nb[:2], nb_weight=1.0, scale_weights=weights)
    with pytest.raises(ValueError):
        NarrowBandCompoundLoss(base, nb, nb_weight=1.0)  # three NB losses without deep supervision


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_band_and_fp16_autocast():
    # the band stays on the device (pure pooling) and equals the CPU one; fp16 autocast as nnU-Net trains
    t, y, valid, radius, k, shape = _case(3, "softmax", True, seed=8)
    band_cpu = narrow_band(y[:, 1:], radius, valid)
    band_gpu = narrow_band(y[:, 1:].cuda(), radius, valid.cuda())
    assert band_gpu.is_cuda and torch.equal(band_gpu.cpu(), band_cpu)
    loss_fn = NarrowBandLoss(radius, ignore_label=k)
    torch.manual_seed(5)
    conv = torch.nn.Conv3d(2, k, 3, padding=1).cuda()
    x = torch.randn(2, 2, *shape, device="cuda")
    ref = loss_fn(conv(x), t.cuda())
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(conv(x), t.cuda())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - ref.item()) < 1e-2

"""The point mapping of ``explain`` against nnU-Net's own preprocessing and sliding window: a synthetic image with a
known transpose, crop and spacing change, whose channels hold each voxel's original coordinates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from plans_cases import dataset_json

from nnunet_sparseattn.explain.geometry import choose_patch, lookup, region_id_map, token_of
from nnunet_sparseattn.explain.model import place

ORIGINAL = (12, 17, 9)  # the reader's axes
SPACING = (2.0, 1.0, 1.5)  # per original axis
TRANSPOSE = [2, 0, 1]  # transposed axis i is original axis TRANSPOSE[i]
TARGET = [1.0, 1.25, 0.8]  # the configuration's spacing, transposed axes: upsampled on every axis
OFFSET = 10.0


def _plans(patch: list[int]) -> dict:
    conf = {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch,
        "median_image_size_in_voxels": [16, 24, 34],
        "spacing": TARGET,
        "normalization_schemes": ["NoNormalization"] * 3,
        "use_mask_for_norm": [False] * 3,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        # linear resampling reproduces the channels' linear ramps exactly away from the border
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": False},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": False},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": False},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {},
            "_kw_requires_import": [],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": "Dataset998_Geometry",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [SPACING[a] for a in TRANSPOSE],
        "original_median_shape_after_transp": [ORIGINAL[a] for a in TRANSPOSE],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": TRANSPOSE,
        "transpose_backward": [1, 2, 0],
        "configurations": {"3d_fullres": conf},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): {} for c in range(3)},
    }


def _preprocessed(patch: list[int]):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    # channel c holds the voxel's index along original axis c (+ OFFSET); a zero border on two axes to be cropped
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in ORIGINAL], indexing="ij")
    image = np.stack(grids) + OFFSET
    image[:, :, :2] = 0
    image[:, :, :, -3:] = 0
    plans_manager = PlansManager(_plans(patch))
    configuration = plans_manager.get_configuration("3d_fullres")
    data, _, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        image, None, {"spacing": list(SPACING)}, plans_manager, configuration, dataset_json(["x"], channels="abc")
    )
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.configuration_manager = configuration
    geometry, patches = place(ORIGINAL, TRANSPOSE, properties, data.shape[1:], predictor)
    return data, geometry, patches


def test_network_voxels_hold_the_original_coordinates_the_mapping_gives():
    data, geometry, _ = _preprocessed([8, 8, 8])
    assert geometry.crop_start == (0, 0, 2) and geometry.cropped == (6, 12, 15)  # transposed: (x, z, y) axes
    assert geometry.resampled == data.shape[1:] and geometry.pad_below == (0, 0, 0)
    # the crop box in original axes
    low = np.empty(3)
    high = np.empty(3)
    for t, a in enumerate(TRANSPOSE):
        low[a], high[a] = geometry.crop_start[t], geometry.crop_start[t] + geometry.cropped[t] - 1
    checked = 0
    for voxel in itertools.product(*[range(n) for n in data.shape[1:]]):
        source = geometry.to_original(np.array(voxel) + 0.5) - 0.5  # the original coordinates of its centre
        if np.all(source >= low) and np.all(source <= high):  # 'edge' mode clamps beyond the crop's border voxels
            np.testing.assert_allclose(data[:, voxel[0], voxel[1], voxel[2]] - OFFSET, source, atol=1e-4)
            checked += 1
    assert checked > 0.5 * data[0].size


def test_a_point_maps_to_the_window_that_holds_it_nearest_its_centre_and_back():
    # a patch smaller than the image on two axes (several windows) and larger on one (padded)
    data, geometry, patches = _preprocessed([4, 8, 24])
    assert geometry.pad_below == (0, 0, 2)  # 19 voxels padded to 24, centred: 2 below, 3 above
    starts = [sorted({p.start[a] for p in patches}) for a in range(3)]
    assert len(starts[0]) > 1 and len(starts[1]) > 1 and starts[2] == [0]  # several windows; one along the padded axis
    network = geometry.network_voxel((7, 10, 4))
    # the transpose: network axes are original (x, z, y); resampled by TARGET; cropped and padded on the last
    expected = [
        int(np.floor((c + 0.5) * s)) for c, s in zip((4, 7, 10 - 2), geometry.resampled / np.array(geometry.cropped))
    ]
    assert network == (expected[0], expected[1], expected[2] + 2)
    patch = choose_patch(patches, network)
    holding = [p for p in patches if p.contains(network)]
    assert patch in holding and all(patch.centre_distance(network) <= p.centre_distance(network) for p in holding)
    # back: window -> network input -> original; exact when every axis is upsampled (each network voxel's centre
    # lies in the original voxel it came from)
    assert all(geometry.resampled[a] >= geometry.cropped[a] for a in range(3))
    for voxel in [(7, 10, 4), (0, 2, 0), (11, 16, 5)]:
        assert geometry.original_voxel(geometry.network_voxel(voxel)) == voxel
    edge = np.array([3.25, 9.5, 1.0])
    np.testing.assert_allclose(geometry.to_original(geometry.to_network(edge)), edge)
    # a cropped-away voxel has no network counterpart along its axis
    assert geometry.axis_network_index(2)[:2].tolist() == [-1, -1]


def test_tokens_regions_and_the_drawn_map_agree_with_brute_force():
    _, geometry, patches = _preprocessed([4, 8, 24])
    patch = patches[3]
    map_shape, region, grid = (2, 4, 6), (1, 2, 4), (2, 2, 2)
    ids = region_id_map(map_shape, region, grid)
    assert ids.max() == 7 and ids[1, 3, 5] == (1 * 2 + 1) * 2 + 1
    drawn = lookup(geometry, patch, ids, fill=-1)
    assert drawn.shape == ORIGINAL
    for voxel in itertools.product(*[range(n) for n in ORIGINAL]):
        network = geometry.network_voxel(voxel)
        transposed = [voxel[a] for a in TRANSPOSE]
        cropped = any(not 0 <= t - lo < n for t, lo, n in zip(transposed, geometry.crop_start, geometry.cropped))
        if cropped or not patch.contains(network):
            assert drawn[voxel] == -1
            continue
        token = token_of(patch.local(network), map_shape, patch.patch_size)
        assert drawn[voxel] == ids[token]


@pytest.mark.parametrize("two_d_config", [True])
def test_a_2d_configuration_fixes_the_slice_axis(two_d_config):
    from nnunet_sparseattn.explain.geometry import Geometry, patches_from_slicers

    slicers = [(slice(None), 3, slice(0, 8), slice(4, 12)), (slice(None), 4, slice(0, 8), slice(4, 12))]
    patches = patches_from_slicers(slicers)
    assert patches[1].fixed == (4, None, None) and patches[1].patch_size == (8, 8)
    geometry = Geometry((6, 8, 12), (0, 1, 2), (0, 0, 0), (6, 8, 12), (6, 8, 12), (0, 0, 0))
    values = np.arange(4).reshape(2, 2).astype(float) + 1
    drawn = lookup(geometry, patches[1], values)
    assert (drawn[[0, 1, 2, 3, 5]] == 0).all() and (drawn[4, :, :4] == 0).all()
    assert drawn[4, 0, 4] == 1 and drawn[4, 7, 11] == 4

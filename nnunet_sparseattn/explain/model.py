"""A trained model and one image as nnU-Net's predictor sees them: the model folder, the image read with the plans'
reader, nnU-Net's preprocessing and sliding windows, and the prediction, with a :class:`Recorder` on the network."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from unittest import mock

import numpy as np
import torch

from nnunet_sparseattn.errors import UserError, reading
from nnunet_sparseattn.explain.geometry import Geometry, Patch, patches_from_slicers
from nnunet_sparseattn.explain.recorder import Recorder

__all__ = ["Case", "Model", "model_folder", "place", "read_case"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def model_folder(
    model: Optional[str], dataset: Optional[str], configuration: Optional[str], trainer: Optional[str], plans: str
) -> Path:
    """``-m MODEL_FOLDER``, or nnU-Net's results folder of ``-d/-c/-tr/-p`` (``get_output_folder``, as
    ``nnUNetv2_predict`` finds it)."""
    if model is not None:
        if dataset is not None or configuration is not None or trainer is not None:
            raise UserError("give either -m MODEL_FOLDER or -d ID -c CONFIGURATION -tr TRAINER, not both")
        folder = Path(model).expanduser()
    else:
        missing = [flag for flag, value in (("-d", dataset), ("-c", configuration), ("-tr", trainer)) if value is None]
        if missing:
            raise UserError(
                f"explain needs -m MODEL_FOLDER, or -d ID -c CONFIGURATION -tr TRAINER ({' '.join(missing)} missing)"
            )
        if not os.environ.get("nnUNet_results"):
            raise UserError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results, or pass -m")
        from nnunetv2.utilities.file_path_utilities import get_output_folder

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                folder = Path(get_output_folder(str(dataset), str(trainer), plans, str(configuration)))
        except RuntimeError as error:  # maybe_convert_to_dataset_name: no such dataset
            raise UserError(f"dataset {dataset}: {error}") from None
    if not (folder / "plans.json").is_file() or not (folder / "dataset.json").is_file():
        raise UserError(f"{folder} is not a trained nnU-Net model folder (it lacks plans.json or dataset.json)")
    return folder


def checkpoint_file(folder: Path, fold: str, checkpoint: str) -> Path:
    """``folder/fold_F/CHECKPOINT``, refused in one line where it is missing (naming what the folder holds)."""
    path = folder / f"fold_{fold}" / checkpoint
    if not path.is_file():
        present = sorted(p.relative_to(folder).as_posix() for p in folder.glob("fold_*/*.pth"))
        have = f"it holds {', '.join(present)}" if present else "it holds no checkpoint"
        raise UserError(
            f"the model folder {folder} has no fold_{fold}/{checkpoint} ({have}): train that fold, or "
            "pass -f FOLD / --checkpoint NAME"
        )
    return path


@dataclass
class Case:
    """One image as nnU-Net's reader returns it: ``image`` ``(channels, *spatial)`` and its ``properties``."""

    files: list[Path]
    image: np.ndarray
    properties: dict

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.image.shape[1:])

    @property
    def is_2d(self) -> bool:
        """A 2D image (nnU-Net's readers give it a leading axis of 1)."""
        return len(self.spatial) == 3 and self.spatial[0] == 1


def _channel_files(file: Path, file_ending: str, channels: int) -> list[Path]:
    """The case's files as nnU-Net names them (``CASE_XXXX<ending>``): ``file`` and its siblings; ``file`` alone when
    its name has no channel suffix."""
    name = file.name[: -len(file_ending)] if file.name.endswith(file_ending) else None
    match = _CHANNEL.match(name) if name is not None else None
    if match is None:
        return [file]
    siblings = sorted(file.parent.glob(f"{match['case']}_[0-9][0-9][0-9][0-9]{file_ending}"))
    return siblings if len(siblings) == channels else [file]


def read_case(file: str | Path, reader: Any, file_ending: str, channels: int) -> Case:
    """Read ``file`` (and its other channel files) with the plans' image reader; one-line refusal when it cannot."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise UserError(f"the image {path} does not exist")
    files = _channel_files(path, file_ending, channels)
    with reading(path, "the image", f"nnU-Net's {type(reader).__name__}"), contextlib.redirect_stdout(io.StringIO()):
        image, properties = reader.read_images([str(f) for f in files])
    if image.shape[0] != channels:
        raise UserError(
            f"the image {path} has {image.shape[0]} channel(s), the model takes {channels}: give its "
            f"files as nnU-Net names them (CASE_0000{file_ending}, CASE_0001{file_ending}, ...)"
        )
    return Case(files, np.asarray(image), properties)


def place(
    spatial: Sequence[int], transpose: Sequence[int], properties: dict, resampled: Sequence[int], predictor: Any
) -> tuple[Geometry, list[Patch]]:
    """Where nnU-Net's predictor puts a preprocessed case of shape ``resampled``: its padding to the patch size
    (``pad_nd_image``, as ``predict_sliding_window_return_logits`` pads) and its sliding windows
    (``predictor._internal_get_sliding_window_slicers``), with the case's geometry (``properties`` as the
    preprocessor filled them)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    patch = predictor.configuration_manager.patch_size
    empty = np.zeros((0, *resampled), dtype=np.float32)  # only the padding is wanted
    padded, revert = pad_nd_image(empty, patch, "constant", {"constant_values": 0}, True, None)
    pad_below = [int(s.start) for s in revert[1:]]
    geometry = Geometry.from_properties(spatial, transpose, properties, resampled, pad_below)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    return geometry, patches_from_slicers(slicers)


class Model:
    """A trained nnU-Net model: its plans and dataset.json at once (enough to read and check an image), nnU-Net's own
    predictor after :meth:`load` (sliding window with its Gaussian weighting, test-time augmentation off: one network
    call per window)."""

    def __init__(self, folder: Path, fold: str, checkpoint: str, device: str = "cpu") -> None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        self.checkpoint = checkpoint_file(folder, fold, checkpoint)
        self.folder, self.fold, self.device = folder, fold, device
        with reading(folder / "plans.json", "the model's plans"):
            self.plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
        with reading(folder / "dataset.json", "the model's dataset.json"):
            self.dataset_json = json.loads((folder / "dataset.json").read_text())
        self.predictor: Any = None

    def load(self) -> None:
        """nnU-Net's predictor with the checkpoint (the trainer class found as ``nnUNetv2_predict`` finds it)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunet_sparseattn.discovery import ext_trainer_is_configured
        from nnunet_sparseattn_autodiscovery import EXT_TRAINER_VARIABLE, with_shim_folder

        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(
                tile_step_size=0.5,
                use_gaussian=True,
                use_mirroring=False,
                perform_everything_on_device=self.device != "cpu",
                device=torch.device(self.device),
                verbose=False,
                allow_tqdm=False,
            )
        env = (
            {}
            if ext_trainer_is_configured()
            else {EXT_TRAINER_VARIABLE: with_shim_folder(os.environ.get(EXT_TRAINER_VARIABLE))}
        )
        env["nnUNet_compile"] = "f"  # the hooks need the plain network: nnU-Net compiles it when this is on
        try:
            with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(io.StringIO()):
                self.predictor.initialize_from_trained_model_folder(
                    str(self.folder), (int(self.fold) if self.fold != "all" else self.fold,), self.checkpoint.name
                )
        except RuntimeError as error:
            if "Could not find requested nnunet trainer" in str(error):
                raise UserError(f"nnU-Net cannot find the trainer of {self.folder}: {error}") from None
            raise
        self.plans_manager = self.predictor.plans_manager

    @property
    def configuration_manager(self) -> Any:
        return self.predictor.configuration_manager

    @property
    def label_manager(self) -> Any:
        return self.predictor.label_manager

    @property
    def network(self) -> torch.nn.Module:
        return self.predictor.network

    @property
    def trainer_name(self) -> str:
        return str(self.predictor.trainer_name)

    @property
    def channels(self) -> int:
        """Input channels: the dataset's (a cascade's second stage, which also takes the first stage's segmentation,
        is not supported)."""
        return len(self.dataset_json.get("channel_names", self.dataset_json.get("modality", {})))

    @property
    def labels(self) -> dict[Any, str]:
        """Foreground label values and their names (a label dataset; region-based datasets name their regions)."""
        names: dict[Any, str] = {}
        for name, value in self.dataset_json["labels"].items():
            if name == "ignore":
                continue
            key = value if isinstance(value, int) else tuple(value)
            names[key] = name
        return {v: n for v, n in names.items() if v != 0}

    def read(self, file: str | Path) -> Case:
        return read_case(
            file, self.plans_manager.image_reader_writer_class(), self.dataset_json["file_ending"], self.channels
        )

    def preprocess(self, case: Case) -> tuple[np.ndarray, dict]:
        """nnU-Net's preprocessing of the case (its configuration's preprocessor): data and the filled properties."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        properties = dict(case.properties)
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, properties = preprocessor.run_case_npy(
                case.image, None, properties, self.plans_manager, self.configuration_manager, self.dataset_json
            )
        return data, properties

    def windows(self, case: Case, data: np.ndarray, properties: dict) -> tuple[Geometry, list[Patch]]:
        """The geometry of the case in the network input and nnU-Net's sliding windows over it."""
        return place(case.spatial, self.plans_manager.transpose_forward, properties, data.shape[1:], self.predictor)

    def predict(self, data: np.ndarray, recorder: Optional[Recorder] = None) -> torch.Tensor:
        """nnU-Net's sliding-window logits of the preprocessed ``data`` (the recorder counts its windows)."""
        if recorder is not None:
            recorder.reset()
        with contextlib.redirect_stdout(io.StringIO()):
            return self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()

    def segmentation(self, logits: torch.Tensor, properties: dict) -> tuple[np.ndarray, np.ndarray]:
        """Segmentation and probabilities in the original image's geometry (nnU-Net's export path)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        seg, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits,
            self.plans_manager,
            self.configuration_manager,
            self.label_manager,
            properties,
            return_probabilities=True,
        )
        return np.asarray(seg), np.asarray(probabilities)

    def write_segmentation(self, seg: np.ndarray, path: Path, case: Case) -> None:
        """``seg`` (original geometry) written with the plans' image writer, as ``nnUNetv2_predict`` writes it."""
        self.plans_manager.image_reader_writer_class().write_seg(seg, str(path), case.properties)

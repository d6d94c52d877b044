"""``nnunet-sparseattn explain``: what the attention of a trained model decided on one image, drawn on the image.

nnU-Net's own predictor runs on the image (its preprocessing, sliding window and Gaussian weighting; test-time
augmentation off), with forward hooks recording every window (:mod:`.recorder`). Query points are given in the
image's own voxel coordinates, or default to the centroid of each predicted structure and the most uncertain voxel;
each is mapped through nnU-Net's transpose, crop, resampling and padding to the sliding window that holds it nearest
its centre (:mod:`.geometry`). The default points come from the prediction, so when the network has Swin blocks
(whose window weights are computed only for the windows asked for) the predictor runs a second time, with the points
known.

Written into the output folder (3D images: NIfTI maps in the image's geometry; 2D images: one NPZ of maps):

- ``prediction<ending>``: the segmentation, written by nnU-Net's own writer;
- ``case.png``: image, prediction (and ``--reference``) through the first query point;
- ``overview.png``: one row per query point, one panel per attention module;
- ``points/<point>/``: per routed module (BSA, MDSA) the query's region and its routed key regions shaded by routing
  weight (``*_routing.png``, ``*_routing`` and ``*_regions`` maps), BSA's coarse attention (``*_coarse``); per ISAM
  (bilateral) the query token's attention weights inside its Swin window in each block (``*_window.png``);
- ``fsam_channel_weights.png``, ``rendering.png`` and the ``rendering_refined`` map (bilateral);
- ``explain.json``: the points, their windows, tokens and regions, what was routed, and with ``--reference`` how often
  routed key regions hold foreground (:func:`.analysis.routing_foreground`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nnunet_sparseattn.errors import UserError, check_output_path, reading, refuse_inside
from nnunet_sparseattn.explain import analysis, figures
from nnunet_sparseattn.explain.geometry import Geometry, Patch
from nnunet_sparseattn.explain.kinds import CaseOutput, registered_kinds, say, say_routing
from nnunet_sparseattn.explain.model import Case, Model, model_folder
from nnunet_sparseattn.explain.recorder import Recorder, attention_modules

__all__ = ["ExplainRequest", "run_explain"]


@dataclass
class ExplainRequest:
    image: Path
    output: Path
    model: Optional[str] = None
    dataset: Optional[str] = None
    configuration: Optional[str] = None
    trainer: Optional[str] = None
    plans: str = "nnUNetPlans"
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"
    points: Sequence[str] = ()
    reference: Optional[Path] = None
    device: str = "cpu"


def run_explain(request: ExplainRequest) -> dict[str, Any]:
    """Run the explanation (see the module docstring) of one image, or of every case of a folder (each in a subfolder
    of the output; with references, the routing statistics pooled over the cases too). Returns what ``explain.json``
    holds."""
    from nnunet_sparseattn.harness.machine import check_device

    check_device(request.device, "-device", indexed=True)
    check_output_path(request.output, "-o")
    folder = model_folder(request.model, request.dataset, request.configuration, request.trainer, request.plans)
    model = Model(folder, request.fold, request.checkpoint, request.device)
    image = Path(request.image).expanduser()
    inputs = {"model folder": folder, **({"image folder": image} if image.is_dir() else {})}
    refuse_inside(request.output, inputs, "-o", "give a folder of its own for the explanation")
    if image.is_dir():
        if request.points:
            raise UserError("--point applies to one image: give -i FILE (a folder's cases get the default points)")
        files = _folder_cases(image, model.dataset_json["file_ending"])
    else:
        files = [(None, image)]
    # every refusal before any work: read the images, their references and the points first
    cases = [_read_case(model, name, file, request) for name, file in files]
    model.load()
    if model.configuration_manager.previous_stage_name is not None:
        raise UserError(
            f"{folder.name} is a cascade's second stage (it also takes the first stage's segmentation): "
            "explain its first stage's model instead"
        )
    output = Path(request.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        summaries = []
        for name, case, reference, given in cases:
            out = staging if name is None else staging / name
            out.mkdir(parents=True, exist_ok=True)
            if name is not None:
                say(f"== {name}")
            summaries.append(_explain_case(model, case, reference, given, out))
        summary = summaries[0]
        if len(files) > 1 or files[0][0] is not None:
            summary = {"cases": {n: s for (n, _), s in zip(files, summaries)}}
            pooled = analysis.pool_routing_foreground([s.get("routing_foreground", {}) for s in summaries])
            if pooled:
                summary["routing_foreground"] = pooled
                say(f"== routing vs reference, pooled over {len(files)} cases")
                say_routing(pooled)
            (staging / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
        _publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _read_case(
    model: Model, name: Optional[str], file: Path, request: ExplainRequest
) -> tuple[Optional[str], Case, Optional[np.ndarray], list[tuple[int, ...]]]:
    """A case (named within a folder, or None) read with its reference and its given points, each checked."""
    case = model.read(file)
    reference = None
    if request.reference is not None:
        ref = Path(request.reference).expanduser()
        path = ref / f"{name}{model.dataset_json['file_ending']}" if name is not None and ref.is_dir() else ref
        reference = _read_reference(model, path, case)
    given = [analysis.parse_point(p, 2 if case.is_2d else 3) for p in request.points]
    for values in given:
        analysis.check_inside(values, case.spatial, case.is_2d)
    return name, case, reference, given


def _folder_cases(folder: Path, file_ending: str) -> list[tuple[Optional[str], Path]]:
    """The cases of a folder as nnU-Net names them (``CASE_XXXX<ending>``), each by its first channel file."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    names = [str(n) for n in get_identifiers_from_splitted_dataset_folder(str(folder), file_ending)]
    if not names:
        raise UserError(f"the folder {folder} holds no image named CASE_0000{file_ending}")
    return [(n, folder / f"{n}_0000{file_ending}") for n in names]


def _explain_case(
    model: Model, case: Case, reference: Optional[np.ndarray], given: list[tuple[int, ...]], out: Path
) -> dict[str, Any]:
    data, properties = model.preprocess(case)
    geometry, patches = model.windows(case, data, properties)
    kinds = registered_kinds()
    modules = attention_modules(model.network, kinds)
    # given points are placed before the prediction, so one run records everything; default points come from the
    # prediction, so a network with Swin blocks (a kind that records only where asked) runs a second time for them
    named = [(f"point {i}", v) for i, v in enumerate(given)]
    points = analysis.locate_points(named, case.spatial, case.is_2d, geometry, patches) if named else []
    recorder = Recorder(model.network, window_requests=_window_requests(points))
    try:
        logits = model.predict(data, recorder)
        seg, probabilities = model.segmentation(logits, properties)
        if not points:
            # in the image's own coordinates, as --point takes them (y,x for a 2D image: its leading axis dropped)
            named = [
                (name, voxel[1:] if case.is_2d else voxel)
                for name, voxel in analysis.default_points(seg, probabilities, model.labels)
            ]
            points = analysis.locate_points(named, case.spatial, case.is_2d, geometry, patches)
            if any(kind.asked_for_points and modules[kind.key] for kind in kinds):
                kept = recorder.keep_first_run()
                recorder.reset(_window_requests(points))
                model.predict(data, recorder)
                kept()
    finally:
        recorder.close()
    return _write(model, case, reference, seg, geometry, patches, points, modules, recorder, out)


def _window_requests(points: Sequence[analysis.QueryPoint]) -> dict[int, list[tuple[int, ...]]]:
    """Per sliding window, the window-local voxels whose Swin-window weights the recorder asks for."""
    requests: dict[int, list[tuple[int, ...]]] = {}
    for point in points:
        requests.setdefault(point.patch.index, []).append(point.local)
    return requests


def _read_reference(model: Model, path: Path, case: Case) -> np.ndarray:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"the reference {path} does not exist")
    reader = model.plans_manager.image_reader_writer_class()
    with reading(path, "the reference", f"nnU-Net's {type(reader).__name__}"):
        seg, _ = reader.read_seg(str(path))
    if tuple(seg.shape[1:]) != case.spatial:
        raise UserError(
            f"the reference {path} has shape {tuple(seg.shape[1:])}, the image {case.spatial}: give the "
            "image's own label file"
        )
    return np.asarray(seg[0]).astype(np.int64)


def _publish(staging: Path, output: Path) -> None:
    """Move what was written into ``output`` (made if missing), replacing earlier files of the same names."""
    output.mkdir(parents=True, exist_ok=True)
    for item in staging.iterdir():
        target = output / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(item), str(target))


class _Writer:
    """Maps in the image's geometry: NIfTI (or the reader's format) for 3D images, one NPZ per folder for 2D."""

    def __init__(self, model: Model, case: Case):
        self.model, self.case = model, case
        self.npz: dict[Path, dict[str, np.ndarray]] = {}
        self.ending = model.dataset_json["file_ending"]

    def write(self, folder: Path, name: str, array: np.ndarray) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        if self.case.is_2d:
            self.npz.setdefault(folder / "maps.npz", {})[name] = array[0]
            return f"{folder.name}/maps.npz:{name}"
        if array.dtype == np.uint8:  # labels: nnU-Net's own writer, any format it reads
            path = folder / f"{name}{self.ending}"
            self.model.write_segmentation(array, path, self.case)
            return path.name
        path = folder / f"{name}.nii.gz"
        _write_float_nifti(array, path, self.case.properties)
        return path.name

    def close(self) -> None:
        for path, arrays in self.npz.items():
            np.savez_compressed(path, **dict[str, Any](arrays))


def _write_float_nifti(array: np.ndarray, path: Path, properties: dict) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array.astype(np.float32))
    stuff = properties.get("sitk_stuff")
    if stuff is not None and len(stuff["spacing"]) == 3:
        image.SetSpacing(stuff["spacing"])
        image.SetOrigin(stuff["origin"])
        image.SetDirection(stuff["direction"])
    else:  # another reader: its spacing (reader's axes, reversed for SimpleITK), no origin or direction
        image.SetSpacing([float(s) for s in reversed(properties["spacing"])])
    sitk.WriteImage(image, str(path), True)


def _write(
    model: Model,
    case: Case,
    reference: Optional[np.ndarray],
    seg: np.ndarray,
    geometry: Geometry,
    patches: list[Patch],
    points: list[analysis.QueryPoint],
    modules: dict[str, list[str]],
    recorder: Recorder,
    out: Path,
) -> dict[str, Any]:
    writer = _Writer(model, case)
    model.write_segmentation(seg, out / f"prediction{writer.ending}", case)
    figures.case_figure(
        case.image,
        case.properties["spacing"],
        points[0].voxel,
        seg,
        model.labels,
        out / "case.png",
        reference,
        title=f"{case.files[0].name}: {model.trainer_name} ({model.folder.name}, fold {model.fold})",
    )
    summary = _summary(model, case, geometry, patches, points)
    kinds = registered_kinds()
    if not any(modules.values()):
        described = [kind.described for kind in kinds] or ["attention"]
        listed = " or ".join(filter(None, [", ".join(described[:-1]), described[-1]]))
        line = (
            f"no attention to show: {model.trainer_name}'s network ({type(model.network).__name__}) has no "
            f"{listed} module; wrote the prediction"
        )
        say(line)
        summary["note"] = line
        return _finish(summary, writer, out)
    # outlined on every attention picture: the reference where given (what the routing is judged against), else the
    # prediction
    structures = (
        figures.Structures(seg, model.labels, "prediction")
        if reference is None
        else figures.Structures(reference, model.labels, "reference")
    )
    output = CaseOutput(
        model, case, reference, seg, geometry, patches, points, modules, recorder, out, writer, structures, summary
    )
    output.overview = {p.name: [] for p in points}
    for kind in kinds:
        kind.write(output)
    _overview(output)
    for kind in kinds:
        kind.conclude(output)
    return _finish(summary, writer, out)


def _summary(
    model: Model, case: Case, geometry: Geometry, patches: list[Patch], points: list[analysis.QueryPoint]
) -> dict[str, Any]:
    """``explain.json`` before the kinds add their modules: the image, the model, nnU-Net's geometry, the points."""
    return {
        "image": [str(f) for f in case.files],
        "model": str(model.folder),
        "fold": model.fold,
        "trainer": model.trainer_name,
        "geometry": {
            "transpose_forward": list(geometry.transpose),
            "crop_start": list(geometry.crop_start),
            "cropped_shape": list(geometry.cropped),
            "resampled_shape": list(geometry.resampled),
            "pad_below": list(geometry.pad_below),
            "sliding_windows": [{"index": p.index, "start": list(p.start), "size": list(p.size)} for p in patches],
        },
        "points": [
            {
                "name": p.name,
                "voxel": list(p.voxel[1:] if case.is_2d else p.voxel),
                "network_voxel": list(p.network),
                "sliding_window": p.patch.index,
                "in_window": list(p.local),
            }
            for p in points
        ],
        "modules": {},
    }


def _overview(output: CaseOutput) -> None:
    """``overview.png``: a row per point, the first four panels the kinds gave it."""
    rows = [(p.name + " " + output.coords(p), p.voxel, output.overview[p.name][:4]) for p in output.points]
    if any(panels for _, _, panels in rows):
        figures.overview_figure(
            output.case.image,
            output.spacing,
            output.seg,
            output.model.labels,
            rows,
            output.out / "overview.png",
            f"{output.case.files[0].name}: where {output.model.trainer_name} attends from each query point",
            structures=output.structures,
        )


def _finish(summary: dict[str, Any], writer: _Writer, out: Path) -> dict[str, Any]:
    writer.close()
    (out / "explain.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary

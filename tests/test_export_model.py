"""Exported detectors (model/export_model.py): TorchScript and ONNX give the eager model's detections."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from model.config import TrainConfig
from model.data.cache import decode_and_fit
from model.data.transforms import build_eval_transforms
from model.export_model import export, main
from model.predict import list_split_images, model_from_checkpoint, predict_images
from tests.support import one_epoch_run

SIZE = 128


@pytest.fixture(scope="module")
def checkpoint(mini_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of a one-epoch tiny SSD: scores that depend on the image, many detections."""
    return one_epoch_run(mini_root, tmp_path_factory.mktemp("run"), SIZE, **{"data.max_val_images": 8}) / "last.pt"


@pytest.fixture(scope="module")
def val_batch(mini_root: Path) -> tuple[list[str], torch.Tensor, list[tuple[int, int]]]:
    """Four val images as the export's contract says a consumer prepares them."""
    relpaths = list_split_images(mini_root, "val")[:4]
    to_input = build_eval_transforms(SIZE)
    images, sizes = [], []
    for rel in relpaths:
        image, orig_size = decode_and_fit(mini_root / "WIDER_val" / "images" / rel, TrainConfig().data.cache_max_side)
        images.append(to_input(image))
        sizes.append(orig_size)
    return relpaths, torch.stack(images), sizes


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _assert_matches_eager(outputs, reference: list[dict[str, torch.Tensor]], max_detections: int, **tolerance) -> None:
    boxes, scores, counts = (torch.as_tensor(o) for o in outputs)
    assert boxes.shape == (len(reference), max_detections, 4) and scores.shape == (len(reference), max_detections)
    assert counts.tolist() == [len(r["scores"]) for r in reference]
    assert counts.sum() > 0, "nothing detected: the comparison would be empty"
    for b, ref in enumerate(reference):
        n = len(ref["scores"])
        torch.testing.assert_close(boxes[b, :n], ref["boxes"], **tolerance)
        torch.testing.assert_close(scores[b, :n], ref["scores"], **tolerance)
        assert not boxes[b, n:].any() and not scores[b, n:].any(), "padding rows must be zero"


def test_torchscript_export_gives_the_eager_detections(checkpoint: Path, val_batch, tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "face_ssd.ts"
    assert main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    assert "exported tiny SSD (torchscript)" in capsys.readouterr().out
    contract = json.loads(out.with_name("face_ssd.ts.json").read_text())
    assert contract["input"]["shape"] == ["B", 3, SIZE, SIZE] and contract["postprocess"]["nms"] == "nms"

    exported = _load_torchscript(out)
    model, cfg = model_from_checkpoint(checkpoint)
    _, images, _ = val_batch
    reference = model.predict(images, **cfg.postprocess.model_dump())
    with torch.no_grad():
        _assert_matches_eager(exported(images), reference, cfg.postprocess.max_detections)
        # Any batch size (the network was traced with two images): one image alone gives its own rows.
        _assert_matches_eager(exported(images[2:3]), reference[2:3], cfg.postprocess.max_detections)
        with pytest.raises(Exception, match=f"expected float images \\(B, 3, {SIZE}, {SIZE}\\)"):
            exported(torch.rand(1, 3, SIZE + 32, SIZE))


def test_exported_detections_mapped_back_are_model_predicts(
    checkpoint: Path, val_batch, mini_root: Path, tmp_path: Path, one_thread
) -> None:
    model, cfg = model_from_checkpoint(checkpoint)
    exported = _load_torchscript(export(model, cfg, "torchscript", tmp_path / "m.ts"))
    relpaths, images, sizes = val_batch
    predicted = predict_images(model, cfg, mini_root / "WIDER_val" / "images", relpaths, progress=False)
    with torch.no_grad():
        boxes, scores, counts = exported(images)
    for b, ((height, width), detections) in enumerate(zip(sizes, predicted.detections)):
        n = int(counts[b])
        to_original = torch.tensor([width / SIZE, height / SIZE] * 2)  # the contract's mapping
        torch.testing.assert_close(boxes[b, :n] * to_original, detections["boxes"])
        torch.testing.assert_close(scores[b, :n], detections["scores"])


def test_onnx_export_gives_the_eager_detections(checkpoint: Path, val_batch, tmp_path: Path, one_thread) -> None:
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "face_ssd.onnx"
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    model, cfg = model_from_checkpoint(checkpoint)
    _, images, _ = val_batch
    reference = model.predict(images, **cfg.postprocess.model_dump())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    outputs = session.run(None, {"images": images.numpy()})
    # onnxruntime's kernels differ from torch's in the last bits.
    _assert_matches_eager(outputs, reference, cfg.postprocess.max_detections, rtol=1e-4, atol=1e-3)
    single = session.run(None, {"images": images[1:2].numpy()})
    _assert_matches_eager(single, reference[1:2], cfg.postprocess.max_detections, rtol=1e-4, atol=1e-3)


def test_soft_nms_and_missing_onnx_are_refused_with_a_message(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    model, cfg = model_from_checkpoint(checkpoint)
    soft = cfg.with_overrides({"postprocess.nms": "soft_gaussian"})
    with pytest.raises(ValueError, match="--hard-nms"):
        export(model, soft, "torchscript", tmp_path / "soft.ts")
    assert not (tmp_path / "soft.ts").exists()

    monkeypatch.setitem(sys.modules, "onnx", None)  # what Python does for a package that is not installed
    assert main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "needs the 'onnx' package" in err and "pip install -e '.[onnx]'" in err
    assert not (tmp_path / "m.onnx").exists()

"""Sample detections: a picture of what the model predicts on a few validation images."""

from pathlib import Path

import torch
from torchvision.io import decode_png, read_file

from model.config import TrainConfig
from model.engine import build_datasets, build_model
from model.samples import draw_sample_detections, save_sample_detections

RED = torch.tensor([0xD6, 0x27, 0x28], dtype=torch.uint8)


class _FixedDetector:
    """Stands in for the model: the same detections on every image (the drawing is under test)."""

    def __init__(self, boxes: list[list[float]], scores: list[float]) -> None:
        self.boxes, self.scores = torch.tensor(boxes), torch.tensor(scores)

    def predict(self, images: torch.Tensor, **_: object) -> list[dict[str, torch.Tensor]]:
        return [{"boxes": self.boxes.clone(), "scores": self.scores.clone()} for _ in images]


def _val_set(root: Path):
    cfg = TrainConfig().with_overrides(
        {"data.root": str(root), "data.cache": False, "model.input_size": 96, "data.max_val_images": 3}
    )
    return cfg, build_datasets(cfg)[1]


def _red_pixels(grid: torch.Tensor) -> int:
    return int((grid.permute(1, 2, 0) == RED).all(dim=-1).sum())


def test_detections_are_drawn_above_the_score_floor_only(mini_root: Path) -> None:
    _, val = _val_set(mini_root)
    confident = draw_sample_detections(_FixedDetector([[10, 10, 40, 40]], [0.9]), val, num_images=3)
    faint = draw_sample_detections(_FixedDetector([[10, 10, 40, 40]], [0.01]), val, num_images=3)
    nan = draw_sample_detections(_FixedDetector([[float("nan")] * 4], [0.9]), val, num_images=3)
    assert confident.dtype == torch.uint8 and confident.shape[0] == 3
    assert confident.shape == faint.shape  # a 2-wide grid of the 3 images
    assert _red_pixels(confident) > _red_pixels(faint) + 3 * 100  # three 30-px boxes drawn
    assert _red_pixels(faint) == _red_pixels(nan)  # below the floor or not finite: not drawn


def test_a_real_model_s_detections_are_written_as_png(mini_root: Path, tmp_path: Path) -> None:
    cfg, val = _val_set(mini_root)
    model = build_model(cfg)
    path = save_sample_detections(model, val, tmp_path / "d.png", postprocess=cfg.postprocess.model_dump())
    image = decode_png(read_file(str(path)))
    assert image.shape[0] == 3 and image.shape[1] > 96 and image.shape[2] > 96

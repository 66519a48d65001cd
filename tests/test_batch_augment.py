"""The batched augmentation (loader draws, device renders) against torchvision's per-sample pipeline."""

import pickle
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from model.data.batch_augment import (
    COLOUR_KEY,
    FLIP_KEY,
    WINDOW_KEY,
    DrawSSDAugmentation,
    collate_canvas,
    photometric_batch,
    render_batch,
)
from model.data.transforms import IMAGENET_MEAN_UINT8, build_train_transforms
from model.data.widerface import WiderFaceDataset

SIZE = 96


def _pair(root: Path, cache: Path, **parts) -> tuple[WiderFaceDataset, WiderFaceDataset]:
    common = dict(cache_dir=cache, min_face_size=2.0)
    per_sample = WiderFaceDataset(root, "train", transform=build_train_transforms(SIZE, **parts), **common)
    batched = WiderFaceDataset(root, "train", transform=DrawSSDAugmentation(SIZE, **parts), **common)
    return per_sample, batched


def _render(samples) -> torch.Tensor:
    return render_batch(*collate_canvas(samples), SIZE)


def test_same_random_state_gives_the_same_boxes_and_nearly_the_same_pixels(mini_root: Path, tmp_path: Path, one_thread) -> None:
    per_sample, batched = _pair(mini_root, tmp_path / "cache")
    faces, flipped, zoomed, errors = 0, 0, 0, []
    for i in range(48):
        torch.manual_seed(i)
        image, target = per_sample[i]
        torch.manual_seed(i)
        raw, drawn = batched[i]
        assert raw.dtype == torch.uint8  # the loader leaves the pixels alone
        assert torch.allclose(drawn["boxes"], target["boxes"], atol=1e-4), i
        assert torch.equal(drawn["ignore"], target["ignore"]) and torch.equal(drawn["labels"], target["labels"])
        rendered = _render([(raw, drawn)])[0]
        assert rendered.shape == image.shape == (3, SIZE, SIZE)
        errors.append(float((rendered - image).abs().mean()))
        faces += len(target["boxes"])
        flipped += bool(drawn[FLIP_KEY])
        window = drawn[WINDOW_KEY]
        zoomed += bool(window[0] < 0 or window[1] < 0 or window[2] > raw.shape[-1] or window[3] > raw.shape[-2])
    assert faces > 48 and 10 <= flipped <= 38 and zoomed >= 5  # every part of the recipe was exercised
    # Only the resampling filter differs (roi_align's area average vs Resize's antialiased bilinear).
    assert sum(errors) / len(errors) < 0.01 and max(errors) < 0.03


def test_boxes_stay_inside_the_input_and_follow_the_pixels(one_thread) -> None:
    # A mid-grey image with white faces: after any draw, each kept face's box must sit on white pixels.
    image = torch.full((3, 120, 160), 60, dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 30.0, 60.0, 80.0], [100.0, 20.0, 140.0, 50.0], [70.0, 90.0, 90.0, 110.0]])
    for x0, y0, x1, y1 in boxes.int().tolist():
        image[:, y0:y1, x0:x1] = 255
    draw = DrawSSDAugmentation(SIZE, photometric=False)
    inside, outside = [], []
    for seed in range(60):
        torch.manual_seed(seed)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(120, 160)),
            "labels": torch.ones(3, dtype=torch.int64),
            "ignore": torch.zeros(3, dtype=torch.bool),
        }
        raw, drawn = draw(tv_tensors.Image(image), target)
        rendered = _render([(raw.as_subclass(torch.Tensor), drawn)])[0].mean(dim=0)
        out = drawn["boxes"].as_subclass(torch.Tensor)
        assert len(out) == len(drawn["labels"]) == len(drawn["ignore"])
        assert bool((out >= 0).all() and (out <= SIZE + 1e-3).all())
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        for bx0, by0, bx1, by1 in out.tolist():
            # Shrink by a pixel: the box edges are where the resampling blends white and grey.
            ix0, iy0, ix1, iy1 = int(bx0) + 1, int(by0) + 1, int(bx1) - 1, int(by1) - 1
            if ix1 > ix0 and iy1 > iy0:
                inside.append(float(rendered[iy0:iy1, ix0:ix1].mean()))
            mask[int(by0) : int(by1) + 1, int(bx0) : int(bx1) + 1] = True
        if len(out) == len(boxes) and (~mask).any():  # a face cropped away may leave white pixels
            outside.append(float(rendered[~mask].max()))
    assert len(inside) > 60 and min(inside) > 0.9
    assert len(outside) > 10 and max(outside) < 0.6  # grey background and mean-coloured zoom-out canvas, no stray white


def test_photometric_batch_equals_torchvision_image_by_image(one_thread) -> None:
    torch.manual_seed(0)
    images = torch.rand(32, 3, 24, 28)
    draw, reference = DrawSSDAugmentation(24), v2.RandomPhotometricDistort(p=0.5)  # torchvision's own
    rows, expected = [], []
    for image in images:
        state = torch.get_rng_state()
        params = reference.make_params([image])
        torch.set_rng_state(state)
        rows.append(draw._draw_colour(image))  # the same draw, as the loader makes it
        expected.append(reference.transform(image.clone(), params))
    colour = torch.stack(rows)
    assert (colour[:, 4] != 0).sum() > 4 and (colour[:, 1] != 1).sum() > 4  # hue and contrast were drawn
    assert torch.allclose(photometric_batch(images.clone(), colour), torch.stack(expected), atol=1e-5)


def test_the_distributions_match_the_per_sample_pipeline_over_many_draws(mini_root: Path, tmp_path: Path, one_thread) -> None:
    # Independent draws (different seeds): statistics, not sample-by-sample equality.
    per_sample, batched = _pair(mini_root, tmp_path / "cache")
    n = len(per_sample)

    def stats(samples, images):
        sides = torch.cat([(t["boxes"][:, 2:] - t["boxes"][:, :2]).min(dim=1).values for _, t in samples])
        return sides, images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))

    torch.manual_seed(1)
    a = [per_sample[i % n] for i in range(160)]
    sides_a, mean_a, std_a = stats(a, torch.stack([img for img, _ in a]))
    torch.manual_seed(2)
    b = [batched[i % n] for i in range(160)]
    sides_b, mean_b, std_b = stats(b, torch.cat([_render(b[k : k + 16]) for k in range(0, 160, 16)]))
    for q in (0.25, 0.5, 0.75):
        qa, qb = float(sides_a.quantile(q)), float(sides_b.quantile(q))
        assert abs(qa - qb) <= 0.25 * qa, (q, qa, qb)
    assert abs(len(sides_a) - len(sides_b)) <= 0.2 * len(sides_a)
    assert torch.allclose(mean_a, mean_b, atol=0.03) and torch.allclose(std_a, std_b, atol=0.03)


def test_collate_pads_with_the_zoom_out_colour_and_keeps_each_image() -> None:
    small, large = torch.randint(0, 255, (3, 20, 30), dtype=torch.uint8), torch.randint(0, 255, (3, 40, 25), dtype=torch.uint8)
    canvas, targets = collate_canvas([(small, {"a": 1}), (large, {"a": 2})])
    assert canvas.shape == (2, 3, 40, 30) and [t["a"] for t in targets] == [1, 2]
    assert torch.equal(canvas[0, :, :20, :30], small) and torch.equal(canvas[1, :, :40, :25], large)
    assert bool((canvas[0, :, 20:, :] == torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.uint8).view(3, 1, 1)).all())


def test_a_window_outside_the_image_renders_the_mean_colour() -> None:
    image = torch.full((3, 10, 10), 255, dtype=torch.uint8)
    target = {
        WINDOW_KEY: torch.tensor([20.0, 20.0, 40.0, 40.0], dtype=torch.float64),
        FLIP_KEY: False,
        COLOUR_KEY: torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0]),
    }
    out = render_batch(*collate_canvas([(image, target)]), 8)[0]
    assert torch.allclose(out, torch.tensor(IMAGENET_MEAN_UINT8, dtype=torch.float32).view(3, 1, 1) / 255, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_sizes_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="input_size"):
        DrawSSDAugmentation(bad)
    with pytest.raises(ValueError, match="zoom_out_max"):
        DrawSSDAugmentation(32, zoom_out_max=0.5)


def test_the_loader_half_pickles_for_spawned_workers() -> None:
    draw = pickle.loads(pickle.dumps(DrawSSDAugmentation(64)))
    assert draw.input_size == 64 and draw.crop is not None


@pytest.mark.slow
def test_a_search_whose_trials_render_their_batches(mini_root: Path, tmp_path: Path) -> None:
    """A real search (Ray Tune, Optuna, MLflow) whose two trials use the batched pipeline on the CPU."""
    import mlflow
    import yaml

    from hpo.search import main as search_main
    from hpo.space import load_space

    raw = load_space("cpu-mini").as_dict()
    raw.update(
        name="batched",
        budget={"num_samples": 2, "max_epochs": 1, "max_concurrent_trials": 2, "time_budget_s": None},
        scheduler={"type": "none"},
        points_to_evaluate=[],
    )
    raw["fixed"].update({"augment.pipeline": "batched", "data.max_train_images": 32, "data.max_val_images": 16,
                         "model.input_size": 96, "schedule.warmup_epochs": 0.5})  # fmt: skip
    raw["params"] = {"optim.lr": {"distribution": "loguniform", "low": 0.005, "high": 0.02}}
    space = tmp_path / "batched.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = search_main(["--space", str(space), "--data", str(mini_root), "--storage-path", str(tmp_path / "ray"),
                      "--tracking-uri", uri, "--no-report"])  # fmt: skip
    assert rc == 0
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("batched")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hpo.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:
        assert run.data.tags["hpo.outcome"] == "completed", run.data.tags
        assert run.data.metrics["train/loss"] > 0 and run.data.metrics["val/ap"] >= 0
        config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "trial_config.yaml", str(tmp_path))))
        assert config["augment"]["pipeline"] == "batched"

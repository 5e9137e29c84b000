"""Figure 4 (alexnet_triton/figures.py, the drawing in plots.py) and the features it is computed from
(AlexNet.features).

The network runs through the plain-PyTorch reference here (the reference_math fixture, or a fresh process
without TRITON_INTERPRET), as the trainer's tests run it: what is tested is which activations figure 4 uses
and which images it finds, not the kernels, which their own test files check against float64 in the
interpreter.
"""

import math
import subprocess
import sys

import pytest
import torch
from alexnet_triton.kernels import _common
from helpers import reference_backend_env

from alexnet_triton import augmentation, data, figures
from alexnet_triton.model import AlexNet


@pytest.fixture
def reference_math(monkeypatch):
    """The ops dispatch to reference.py on the CPU, as without TRITON_INTERPRET."""
    monkeypatch.setattr(_common, "INTERPRET", False)


def fc7_outputs_seen_by_hooks(model: AlexNet, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, each tower's fc7 output) from an ordinary forward pass, caught by forward hooks."""
    caught = []
    handles = [tower.fc7.register_forward_hook(lambda m, i, out: caught.append(out)) for tower in model.towers]
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, caught


@pytest.mark.parametrize("towers", [2, 1])
def test_features_are_fc7_after_its_relu_and_what_fc8_reads(reference_math, towers):
    model = AlexNet(10, image_size=67, towers=towers).eval()
    for layer in (tower.fc7 for tower in model.towers):  # biases that leave some units negative before the ReLU
        torch.nn.init.normal_(layer.bias, std=0.05)
    images = torch.randn(3, 3, 67, 67) * 50
    with torch.no_grad():
        features = model.features(images)
        logits, fc7 = fc7_outputs_seen_by_hooks(model, images)
    assert features.shape == (3, 4096), "4096 values at full width, both towers together"
    torch.testing.assert_close(features, torch.cat([out.flatten(1) for out in fc7], dim=1), rtol=0, atol=0)
    assert (features >= 0).all() and (features == 0).any() and (features > 0).any(), "after the ReLU"
    # In eval mode fc8 reads exactly these features: each tower's share of the logits.
    expected = torch.cat([tower.fc8(features) for tower in model.towers], dim=1)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_features_do_not_apply_fc7s_dropout(reference_math):
    model = AlexNet(10, image_size=67).train()
    for layer in (tower.fc7 for tower in model.towers):  # every unit near 1, so dropout would show as 0s and 2s
        torch.nn.init.normal_(layer.weight, std=1e-5)
        torch.nn.init.constant_(layer.bias, 1.0)
    features = model.features(torch.randn(2, 3, 67, 67))
    torch.testing.assert_close(features, torch.ones_like(features), rtol=0, atol=0.01)  # drop7 did not act


def test_features_refuse_images_of_the_wrong_size():
    with pytest.raises(ValueError, match="image_size=67"):
        AlexNet(10, image_size=67).features(torch.randn(1, 3, 71, 71))


def test_nearest_returns_the_nearest_rows_in_order():
    queries, pool = torch.randn(4, 16, dtype=torch.float64), torch.randn(30, 16, dtype=torch.float64)
    pool[7] = queries[2] + 1e-9  # a near-exact match, and a near-tie behind it: a matrix product's rounding
    pool[8] = queries[2] + 2e-9  # (|q|^2 + |p|^2 - 2 q.p) would blur them
    distances, indices = figures.nearest(queries, pool, k=6)
    for q in range(len(queries)):
        exact = sorted(range(len(pool)), key=lambda p: math.dist(queries[q].tolist(), pool[p].tolist()))
        assert indices[q].tolist() == exact[:6]
        assert distances[q].tolist() == pytest.approx(
            [math.dist(queries[q].tolist(), pool[p].tolist()) for p in exact[:6]]
        )
    assert indices[2, :2].tolist() == [7, 8]


def test_spread_indices_cover_the_set_without_repeats():
    assert figures.spread_indices(5, 100) == [0, 20, 40, 60, 80]
    assert figures.spread_indices(8, 3) == [0, 1, 2]
    assert len(set(figures.spread_indices(5000, 12345))) == 5000


# batch_size 7: 8 shown images in passes of 7, the last padded; the 5 queries and 24 training images in 5.
@pytest.mark.parametrize("batch_size", [None, 7])
def test_figure4_neighbours_are_the_true_nearest_in_fc7_by_brute_force(reference_math, tmp_path, batch_size):
    image_size = 67
    train_set = data.ShapesDataset("train", 24, image_size, seed=3)
    val_set = data.ShapesDataset("val", 10, image_size, seed=3)
    stats = augmentation.rgb_statistics(train_set.images.float(), standardize=True)
    model = AlexNet(10, image_size=image_size, init="kaiming").train()
    sizes = []  # conv1 of the first tower runs in both model(images) and model.features(images)
    hook = model.towers[0].conv1.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    shown = figures.draw(
        model, train_set, val_set, stats, image_size, train_set.classes, str(tmp_path), batch_size=batch_size
    )
    hook.remove()
    # Every pass at one size: the one asked for, else one batch of the 5 queries and 24 training images.
    assert sizes == ([7] * (2 + 5) if batch_size else [29, 29])

    assert model.training, "the model is left in the mode it came in"
    for name in ("predictions.png", "neighbours.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert shown["predicted"] == figures.spread_indices(figures.PREDICTION_IMAGES, len(val_set))
    assert shown["probabilities"].shape == (8, 10)
    torch.testing.assert_close(shown["probabilities"].sum(1), torch.ones(8))

    # Brute force: each image's features on its own, every distance, sorted.
    model.eval()

    def features(dataset, index):
        crop = augmentation.eval_transform(dataset[index][0], image_size, stats)
        with torch.no_grad():
            return model.features(crop[None])[0].double()

    training_features = [features(train_set, i) for i in range(len(train_set))]
    assert len(shown["queries"]) == figures.NEIGHBOUR_QUERIES
    for query, found, distances in zip(shown["queries"], shown["neighbours"], shown["distances"], strict=True):
        query_features = features(val_set, query)
        exact = sorted(
            (torch.linalg.vector_norm(query_features - f).item(), i) for i, f in enumerate(training_features)
        )
        assert found == [i for _, i in exact[: figures.NEIGHBOURS]]
        assert distances.tolist() == pytest.approx([d for d, _ in exact[: figures.NEIGHBOURS]], rel=1e-4)
    assert any(row[0] != shown["neighbours"][0][0] for row in shown["neighbours"]), "not one image for every query"


def test_a_run_ends_with_figure4_and_evaluate_draws_it_again(tmp_path):
    def trainer(*args):
        command = [sys.executable, "-m", "alexnet_triton.train", *args]
        return subprocess.run(command, cwd=tmp_path, env=reference_backend_env(), capture_output=True, text=True)

    trained = trainer("--train-size", "32", "--val-size", "10", "--batch-size", "16", "--epochs", "1", "--name", "f")
    assert trained.returncode == 0, trained.stderr[-3000:]
    figures_of_run = [tmp_path / "runs" / "f" / name for name in ("predictions.png", "neighbours.png")]
    for path in figures_of_run:
        assert path.stat().st_size > 0, path.name
        path.unlink()
    evaluated = trainer("--evaluate", "runs/f/best.pt")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert all(path.stat().st_size > 0 for path in figures_of_run), "--evaluate draws figure 4 next to the checkpoint"

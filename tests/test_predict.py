"""python -m alexnet_triton.predict: top classes for image files from a checkpoint of a tiny run.

The command runs in fresh processes through the reference backend, as the trainer's tests run it; the
expected probabilities come from the checkpoint's network called directly on the same images, decoded,
cropped and normalized step by step here.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from alexnet_triton.kernels import _common
from helpers import reference_backend_env
from PIL import Image

from alexnet_triton import checkpoint, data, predict
from alexnet_triton.training_state import build_model

IMAGE_SIZE = 67


def run_predict(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alexnet_triton.predict", *args]
    return subprocess.run(command, cwd=cwd, env=reference_backend_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder holding runs/tiny/best.pt from one epoch on 64 built-in images, and images to predict."""
    folder = tmp_path_factory.mktemp("predict")
    command = [sys.executable, "-m", "alexnet_triton.train", "--train-size", "64", "--val-size", "16",
               "--batch-size", "32", "--epochs", "1", "--name", "tiny"]  # fmt: skip
    result = subprocess.run(
        command, cwd=folder, env=reference_backend_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rng = np.random.default_rng(1)
    # Different shapes and sizes, a JPEG, a grayscale image and one with alpha: each decoded as training decodes.
    Image.fromarray(data.draw_shape_image(0, 90, rng)).save(folder / "disc.png")
    Image.fromarray(data.draw_shape_image(3, 120, rng)[:, 10:110]).save(folder / "cross.jpg", quality=95)
    Image.fromarray(data.draw_shape_image(5, 80, rng)[:, :, 0]).save(folder / "gray.png")
    Image.fromarray(data.draw_shape_image(7, 70, rng)).convert("RGBA").save(folder / "alpha.png")
    return folder


def expected_probabilities(folder, names: list[str], ten_crop: bool, side: int = 76) -> torch.Tensor:
    """The checkpoint's network called directly, each step of the held-out view written out (the trainer rescales
    to 76 for 67 crops)."""
    saved = checkpoint.read(str(folder / "runs" / "tiny" / "best.pt"))
    model = build_model(saved.config, torch.device("cpu"), None).eval()
    model.load_state_dict(saved.model)
    rows = []
    for name in names:
        with Image.open(folder / name) as image:
            pixels = TF.pil_to_tensor(image.convert("RGB"))
        pixels = TF.center_crop(TF.resize(pixels, [side], antialias=True), [side]).float()
        crops = (
            torch.stack(TF.ten_crop(pixels, [IMAGE_SIZE])) if ten_crop else TF.center_crop(pixels, [IMAGE_SIZE])[None]
        )
        normalized = (crops - saved.stats["mean"][:, None, None]) * saved.stats["scale"][:, None, None]
        with torch.no_grad():
            rows.append(model(normalized).softmax(-1).mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_predictions_agree_with_the_network_called_directly(trained, monkeypatch, ten_crop):
    names = ["disc.png", "cross.jpg", "gray.png", "alpha.png"]
    flags = ["--ten-crop"] if ten_crop else []
    result = run_predict(*names, "--checkpoint", "runs/tiny/best.pt", "--json", "--top", "10", *flags, cwd=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert [entry["image"] for entry in printed] == names

    monkeypatch.setattr(_common, "INTERPRET", False)  # the reference math, as in the command's process
    expected = expected_probabilities(trained, names, ten_crop)
    classes = list(data.SHAPES)
    for entry, row in zip(printed, expected, strict=True):
        assert len(entry["top"]) == 10
        got = torch.zeros(10)
        for item in entry["top"]:
            got[classes.index(item["class"])] = item["probability"]
        torch.testing.assert_close(got, row, rtol=1e-4, atol=1e-6)
        probabilities = [item["probability"] for item in entry["top"]]
        assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("ten_crop", [False, True])
def test_batches_are_one_size_and_the_padding_changes_no_prediction(trained, monkeypatch, ten_crop):
    monkeypatch.setattr(_common, "INTERPRET", False)  # the reference math: the batching is tested, not the kernels
    model, saved = predict.load_network(str(trained / "runs" / "tiny" / "best.pt"), torch.device("cpu"))
    sizes = []
    model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    names = ["disc.png", "cross.jpg", "gray.png", "alpha.png", "disc.png"]
    paths = [str(trained / name) for name in names]
    crops = 10 if ten_crop else 1

    whole, _ = predict.predict(paths, model, saved, ten_crop, top=10)
    assert sizes == [5 * crops], "five images: one pass of all five"
    sizes.clear()
    monkeypatch.setattr(predict, "BATCH", 3)
    batched, _ = predict.predict(paths, model, saved, ten_crop, top=10)
    assert sizes == [3 * crops, 3 * crops], "passes of 3: the last one's two images padded to 3"
    assert [entry["image"] for entry in batched] == paths
    for padded, alone in zip(batched, whole, strict=True):
        got = {item["class"]: item["probability"] for item in padded["top"]}
        expected = {item["class"]: item["probability"] for item in alone["top"]}
        assert got.keys() == expected.keys()
        assert [got[name] for name in expected] == pytest.approx(list(expected.values()), rel=1e-5, abs=1e-7)


def test_images_are_rescaled_to_the_side_the_checkpoints_run_used(trained, monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)  # the reference math, as in the command's process
    model, saved = predict.load_network(str(trained / "runs" / "tiny" / "best.pt"), torch.device("cpu"))
    assert saved.images == {"resize": 76, "store_side": None}
    names = ["disc.png", "cross.jpg"]
    saved.images = {"resize": 70, "store_side": 256}  # a run that rescaled to 70 (its images' side, not 76)
    results, _ = predict.predict([str(trained / name) for name in names], model, saved, False, top=10)
    classes = list(data.SHAPES)
    got = torch.tensor([[{item["class"]: item["probability"] for item in entry["top"]}[name] for name in classes]
                        for entry in results])  # fmt: skip
    torch.testing.assert_close(got, expected_probabilities(trained, names, False, side=70), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, expected_probabilities(trained, names, False, side=76), rtol=1e-3, atol=1e-4)


def test_text_output_shows_the_top_classes_per_image(trained):
    result = run_predict("disc.png", "--checkpoint", "runs/tiny/best.pt", "--top", "3", cwd=trained)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "disc.png" and len(lines) == 4
    rows = [line.split() for line in lines[1:]]
    assert all(percent.endswith("%") and name in data.SHAPES for percent, name in rows)
    percents = [float(percent[:-1]) for percent, _ in rows]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.01


def test_bad_images_each_get_a_message_and_the_good_ones_are_still_predicted(trained):
    (trained / "broken.jpg").write_bytes(b"not an image" * 20)
    full = Image.open(trained / "disc.png")
    full.crop((0, 0, 90, 50)).save(trained / "short.png")  # 50 < the 67-pixel crop
    full.close()
    with open(trained / "truncated.jpg", "wb") as file:
        file.write((trained / "cross.jpg").read_bytes()[:300])
    result = run_predict(
        "broken.jpg", "missing.png", "short.png", "truncated.jpg", "disc.png",
        "--checkpoint", "runs/tiny/best.pt", "--json", cwd=trained,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [entry["image"] for entry in json.loads(result.stdout)] == ["disc.png"]
    errors = result.stderr.splitlines()
    assert len(errors) == 4
    assert errors[0].startswith("error: broken.jpg: cannot be read as an image")
    assert errors[1].startswith("error: missing.png: cannot be read") and "No such file" in errors[1]
    assert errors[2].startswith("error: short.png: 90x50 pixels is too small for the network's 67x67 crop")
    assert errors[3].startswith("error: truncated.jpg: cannot be read as an image")


def write_foreign_checkpoints(folder) -> dict[str, str]:
    """name -> the message each kind of wrong checkpoint gets."""
    torch.save({"conv.weight": torch.randn(2, 2)}, folder / "state_dict.pt")  # a bare state_dict
    (folder / "garbage.pt").write_bytes(b"\x00garbage" * 100)
    saved = torch.load(folder / "runs" / "tiny" / "best.pt", weights_only=True)
    saved["model"] = {"fc.weight": torch.randn(3, 3)}  # our fields, another network's weights
    torch.save(saved, folder / "other_weights.pt")
    return {
        "nothere.pt": "does not exist",
        "state_dict.pt": "is not an alexnet_triton training checkpoint",
        "garbage.pt": "cannot be read",
        "other_weights.pt": "is not an alexnet_triton training checkpoint",
    }


def test_missing_and_foreign_checkpoints_are_refused_naming_the_file(trained, capsys, monkeypatch):
    monkeypatch.chdir(trained)
    for name, message in write_foreign_checkpoints(trained).items():
        assert predict.main(["disc.png", "--checkpoint", name]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: checkpoint {name!r}") and message in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["a.png", "--checkpoint", "x.pt", "--top", "0"], "error: --top must be positive, got 0"),
        (["a.png"], "error: the following arguments are required: --checkpoint"),
    ],
    ids=["top-0", "no-checkpoint"],
)
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        predict.parse_args(argv)
    assert exit.value.code == 2  # argparse's usage error
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: ") and err.splitlines()[-1].endswith(message), err

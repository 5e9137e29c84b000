"""Top classes for your own images from a trained checkpoint.

    python -m alexnet_triton.predict cat.jpg dog.png --checkpoint runs/NAME/best.pt
    python -m alexnet_triton.predict photos/*.jpg --checkpoint runs/NAME/best.pt --ten-crop --top 3 --json

Each image goes through what the run's held-out images went through: decoded as training decodes them
(data.rescale_and_crop: RGB, shorter side rescaled to data.resize_size of the run's crop, the centre kept),
then its centre crop (or, with --ten-crop, the four corners, the centre and their mirror images, the
softmax averaged over the ten) normalized with the statistics saved in the checkpoint. The checkpoint is
opened with weights_only=True: it cannot run code.

An unreadable image, an image smaller than the network's crop (its pixels would be invented by
upscaling), or a missing or foreign checkpoint each get a message naming the file; the other images are
still predicted, and the exit status is 1.
"""

import argparse
import json
import sys

import torch
from PIL import Image, UnidentifiedImageError

from alexnet_triton import augmentation, checkpoint, data
from alexnet_triton.cli_help import HelpWithDefaults
from alexnet_triton.runtime import resolve_device
from alexnet_triton.training_state import build_model

# Images per forward pass at most (x10 crops with --ten-crop), evened out over the images (data.even_batch_size);
# every pass is that size, the last padded up to it, so on a GPU the kernels tune and compile for one size.
BATCH = 32


class ImageError(ValueError):
    """An image that cannot be predicted; the message names the file."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.predict",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of the trainer (best.pt, last.pt)")
    parser.add_argument("--ten-crop", action="store_true", help="average the softmax over ten crops")
    parser.add_argument("--top", type=int, default=5, help="how many classes to show per image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be positive, got {args.top}")
    return args


def load_network(path: str, device: torch.device) -> tuple[torch.nn.Module, checkpoint.TrainingCheckpoint]:
    """The checkpoint's network in eval mode on device, and the checkpoint; CheckpointError naming the file
    when it is missing, unreadable, or not a checkpoint of this trainer."""
    try:
        saved = checkpoint.read(path)
        model = build_model(saved.config, device, None)
        model.load_state_dict(saved.model)
    except checkpoint.CheckpointError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError, RuntimeError) as error:  # a dict of other contents
        raise checkpoint.CheckpointError(
            f"checkpoint {path!r} is not an alexnet_triton training checkpoint ({type(error).__name__}: {error})"
        ) from None
    return model.eval(), saved


def decode(path: str, image_size: int, resize: int | None = None) -> torch.Tensor:
    """(3, S, S) float in [0, 255], decoded as the trainer decodes, S = resize (the run's; by default
    data.resize_size(image_size)); ImageError naming the file when it cannot be read or is smaller than the crop."""
    resize = data.resize_size(image_size) if resize is None else resize
    try:
        with Image.open(path) as image:
            if min(image.size) >= image_size:
                return data.rescale_and_crop(image, resize).float()
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot be read as an image ({error})") from None
    raise ImageError(
        f"{path}: {width}x{height} pixels is too small for the network's {image_size}x{image_size} crop "
        "(its pixels would be invented by upscaling)"
    )


def network_input(path: str, image_size: int, stats: dict, ten_crop: bool, resize: int | None = None) -> torch.Tensor:
    """(3, s, s), or (10, 3, s, s) with ten_crop: the image as the run's held-out images were seen."""
    view = augmentation.ten_crops if ten_crop else augmentation.eval_transform
    return view(decode(path, image_size, resize), image_size, stats)


@torch.no_grad()
def probabilities(model: torch.nn.Module, inputs: torch.Tensor, ten_crop: bool) -> torch.Tensor:
    """(N, classes) softmax of inputs (N, 3, s, s), or averaged over the crops of (N, 10, 3, s, s)."""
    device = next(model.parameters()).device
    if ten_crop:
        n, crops = inputs.shape[:2]
        return model(inputs.flatten(0, 1).to(device)).float().softmax(-1).view(n, crops, -1).mean(1).cpu()
    return model(inputs.to(device)).float().softmax(-1).cpu()


def predict(paths: list[str], model, saved: checkpoint.TrainingCheckpoint, ten_crop: bool, top: int):
    """([{"image": path, "top": [{"class": name, "probability": p}, ...]}], [error message per bad image])."""
    image_size = saved.config.image_size
    stats = {key: value.cpu() for key, value in saved.stats.items()}
    readable, inputs, errors = [], [], []
    for path in paths:
        try:
            inputs.append(network_input(path, image_size, stats, ten_crop, saved.resize))
            readable.append(path)
        except ImageError as error:
            errors.append(str(error))
    results = []
    size = data.even_batch_size(len(inputs), BATCH)
    for start in range(0, len(inputs), size):
        batch = torch.stack(inputs[start : start + size])
        seen = probabilities(model, data.pad_rows(batch, size), ten_crop)[: len(batch)]  # the padding left out
        best = seen.topk(min(top, len(saved.classes)), dim=1)
        for offset, (values, indices) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True)):
            classes = [{"class": saved.classes[i], "probability": p} for i, p in zip(indices, values, strict=True)]
            results.append({"image": readable[start + offset], "top": classes})
    return results, errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but no CUDA GPU is available", file=sys.stderr)
        return 1
    try:
        model, saved = load_network(args.checkpoint, device)
    except checkpoint.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    results, errors = predict(args.images, model, saved, args.ten_crop, args.top)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for result in results:
            print(result["image"])
            for entry in result["top"]:
                print(f"  {entry['probability']:7.2%}  {entry['class']}")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

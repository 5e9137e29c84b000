"""Small ImageFolder trees that tests write themselves: JPEGs of assorted sizes, and the awkward cases a
real folder holds (grayscale, CMYK, a PNG with alpha, a file that is not an image); PNGs of the built-in shapes."""

import os

import numpy as np
from PIL import Image

from alexnet_triton import data

CLASSES = ("cat", "dog")


def random_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random RGB image (a noise field blurred by upsampling), so JPEG keeps it close."""
    small = rng.integers(0, 256, (max(height // 4, 1), max(width // 4, 1), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def write_tree(root, *, per_class: int = 5, val_per_class: int = 2, awkward: bool = True, seed: int = 0) -> dict:
    """DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg; with awkward=True the train split also holds a
    grayscale JPEG, a CMYK JPEG, a PNG with alpha and a corrupt .jpg. Returns the awkward files' paths."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for name in CLASSES:
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                width, height = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                random_image(rng, width, height).save(os.path.join(folder, f"{i:03d}.jpg"), quality=90)
    if not awkward:
        return {}
    folder = os.path.join(root, "train", CLASSES[0])
    paths = {kind: os.path.join(folder, f"{kind}{ext}") for kind, ext in
             (("gray", ".jpg"), ("cmyk", ".jpg"), ("alpha", ".png"), ("corrupt", ".jpg"))}  # fmt: skip
    random_image(rng, 30, 26).convert("L").save(paths["gray"], quality=90)
    random_image(rng, 26, 34).convert("CMYK").save(paths["cmyk"], quality=90)
    rgba = random_image(rng, 28, 28).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)))
    rgba.save(paths["alpha"])
    with open(paths["corrupt"], "wb") as file:
        file.write(b"\xff\xd8\xff\xe0 this is not a JPEG after all")
    return paths


def write_shapes_tree(root, *, side: int, classes: int = 4, per_class: int = 5, val_per_class: int = 2,
                      seed: int = 0) -> None:  # fmt: skip
    """DIR/train/<shape>/*.png and DIR/val/<shape>/*.png: the built-in dataset's first `classes` shapes, drawn
    side x side (sharp edges on pixel noise: the hardest case for resampling) and saved losslessly."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, name in enumerate(data.SHAPES[:classes]):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                Image.fromarray(data.draw_shape_image(label, side, rng)).save(os.path.join(folder, f"{i:03d}.png"))

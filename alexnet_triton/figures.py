"""Figure 4 of the paper (section 6.1) for a trained network, from its own features, not from pixels:

- predictions.png: eight held-out images, each with the network's top-5 classes as bars, the true class
  marked (as in the figure's left half);
- neighbours.png: five held-out images, each followed by the six training images whose last hidden layer
  (fc7's output, AlexNet.features) is nearest in Euclidean distance (the figure's right half).

Every image is seen as the network is tested: its centre crop, normalized with the run's statistics. The
held-out images are spread evenly over the held-out set (an ImageFolder's images are sorted by class, so
they cover many classes). The paper searched the whole training set for neighbours; here at most
NEIGHBOUR_POOL training images, spread evenly, are searched: all of the built-in dataset's, and for
ImageNet about four per class, which keeps the search at a minute or so at the end of a run.

The network sees every image of a figure in batches of one size (the last padded up to it, data.pad_rows),
so on a GPU its kernels tune and compile for one more size at most, not one per partial batch.
"""

import os

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import ConcatDataset, Dataset

from alexnet_triton import augmentation, checkpoint, data, plots
from alexnet_triton.model import AlexNet
from alexnet_triton.training_state import build_model

PREDICTION_IMAGES = 8
NEIGHBOUR_QUERIES = 5
NEIGHBOURS = 6
NEIGHBOUR_POOL = 5000
# Pixels per forward pass at most: 64 images at 227x227 (75 MB of conv1 output in fp32); smaller crops come
# in bigger batches, which read the fully-connected weights fewer times per image.
BATCH_PIXELS = 64 * 227 * 227


def batch_size_for(images: int, image_size: int) -> int:
    """Images per forward pass for a figure that shows the network `images` images: BATCH_PIXELS' worth at
    most, evened out over them (data.even_batch_size)."""
    return data.even_batch_size(images, max(1, BATCH_PIXELS // image_size**2))


def spread_indices(count: int, total: int) -> list[int]:
    """min(count, total) distinct indices spread evenly over range(total)."""
    count = min(count, total)
    return [i * total // count for i in range(count)]


def centre_crops(dataset: Dataset, indices: list[int], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops (N, 3, s, s) in [0, 255], labels (N,)): what the network sees of these images, before
    normalisation."""
    samples = [dataset[i] for i in indices]
    crops = torch.stack([TF.center_crop(image, [image_size]) for image, _ in samples])
    return crops, torch.tensor([label for _, label in samples])


@torch.no_grad()
def network_outputs(model: AlexNet, dataset: Dataset, indices: list[int], image_size: int, stats: dict,
                    what: str, batch: int | None = None, channels_last: bool = False) -> torch.Tensor:  # fmt: skip
    """The model's softmax ("probabilities") or fc7 activations ("features") for these images' centre crops,
    on the CPU; `batch` images at a time (default batch_size_for them), so that thousands of 227x227 images
    never sit in memory at once. Every pass is `batch` images: the last is padded up to it, and the
    padding's outputs are left out. channels_last: the images' layout on the device (a run's, so that its kernels
    see nothing new)."""
    device = model.devices[0]
    batch = batch or batch_size_for(len(indices), image_size)
    outputs = []
    for start in range(0, len(indices), batch):
        crops, _ = centre_crops(dataset, indices[start : start + batch], image_size)
        images = data.pad_rows(augmentation.normalize(crops, stats), batch)
        images = images.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        result = model(images).float().softmax(-1) if what == "probabilities" else model.features(images).float()
        outputs.append(result[: len(crops)].cpu())
    return torch.cat(outputs)


def nearest(queries: torch.Tensor, pool: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) (Q, k) of the k rows of pool nearest each query row in Euclidean distance,
    nearest first. Computed as differences, not through a matrix product, so near-ties come out in the
    order their exact distances give."""
    distances = torch.cdist(queries.double(), pool.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return distances.topk(min(k, len(pool)), dim=1, largest=False)


def draw(model: AlexNet, train_set: Dataset, val_set: Dataset, stats: dict, image_size: int, classes: list[str],
         folder: str, batch_size: int | None = None, channels_last: bool = False) -> dict:  # fmt: skip
    """Write predictions.png and neighbours.png into folder; returns what they show (dataset indices,
    probabilities, neighbours and their distances). Every forward pass is batch_size images (a run's
    evaluation batch, so the figure adds no size the kernels have not seen; default batch_size_for the
    images searched). channels_last: the images' layout, as the run's."""
    was_training = model.training
    model.eval()  # no dropout: the trained network's own predictions and features
    try:
        shown = spread_indices(PREDICTION_IMAGES, len(val_set))
        queries = spread_indices(NEIGHBOUR_QUERIES, len(val_set))
        pool = spread_indices(NEIGHBOUR_POOL, len(train_set))
        batch = batch_size or batch_size_for(len(queries) + len(pool), image_size)
        crops, labels = centre_crops(val_set, shown, image_size)
        probabilities = network_outputs(model, val_set, shown, image_size, stats, "probabilities", batch, channels_last)
        plots.top5_predictions(crops, probabilities, labels, classes, os.path.join(folder, "predictions.png"))

        # The queries' and the pool's features in one series of passes: the queries' few images share them.
        searched = queries + [len(val_set) + i for i in pool]
        features = network_outputs(model, ConcatDataset([val_set, train_set]), searched, image_size, stats,
                                   "features", batch, channels_last)  # fmt: skip
        distances, found = nearest(features[: len(queries)], features[len(queries) :], NEIGHBOURS)
        neighbours = [[pool[j] for j in row] for row in found.tolist()]
        query_crops, query_labels = centre_crops(val_set, queries, image_size)
        found_crops, found_labels = centre_crops(train_set, [i for row in neighbours for i in row], image_size)
        plots.nearest_neighbours(
            query_crops, query_labels, found_crops.unflatten(0, found.shape), found_labels.view(found.shape), classes,
            os.path.join(folder, "neighbours.png"),
        )  # fmt: skip
    finally:
        model.train(was_training)
    return {
        "predicted": shown,
        "probabilities": probabilities,
        "queries": queries,
        "neighbours": neighbours,
        "distances": distances,
    }


def draw_for_checkpoint(path: str, data_root: str | None, device: torch.device, devices: str | None = None,
                        train_size: int | None = None, val_size: int | None = None,
                        batch_size: int | None = None) -> dict:  # fmt: skip
    """Figure 4 of a saved network (the trainer's --evaluate), into the checkpoint's folder: on data_root's
    images, or on the built-in dataset the run drew (its seed and sizes)."""
    saved = checkpoint.read(path)
    seed = saved.args["seed"]
    if data_root is None:
        train_size, val_size = saved.args["train_size"], saved.args["val_size"]
    image_size = saved.config.image_size
    train_set, val_set, classes = data.load_datasets(data_root, image_size, train_size, val_size, seed, saved.resize)
    saved.check_classes(len(classes), path)
    model = build_model(saved.config, device, devices)
    model.load_state_dict(saved.model)
    stats = {key: value.cpu() for key, value in saved.stats.items()}
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return draw(model, train_set, val_set, stats, image_size, classes, folder, batch_size)

"""Data sets — scikit-learn's bundled handwritten digits (no download needed), Fashion-MNIST
(``safemax.data.fashion_mnist_files``, re-exported here), image folders, class splits — and ``Batches``,
which draws a fit's batches from any map-style data set or iterable of batches."""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from safemax.data import rows
from safemax.data.fashion_mnist_files import (  # noqa: F401
    FASHION_MNIST_CLASSES,
    fashion_mnist,
    find_fashion_mnist,
)

NUM_DIGITS = 10


def digits_dataset(size: int = 16) -> TensorDataset:
    """The 1,797 8×8 digits, upsampled to ``size``×``size``, scaled to [-1, 1]: ``(image [1,H,W], label)``."""
    from sklearn.datasets import (
        load_digits,  # bundled with scikit-learn, read from disk
    )

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    return TensorDataset(images, torch.tensor(bunch.target, dtype=torch.int64))


class ConditionedImages(Dataset):
    """``images [N, C, H, W]`` with one condition per image — class ids ``[N]``, prompt
    embeddings ``[N, L, D]`` or a text family's dict of N-row tensors — as ``(image, condition)``
    items (a ``TensorDataset`` that also holds dict conditions)."""

    def __init__(self, images: torch.Tensor, conditions):
        if rows.count(conditions) != len(images):
            raise ValueError(f"{len(images)} images but {rows.count(conditions)} conditions")
        self.images, self.conditions = images, conditions

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], rows.take(self.conditions, i)


def balanced_labels(classes, n: int) -> torch.Tensor:
    """``n`` class ids spread evenly over ``classes`` (in blocks, in order)."""
    classes = torch.as_tensor(list(classes))
    return classes.repeat_interleave(-(-n // len(classes)))[:n]


def labels_of(dataset) -> torch.Tensor:
    """All class ids of a map-style ``(image, label)`` data set (fast paths for TensorDataset and
    a Hugging Face ``datasets.Dataset``, whose label column is read at once)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list):
        key = next((k for k in CONDITION_KEYS if k in columns), None)
        if key is not None:
            return torch.as_tensor(dataset[key]).long()
    return torch.tensor([int(split_item(dataset[i])[1]) for i in range(len(dataset))])


def split_by_class(dataset: Dataset, classes):
    """``(with_classes, without_classes)``: two subsets of ``dataset`` split on the label."""
    classes = torch.as_tensor(list(classes))
    labels = labels_of(dataset)
    mask = torch.isin(labels, classes)
    inside = torch.nonzero(mask).flatten().tolist()
    outside = torch.nonzero(~mask).flatten().tolist()
    if isinstance(dataset, TensorDataset):
        return (TensorDataset(*(t[inside] for t in dataset.tensors)),
                TensorDataset(*(t[outside] for t in dataset.tensors)))
    return torch.utils.data.Subset(dataset, inside), torch.utils.data.Subset(dataset, outside)


class ImageFolder(Dataset):
    """``root/<class id>/<image>`` files as ``(image [C, size, size] in [-1, 1], class id)``."""

    EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

    def __init__(self, root: str, size: int, channels: int):
        import os

        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist")
        self.items = []
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if not os.path.isdir(folder):
                continue
            if not name.isdigit():
                raise ValueError(f"{folder}: class folders must be named by class id (0, 1, …)")
            self.items += [(os.path.join(folder, f), int(name)) for f in sorted(os.listdir(folder))
                           if f.lower().endswith(self.EXTENSIONS)]
        if not self.items:
            raise ValueError(f"no images under {root!r} (expected {root}/<class id>/<image>.png)")
        self.size, self.mode = size, {1: "L", 3: "RGB"}.get(channels)
        if self.mode is None:
            raise ValueError(f"image folders need a 1- or 3-channel model, not {channels}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        path, label = self.items[i]
        img = Image.open(path).convert(self.mode).resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).view(self.size, self.size, -1)
        return x.permute(2, 0, 1) / 127.5 - 1, label


# The names a dict item or batch (e.g. a Hugging Face data set's row) may give its two parts.
IMAGE_KEYS = ("image", "images", "pixel_values", "latent", "latents", "x", "input")
CONDITION_KEYS = ("label", "labels", "class_labels", "class", "y", "prompt_embeds",
                  "encoder_hidden_states", "condition")
# A text family's condition parts, by the pipelines' names (see safemax.models.families): an item with
# any of these besides prompt_embeds has a dict condition made of all of them.
PIPELINE_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "add_time_ids", "prompt_attention_mask",
                 "guidance", "resolution", "aspect_ratio")


def is_map_style(data) -> bool:
    """PyTorch's own definition: anything with ``__len__`` and ``__getitem__`` (a Dataset, a list or
    tuple of pairs, a Hugging Face ``datasets.Dataset``); everything else is an iterable of batches."""
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and \
        not isinstance(data, (torch.utils.data.IterableDataset, dict, str, bytes))


def split_item(item, what: str = "item"):
    """``(image, condition)`` of one data-set item or one batch: a pair, or a dict with an image
    key (``image``, ``pixel_values``, ``latents``, …) and a condition key (``label``,
    ``prompt_embeds``, …) — or several of a text family's keys (``prompt_embeds``,
    ``pooled_prompt_embeds``, …), which together are the condition."""
    if isinstance(item, dict):
        image = next((k for k in IMAGE_KEYS if k in item), None)
        parts = [k for k in PIPELINE_KEYS if k in item]
        if parts and parts != ["prompt_embeds"]:
            if image is None:
                raise ValueError(f"a dict {what} needs an image key (one of {', '.join(IMAGE_KEYS)}); "
                                 f"got keys {sorted(item)}")
            return item[image], {k: item[k] for k in parts}
        cond = next((k for k in CONDITION_KEYS if k in item), None)
        if image is None or cond is None:
            raise ValueError(f"a dict {what} needs an image key (one of {', '.join(IMAGE_KEYS)}) and a "
                             f"condition key (one of {', '.join(CONDITION_KEYS)}); got keys "
                             f"{sorted(item)}")
        return item[image], item[cond]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    kind = f"a {type(item).__name__}" + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
    raise ValueError(f"each {what} must be an (image, condition) pair or a dict with image and "
                     f"condition keys, got {kind}")


def _shape(x) -> list:
    if isinstance(x, dict):  # a text family's condition: its prompt embedding's shape
        if "prompt_embeds" not in x:
            raise ValueError(f"a dict condition needs 'prompt_embeds' (got keys {sorted(x)})")
        x = x["prompt_embeds"]
    if isinstance(x, (int, float, np.integer, np.floating)):
        return []
    try:
        return list(torch.as_tensor(x).shape)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"expected a tensor or an array, got a {type(x).__name__} (convert images "
                         "to float tensors scaled to [-1, 1] first)") from None


class Batches:
    """Draws batches of ``(images, conditions)`` — a condition is a class id or a prompt
    embedding ``[L, D]`` — from a map-style data set of ``(image, condition)`` items (random
    indices from the Unlearner's generator: reproducible and resumable) or cycles through an
    iterable of *batches* such as a DataLoader (re-chunked to the requested batch size).

    ``image_dim`` is the number of dimensions of one image (3: ``[C, H, W]``); the first item
    (or batch) is checked against it when the ``Batches`` is made, so that data of the wrong
    form fails here with a message that names the expected one. ``form`` puts each batch of
    conditions in the model family's one form (``ForgetTargets.form``).
    """

    def __init__(self, data, name: str, image_dim: int = 3, form=None):
        if data is None:
            raise ValueError(f"{name} data is None: give a data set of (image, condition) pairs or "
                             "an iterable of (images, conditions) batches")
        self.name, self.data, self.image_dim = name, data, image_dim
        self.form = form or (lambda cond: cond)
        self.map_style = is_map_style(data)
        if self.map_style and len(data) == 0:
            raise ValueError(f"{name} data set is empty: give at least one (image, label) pair")
        self._iter, self._buffer = None, []
        self._check_first()

    def _check_first(self):
        n = self.image_dim
        if self.map_style:
            image, cond = split_item(self.data[0], f"item of the {self.name} data set")
            if len(_shape(image)) == n + 1 and len(_shape(cond)) in (1, 3):
                raise ValueError(
                    f"item 0 of the {self.name} data set looks like a batch (images {_shape(image)}, "
                    f"conditions {_shape(cond)}): a list, tuple or Dataset is read as (image, "
                    "condition) items; give batches as an iterable instead (a DataLoader or a "
                    "generator), or the items one by one")
            if len(_shape(image)) != n:
                raise ValueError(f"item 0 of the {self.name} data set has an image of shape "
                                 f"{_shape(image)}; expected one image of {n} dimensions "
                                 "([C, H, W])")
            if len(_shape(cond)) not in (0, 2):
                raise ValueError(f"item 0 of the {self.name} data set has a condition of shape "
                                 f"{_shape(cond)}; expected a class id (a scalar) or prompt "
                                 "embeddings [L, D]")
        else:
            self._fill()  # checks the first batch; it is kept for the first draw

    def labels(self):
        return labels_of(self.data) if self.map_style else None

    def peek(self):
        """``(images [1, ...], conditions [1, ...])`` of one item, without drawing from the data."""
        if self.map_style:
            return self.items(torch.tensor([0]))
        if not self._buffer:
            self._fill()
        image, cond = self._buffer[0]
        return _as_images(image[None], self.name), self._conditions(rows.apply(lambda v: v[None], cond))

    def items(self, idx: torch.Tensor):
        """The items at indices ``idx`` of a map-style data set, as ``(images, conditions)``."""
        if isinstance(self.data, TensorDataset):
            images, conds = self.data.tensors[0][idx], self.data.tensors[1][idx]
        elif isinstance(self.data, ConditionedImages):
            images, conds = self.data.images[idx], rows.take(self.data.conditions, idx)
        else:
            items = [split_item(self.data[int(i)], f"item of the {self.name} data set") for i in idx]
            images = torch.stack([torch.as_tensor(im) for im, _ in items])
            conds = _stack_conditions([c for _, c in items])
        return _as_images(images, self.name), self._conditions(conds)

    def _conditions(self, conds):
        return self.form(rows.normalized(conds))

    def _fill(self):
        """Refill the buffer with the rows of the iterable's next batch (restarting it at its end)."""
        if self._iter is None:
            self._iter = iter(self.data)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = iter(self.data)
            batch = next(self._iter, None)
            if batch is None:
                raise ValueError(f"{self.name} data yields nothing") from None
        images, conds = split_item(batch, f"batch of the {self.name} data")
        images = torch.as_tensor(images)
        if images.dim() != self.image_dim + 1:
            hint = " (one image, not a batch: give a data set of items — a list of (image, " \
                   "condition) pairs is one — or batch them with a DataLoader)" \
                if images.dim() == self.image_dim else ""
            raise ValueError(f"{self.name} data: an iterable must yield batches (images [N, C, H, W], "
                             f"conditions [N] or [N, L, D]), got images of shape {list(images.shape)}"
                             + hint)
        conds = _stack_conditions(conds)
        dims = len(_shape(conds))
        if dims not in (1, 3) or rows.count(conds) != images.shape[0]:
            shapes = rows.describe(conds) if isinstance(conds, dict) else list(conds.shape)
            raise ValueError(f"{self.name} data: a batch of {images.shape[0]} images came with "
                             f"conditions of shape {shapes}; expected one class id ([N]), one "
                             "prompt embedding ([N, L, D]) or one row of a dict of conditions per image")
        self._buffer = [(images[i], rows.take(conds, i)) for i in range(len(images))]

    def draw(self, n: int, generator: torch.Generator, local=None):
        """``n`` random items; ``local`` (the Unlearner's, under multi-process training) picks the
        rows this process trains on. Every process draws the same ``n`` indices, so the random
        stream and hence the global batch do not depend on the number of processes; a map-style
        data set loads only the local rows."""
        if self.map_style:
            idx = torch.randint(0, len(self.data), (n,), generator=generator)
            return self.items(idx if local is None else local(idx))
        images, conds = [], []
        while len(images) < n:
            if not self._buffer:
                self._fill()
            im, c = self._buffer.pop(0)
            images.append(im)
            conds.append(c)
        images = _as_images(torch.stack(images), self.name)
        conds = self._conditions(_stack_conditions(conds))
        return (images, conds) if local is None else (local(images), local(conds))


def _as_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not (images.is_floating_point() or images.is_complex()):
        raise ValueError(f"{name} images are {images.dtype}: give floating images scaled to [-1, 1] "
                         "(for uint8 pixels: x.float() / 127.5 - 1)")
    return images.float()


def _stack_conditions(conds):
    """Class ids (ints, numpy or 0-dim tensors) → ``[N]`` int64; prompt embeddings ``[L, D]`` →
    ``[N, L, D]``; dicts of per-row tensors → a dict of batches; a tensor or a dict of tensors
    (a batch's conditions) is returned as it is."""
    if torch.is_tensor(conds):
        return conds
    if isinstance(conds, dict):
        return {k: torch.as_tensor(v) for k, v in conds.items()}
    if isinstance(conds, (np.ndarray, int, np.integer)):
        return torch.as_tensor(conds)
    return rows.stack(list(conds))

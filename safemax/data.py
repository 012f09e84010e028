"""scikit-learn's bundled handwritten digits as a diffusion data set (no download needed)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

NUM_DIGITS = 10


def digits_dataset(size: int = 16) -> TensorDataset:
    """The 1,797 8×8 digits, upsampled to ``size``×``size``, scaled to [-1, 1]: ``(image [1,H,W], label)``."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, read from disk

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 2 - 1).contiguous()
    return TensorDataset(images, torch.tensor(bunch.target, dtype=torch.int64))


def balanced_labels(classes, n: int) -> torch.Tensor:
    """``n`` class ids spread evenly over ``classes`` (in blocks, in order)."""
    classes = torch.as_tensor(list(classes))
    return classes.repeat_interleave(-(-n // len(classes)))[:n]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """All labels of a map-style ``(image, label)`` data set (fast path for TensorDataset)."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


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


class Batches:
    """Draws batches of ``(images, conditions)`` — a condition is a class id or a prompt
    embedding ``[L, D]`` — from a map-style data set (random indices from the
    Unlearner's generator: reproducible and resumable) or cycles through an iterable such as a
    DataLoader (re-chunked to the requested batch size)."""

    def __init__(self, data, name: str):
        self.name = name
        self.map_style = isinstance(data, Dataset) and hasattr(data, "__len__") \
            and not isinstance(data, torch.utils.data.IterableDataset)
        self.data = data
        if self.map_style and len(data) == 0:
            raise ValueError(f"{name} data set is empty: give at least one (image, label) pair")
        self._iter, self._buffer = None, []

    def labels(self):
        return labels_of(self.data) if self.map_style else None

    def items(self, idx: torch.Tensor):
        """The items at indices ``idx`` of a map-style data set, as ``(images, conditions)``."""
        if isinstance(self.data, TensorDataset):
            images, conds = self.data.tensors[0][idx], self.data.tensors[1][idx]
        else:
            items = [self.data[int(i)] for i in idx]
            images = torch.stack([torch.as_tensor(im) for im, _ in items])
            conds = _stack_conditions([c for _, c in items])
        return images.float(), _as_conditions(conds)

    def draw(self, n: int, generator: torch.Generator, local=None):
        """``n`` random items; ``local`` (the Unlearner's, under multi-process training) picks the
        rows this process trains on. Every process draws the same ``n`` indices, so the random
        stream and hence the global batch do not depend on the number of processes; a map-style
        data set loads only the local rows."""
        if self.map_style:
            idx = torch.randint(0, len(self.data), (n,), generator=generator)
            return self.items(idx if local is None else local(idx))
        images, conds, count = [], [], 0
        while count < n:
            if not self._buffer:
                if self._iter is None:
                    self._iter = iter(self.data)
                try:
                    batch = next(self._iter)
                except StopIteration:
                    self._iter = iter(self.data)
                    batch = next(self._iter, None)
                    if batch is None:
                        raise ValueError(f"{self.name} data yields nothing")
                self._buffer = list(zip(torch.as_tensor(batch[0]), torch.as_tensor(batch[1])))
            im, c = self._buffer.pop(0)
            images.append(im)
            conds.append(c)
            count += 1
        images, conds = torch.stack(images).float(), _as_conditions(_stack_conditions(conds))
        return (images, conds) if local is None else (local(images), local(conds))


def _as_conditions(conds: torch.Tensor) -> torch.Tensor:
    """Class ids as int64, prompt embeddings as float32."""
    return conds.float() if conds.is_floating_point() else conds.long()


def _stack_conditions(conds: list) -> torch.Tensor:
    """Class ids (ints or 0-dim tensors) → ``[N]`` int64; prompt embeddings ``[L, D]`` → ``[N, L, D]``."""
    if torch.is_tensor(conds[0]) and conds[0].dim() > 0:
        return torch.stack(conds)
    return torch.tensor([int(c) for c in conds])

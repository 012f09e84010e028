"""scikit-learn's bundled handwritten digits as a diffusion data set (no download needed)."""
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

"""Any data set: whatever has ``__len__`` and ``__getitem__`` is a data set of (image, condition)
items (lists, tuples, numpy-backed sets, Hugging Face data sets); an iterable yields batches.
Each form trains exactly like the equivalent TensorDataset, for class ids and for prompt
embeddings; data of the wrong form fails with a message that names the expected one."""
import copy

import numpy as np
import pytest
import torch
from problems import params, tiny_data, tiny_scheduler, tiny_unet
from torch.utils.data import DataLoader, Dataset, TensorDataset

from safemax import Unlearner
from safemax.data import Batches, labels_of, split_by_class


class NumpyPairs(Dataset):
    """A user's own data set backed by numpy arrays, returning numpy items."""

    def __init__(self, dataset: TensorDataset):
        self.x, self.y = dataset.tensors[0].numpy(), dataset.tensors[1].numpy()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def fit_weights(unet, retain, forget, forget_ids=(1,), **kwargs):
    u = Unlearner(unet, tiny_scheduler(), forget=list(forget_ids), lr=1e-3, seed=2, **kwargs)
    u.fit(retain, forget, steps=2, batch_size=4, progress=False)
    return params(unet)


def as_list(ds: TensorDataset):
    return [(x, int(y)) for x, y in zip(*ds.tensors)]


def hf_dataset(ds: TensorDataset):
    datasets = pytest.importorskip("datasets")
    x, y = ds.tensors
    return datasets.Dataset.from_dict({"image": x.numpy(), "label": y.numpy()}).with_format("torch")


FORMS = {
    "list": as_list,
    "tuple": lambda ds: tuple(as_list(ds)),
    "numpy": NumpyPairs,
    "hugging face": hf_dataset,
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_map_style_form_trains_like_a_tensor_dataset(form):
    retain, forget = tiny_data()
    base = tiny_unet()
    want = fit_weights(copy.deepcopy(base), retain, forget)
    got = fit_weights(copy.deepcopy(base), FORMS[form](retain), FORMS[form](forget))
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("form", ["list", "hugging face"])
def test_labels_and_split_of_each_form(form):
    retain, _ = tiny_data()
    data = FORMS[form](retain)
    torch.testing.assert_close(labels_of(data), retain.tensors[1])
    inside, outside = split_by_class(data, [2])
    assert len(inside) + len(outside) == len(retain) and len(inside) == int((retain.tensors[1] == 2).sum())


def test_retain_data_with_a_forget_class_is_refused_in_every_form():
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1])
    mixed = as_list(retain) + as_list(forget)
    with pytest.raises(ValueError, match=r"retain data contains forget class\(es\) \[1\]"):
        u.fit(mixed, forget, steps=1, batch_size=2, progress=False)


def text_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4)


def text_data():
    g = torch.Generator().manual_seed(1)
    concepts = torch.randn(4, 5, 16, generator=g)
    retain = TensorDataset(torch.randn(12, 4, 8, 8, generator=g), concepts[1:][torch.arange(12) % 3])
    forget = TensorDataset(torch.randn(4, 4, 8, 8, generator=g), concepts[:1].expand(4, -1, -1))
    return concepts[:1], retain, forget


def hf_text_dataset(ds: TensorDataset):
    datasets = pytest.importorskip("datasets")
    x, e = ds.tensors
    return datasets.Dataset.from_dict({"latents": x.numpy(), "prompt_embeds": e.numpy()}).with_format("torch")


@pytest.mark.parametrize("form", ["list", "hugging face"])
def test_latent_and_embedding_items_train_like_a_tensor_dataset(form):
    # A list of (latent, embedding) pairs used to be taken for batches: latent *rows* were paired
    # with embedding *rows*, then it failed (or, where the shapes happened to agree, trained on
    # wrong data).
    concept, retain, forget = text_data()
    base = text_unet()
    convert = (lambda ds: list(zip(*ds.tensors))) if form == "list" else hf_text_dataset

    def fit(unet, r, f):
        u = Unlearner(unet, tiny_scheduler(), forget={"c": concept}, lr=1e-3, seed=2)
        u.fit(r, f, steps=2, batch_size=2, progress=False)
        return params(unet)

    want = fit(copy.deepcopy(base), retain, forget)
    got = fit(copy.deepcopy(base), convert(retain), convert(forget))
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_class_ids_given_to_a_text_model_and_embeddings_to_a_class_model_are_refused():
    concept, retain, _ = text_data()
    u = Unlearner(text_unet(), tiny_scheduler(), forget={"c": concept})
    with pytest.raises(ValueError, match=r"retain data must yield \(latent, condition\)"):
        u.fit([(x, 0) for x in retain.tensors[0]], None, steps=1, progress=False)
    r, f = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1])
    with pytest.raises(ValueError, match="yield text conditions .* class-conditional: give class ids"):
        u.fit([(x, torch.randn(5, 16)) for x in r.tensors[0]], f, steps=1, progress=False)


def test_an_iterable_of_batches_still_works():
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=1e-3)
    h = u.fit(DataLoader(retain, batch_size=5, shuffle=True), iter([forget.tensors]) and
              DataLoader(forget, batch_size=3), steps=3, batch_size=4, progress=False)
    assert len(h) == 3


def generator_of(items):
    class Items:  # an iterable (no __getitem__), yielding whatever it is given
        def __iter__(self):
            return iter(items)
    return Items()


@pytest.mark.parametrize("data, message", [
    # an iterable of single items, where batches were expected
    (lambda r: generator_of(as_list(r)), r"must yield batches.*one image, not a batch"),
    # a batch whose conditions do not match its images (zip used to drop the extra rows silently)
    (lambda r: generator_of([(r.tensors[0][:6], r.tensors[1][:4])]), r"a batch of 6 images came with conditions of shape \[4\]"),
    # a list of batches: a list is a data set of items
    (lambda r: [(r.tensors[0][:4], r.tensors[1][:4])], r"looks like a batch .* give batches as an iterable"),
    # not a pair
    (lambda r: [r.tensors[0][i] for i in range(4)], r"\(image, condition\) pair"),
    # a dict item without known keys
    (lambda r: [{"img": r.tensors[0][0], "cls": 0}], r"image key .* got keys \['cls', 'img'\]"),
    # uint8 pixels
    (lambda r: [((r.tensors[0][i] * 100).to(torch.uint8), 0) for i in range(4)], r"uint8: give floating images"),
    # a condition that is neither a class id nor prompt embeddings
    (lambda r: [(r.tensors[0][i], torch.tensor([0, 1])) for i in range(4)], r"condition of shape \[2\]"),
])
def test_data_of_the_wrong_form_is_refused_with_the_expected_form(data, message):
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1])
    with pytest.raises(ValueError, match=message):
        u.fit(data(retain), forget, steps=1, batch_size=2, progress=False)


def test_batches_reads_dict_batches_from_a_loader():
    retain, _ = tiny_data()
    ds = hf_dataset(retain)
    b = Batches(DataLoader(ds, batch_size=4), "retain")
    x, y = b.draw(6, torch.Generator())
    assert x.shape == (6, 1, 8, 8) and y.dtype == torch.int64
    torch.testing.assert_close(y, retain.tensors[1][:6])


def test_numpy_items_keep_their_values():
    retain, _ = tiny_data()
    b = Batches(NumpyPairs(retain), "retain")
    x, y = b.items(torch.tensor([3, 0]))
    torch.testing.assert_close(x, retain.tensors[0][[3, 0]])
    assert y.tolist() == retain.tensors[1][[3, 0]].tolist() and np.issubdtype(NumpyPairs(retain)[0][1].dtype, np.integer)

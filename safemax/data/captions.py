"""Captions for Fashion-MNIST: every class named by several synonyms inside several templates, so
that a text-to-image model trained on them (``safemax.zoo.sd_pipeline``) knows each class by many
prompts, and erasing a class can be tested on prompts that were not used to erase it.

A caption is ``template.format(synonym)``, e.g. ``"a photo of a sneaker"``; the empty caption
``""`` (about 10% of the rows when training, ``EMPTY_SHARE``) is what classifier-free guidance
needs. Each class has ``len(SYNONYMS[c]) × len(TEMPLATES)`` captions (3 × 9 = 27).

**The split of a class's prompts** (``prompts(c, part)``), fixed and documented because later
results depend on it:

| part | synonyms | templates | per class |
| --- | --- | --- | --- |
| ``"erase"`` | the first, ``SYNONYMS[c][0]`` | the first ``ERASE_TEMPLATES`` (4) | 4 |
| ``"paraphrase"`` | the others, ``SYNONYMS[c][1:]`` | the others, ``TEMPLATES[4:]`` | 10 |
| ``"all"`` | every one | every one | 27 |

Erase and paraphrase prompts share no class word and no template, so a paraphrase tests whether
erasure reached the concept rather than the words it was erased with. The remaining 13 prompts
(the first synonym in another template, another synonym in an erase template) are in neither.

CLIP's tokenizer splits on hyphens and spaces ("t-shirt" is "t", "-", "shirt"), so a class word
may be a few tokens; ``check_tokenizer`` checks that every caption fits a tokenizer, unknown-free.
"""
import torch
from torch.utils.data import Dataset, TensorDataset

from safemax.data.fashion_mnist_files import FASHION_MNIST_CLASSES

SYNONYMS = (
    ("t-shirt", "tee", "top"),                  # 0 T-shirt/top
    ("trousers", "pants", "jeans"),             # 1 Trouser
    ("pullover", "sweater", "jumper"),          # 2 Pullover
    ("dress", "gown", "frock"),                 # 3 Dress
    ("coat", "jacket", "overcoat"),             # 4 Coat
    ("sandal", "sandals", "flip-flop"),         # 5 Sandal
    ("shirt", "blouse", "button-down"),         # 6 Shirt
    ("sneaker", "trainer", "running shoe"),     # 7 Sneaker
    ("bag", "handbag", "purse"),                # 8 Bag
    ("ankle boot", "boot", "bootie"),           # 9 Ankle boot
)
"""The words of each class, indexed by label; the first is the one the erasing prompts use."""

NEIGHBOURS = ((6, 2), (3, 6), (6, 4), (4, 6), (6, 2), (7, 9), (0, 2), (9, 5), (0, 6), (7, 5))
"""The two classes most like each class, by label: those the Fashion-MNIST classifier confuses
with it most on the 10,000 test images (both directions counted; e.g. sneaker: ankle boot 38,
sandal 14 of 10,000). Erasing a class is judged on them apart from the other classes: they are
where collateral damage shows first."""

TEMPLATES = (
    "a photo of a {}", "a picture of a {}", "an image of a {}", "{}",          # the erasing ones
    "a {} on a black background", "a black and white photo of a {}", "a product photo of a {}",
    "a close-up photo of a {}", "a low resolution photo of a {}",
)
"""The caption templates; the first ``ERASE_TEMPLATES`` are the erasing prompts' ones."""

ERASE_TEMPLATES = 4
EMPTY = ""
EMPTY_SHARE = 0.1
"""The share of training rows whose caption is empty (classifier-free guidance's unconditional)."""

PARTS = ("erase", "paraphrase", "all")
NUM_CLASSES = len(SYNONYMS)


def _class_captions(c: int) -> tuple:
    return tuple(t.format(w) for w in SYNONYMS[c] for t in TEMPLATES)


CAPTIONS = (EMPTY,) + tuple(cap for c in range(NUM_CLASSES) for cap in _class_captions(c))
"""Every distinct caption, the empty one first, then class by class (synonym-major): a caption's
index here is its id (``caption_ids``, ``draw``)."""

CAPTION_CLASSES = torch.tensor([-1] + [c for c in range(NUM_CLASSES) for _ in _class_captions(c)])
"""The class of each caption of ``CAPTIONS`` (-1: the empty caption)."""

_FIRST = torch.tensor([1 + sum(len(_class_captions(k)) for k in range(c)) for c in range(NUM_CLASSES)])
_COUNT = torch.tensor([len(_class_captions(c)) for c in range(NUM_CLASSES)])
_ID = {cap: i for i, cap in enumerate(CAPTIONS)}


def _check_class(class_id) -> int:
    if isinstance(class_id, bool) or not isinstance(class_id, int) and not (
            torch.is_tensor(class_id) and class_id.dim() == 0 and not class_id.is_floating_point()):
        raise ValueError(f"class_id must be an integer 0..{NUM_CLASSES - 1}, got {class_id!r}")
    c = int(class_id)
    if not 0 <= c < NUM_CLASSES:
        names = ", ".join(f"{i} {n}" for i, n in enumerate(FASHION_MNIST_CLASSES))
        raise ValueError(f"class_id {c} is not a Fashion-MNIST class ({names})")
    return c


def prompts(class_id: int, part: str = "erase") -> list:
    """The prompts of class ``class_id`` in ``part``: ``"erase"`` (the first synonym in the first
    ``ERASE_TEMPLATES`` templates), ``"paraphrase"`` (the other synonyms in the other templates)
    or ``"all"`` (every synonym in every template); see the module's table.

    Raises:
        ValueError: an unknown class id or part.
    """
    c = _check_class(class_id)
    if part == "erase":
        return [t.format(SYNONYMS[c][0]) for t in TEMPLATES[:ERASE_TEMPLATES]]
    if part == "paraphrase":
        return [t.format(w) for w in SYNONYMS[c][1:] for t in TEMPLATES[ERASE_TEMPLATES:]]
    if part == "all":
        return list(_class_captions(c))
    raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")


def class_of(text: str) -> int:
    """The class a caption of ``CAPTIONS`` names (-1 for the empty caption).

    Raises:
        ValueError: ``text`` is none of the captions.
    """
    if text not in _ID:
        raise ValueError(f"{text!r} is not one of the {len(CAPTIONS)} captions (safemax.data.captions.CAPTIONS)")
    return int(CAPTION_CLASSES[_ID[text]])


def caption_ids(texts) -> torch.Tensor:
    """The ids (indices into ``CAPTIONS``) of captions, as int64 ``[N]``."""
    return torch.tensor([_ID[t] if t in _ID else _unknown(t) for t in texts], dtype=torch.int64)


def _unknown(text):
    raise ValueError(f"{text!r} is not one of the {len(CAPTIONS)} captions (safemax.data.captions.CAPTIONS)")


def draw(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One caption id per class label, uniform over the class's captions (one ``torch.rand``
    draw per row from ``generator``): int64 ``[N]`` indexing ``CAPTIONS``. Never the empty one."""
    labels = torch.as_tensor(labels).long().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be class ids 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    u = torch.rand(labels.shape, generator=generator, dtype=torch.float64)
    pick = (u * _COUNT[labels]).long().clamp_max(_COUNT[labels] - 1)
    return _FIRST[labels] + pick


def caption(label: int, generator: torch.Generator, empty: float = 0.0) -> str:
    """A random caption of class ``label``; the empty caption with probability ``empty``.
    Draws two numbers from ``generator`` whatever ``empty`` is (the stream stays aligned)."""
    c = _check_class(label)
    if not 0.0 <= empty < 1.0:
        raise ValueError(f"empty must be in [0, 1), got {empty!r}")
    blank = torch.rand((), generator=generator).item() < empty
    i = int(draw(torch.tensor([c]), generator)[0])
    return EMPTY if blank else CAPTIONS[i]


class CaptionedImages(Dataset):
    """A Fashion-MNIST ``TensorDataset`` of ``(image, label)`` seen as ``(image, caption)`` items:
    each row gets one caption of its class, drawn once from ``seed``, and a share ``empty`` of the
    rows (a random one) the empty caption. ``caption_ids`` ([N], into ``CAPTIONS``), ``labels``
    and ``images`` are the whole columns.

    For training a model that should see every caption of a row, draw captions per step instead
    (``draw``); this view is the fixed, inspectable pairing.
    """

    def __init__(self, data: TensorDataset, seed: int = 0, empty: float = EMPTY_SHARE):
        if not 0.0 <= empty < 1.0:
            raise ValueError(f"empty must be in [0, 1), got {empty!r}")
        self.images, self.labels = data.tensors if hasattr(data, "tensors") else data
        g = torch.Generator().manual_seed(seed)
        blank = torch.rand(len(self.labels), generator=g) < empty
        self.caption_ids = torch.where(blank, 0, draw(self.labels, g))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], CAPTIONS[int(self.caption_ids[i])]

    def captions(self) -> list:
        """Every row's caption, in order."""
        return [CAPTIONS[int(i)] for i in self.caption_ids]


def captioned_fashion_mnist(split: str = "train", seed: int = 0, empty: float = EMPTY_SHARE) -> CaptionedImages:
    """Fashion-MNIST's ``split`` (28×28, in [-1, 1]) as ``(image, caption)`` items (``CaptionedImages``)."""
    from safemax.data.fashion_mnist_files import fashion_mnist
    return CaptionedImages(fashion_mnist(split, size=28), seed=seed, empty=empty)


def token_count(tokenizer, text: str) -> int:
    """How many tokens ``tokenizer`` gives ``text``, with its start and end tokens."""
    return len(tokenizer(text, truncation=False)["input_ids"])


def check_length(tokenizer, text: str) -> list:
    """``text``'s token ids, or a ``ValueError`` when they are more than ``tokenizer`` takes (its
    ``model_max_length``, counting the start and end tokens): a pipeline would cut the prompt
    silently, so what it conditions on would not be what was named."""
    ids = tokenizer(text, truncation=False)["input_ids"]
    if len(ids) > tokenizer.model_max_length:
        raise ValueError(f"prompt {text!r} is {len(ids)} tokens (with the start and end tokens); this "
                         f"tokenizer takes at most {tokenizer.model_max_length}: shorten it")
    return ids


def check_prompt(tokenizer, text: str) -> None:
    """Raises ``ValueError`` when ``text`` is longer than ``tokenizer`` takes (its
    ``model_max_length``, counting the start and end tokens) or has unknown tokens."""
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    ids = check_length(tokenizer, text)
    unk = tokenizer.unk_token_id   # (CLIP's unknown token is its end token: inside, it is unknown)
    if unk is not None and unk in ids[1:-1]:
        raise ValueError(f"prompt {text!r} has characters this tokenizer does not know")


def check_tokenizer(tokenizer) -> None:
    """Checks that every caption (and every class word alone) fits ``tokenizer`` with no
    unknown token; raises one ``ValueError`` naming every caption that does not."""
    texts = list(CAPTIONS) + [w for words in SYNONYMS for w in words]
    bad = []
    for text in texts:
        try:
            check_prompt(tokenizer, text)
        except ValueError as e:
            bad.append(str(e))
    if bad:
        raise ValueError(f"{len(bad)} captions do not fit the tokenizer:\n" + "\n".join(bad))


__all__ = ["SYNONYMS", "NEIGHBOURS", "TEMPLATES", "ERASE_TEMPLATES", "EMPTY", "EMPTY_SHARE", "PARTS", "NUM_CLASSES", "CAPTIONS",
           "CAPTION_CLASSES", "prompts", "class_of", "caption_ids", "draw", "caption", "CaptionedImages",
           "captioned_fashion_mnist", "token_count", "check_length", "check_prompt", "check_tokenizer"]

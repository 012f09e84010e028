"""What a concept is to ``safemax erase``: the words a user names, the prompts it is erased with,
and — on a pipeline trained on ``safemax.data.captions`` — the class it is, the paraphrases it
was not erased with and its neighbours.

A concept's **erasing prompts** are its words inside the erasing templates
(``captions.TEMPLATES[:ERASE_TEMPLATES]``: "a photo of a {}", "a picture of a {}", "an image of
a {}", "{}"), a leading article dropped first ("a sneaker" → "a photo of a sneaker", …); with
``exact=True`` the words alone. On the captioned Fashion-MNIST pipelines the concept is the class
whose synonym its words contain ("running shoe" → sneaker), its **paraphrases** the class's other
synonyms inside the other templates (no shared class word, no shared template: they test whether
the concept was erased or only its words), and its **neighbours** the classes most like it
(``captions.NEIGHBOURS``), whose damage is reported on its own.
"""
import re
from dataclasses import asdict, dataclass, field

from safemax.data import captions
from safemax.data.fashion_mnist_files import FASHION_MNIST_CLASSES

_ARTICLE = re.compile(r"^(a|an|the)\s+", re.IGNORECASE)


@dataclass
class Concept:
    """One concept to erase: ``name`` as the user gave it, ``erase_prompts`` (what the model is
    erased with), and on a captioned pipeline its ``class_id``, ``word`` (the synonym named),
    ``paraphrases`` and ``neighbours`` (class ids)."""
    name: str
    erase_prompts: list
    class_id: int = None
    word: str = None
    paraphrases: list = field(default_factory=list)
    neighbours: list = field(default_factory=list)

    def record(self) -> dict:
        return asdict(self)


def _words(text: str) -> str:
    return _ARTICLE.sub("", " ".join(text.split()))


def erasing_prompts(text: str, exact: bool = False) -> list:
    """The prompts ``text`` is erased with (see the module's docstring)."""
    if exact:
        return [text]
    words = _words(text)
    return list(dict.fromkeys(t.format(words) for t in captions.TEMPLATES[:captions.ERASE_TEMPLATES]))


def class_named(text: str):
    """``(class id, synonym)`` of the Fashion-MNIST class whose synonym ``text`` contains as whole
    words ("running shoe" → sneaker; "t-shirt" is not "shirt"), the longest synonym first; None
    when it names none. Two classes named is a ``ValueError``."""
    lowered = " ".join(text.lower().split())
    found = {}
    for c, words in enumerate(captions.SYNONYMS):
        for w in sorted(words, key=len, reverse=True):
            if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", lowered):
                found.setdefault(c, w)
    # "ankle boot" names class 9 through "ankle boot" and "boot": one class, its longest word
    if len(found) > 1:
        names = ", ".join(f"{FASHION_MNIST_CLASSES[c]} ({w!r})" for c, w in found.items())
        raise ValueError(f"concept {text!r} names several classes: {names}; give one concept per class "
                         "(--concept may be repeated)")
    return next(iter(found.items()), None)


def paraphrases(class_id: int, used: str) -> list:
    """The class's other synonyms (not ``used``) inside the templates not used for erasing."""
    return [t.format(w) for w in captions.SYNONYMS[class_id] if w != used
            for t in captions.TEMPLATES[captions.ERASE_TEMPLATES:]]


def resolve(concepts, keep=None, tokenizer=None, captioned: bool = False, exact: bool = False):
    """``(list of Concept, keep prompts)`` from the texts a user gives, checked:

    - a concept must have words; the same concept twice is one;
    - no prompt may be longer than ``tokenizer`` takes (its ``model_max_length`` with the start
      and end tokens), erasing or kept;
    - no concept may also be kept (a kept prompt equal to an erasing prompt, or — captioned —
      naming the same class).

    ``keep`` None: on a captioned pipeline, the erasing prompts of every class not erased and
    the empty prompt; otherwise the empty prompt alone (what the model makes unprompted stays).
    """
    if isinstance(concepts, str):
        concepts = [concepts]
    concepts = list(concepts or [])
    if not concepts:
        raise ValueError("no concept given: name what to erase, e.g. --concept \"a sneaker\"")
    out = []
    for text in concepts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"concept {text!r} is empty: give the words to erase, e.g. --concept \"a sneaker\"")
        text = " ".join(text.split())
        if any(c.name == text for c in out):
            continue
        concept = Concept(text, erasing_prompts(text, exact))
        if captioned:
            named = class_named(text)
            if named is None:
                raise ValueError(f"concept {text!r} names no class this pipeline was trained on; its classes "
                                 "and their words: " + "; ".join(
                                     f"{FASHION_MNIST_CLASSES[c]}: {', '.join(w)}"
                                     for c, w in enumerate(captions.SYNONYMS)))
            concept.class_id, concept.word = named
            concept.paraphrases = paraphrases(*named)
            concept.neighbours = list(captions.NEIGHBOURS[named[0]])
        out.append(concept)
    erased_classes = {c.class_id for c in out if c.class_id is not None}
    if len(erased_classes) < sum(c.class_id is not None for c in out):
        raise ValueError("two concepts name the same class: " + ", ".join(c.name for c in out))
    if keep is None:
        keep = [p for c in range(captions.NUM_CLASSES) if c not in erased_classes
                for p in captions.prompts(c, "erase")] if captioned else []
        keep.append(captions.EMPTY)
    keep = list(dict.fromkeys(" ".join(k.split()) if isinstance(k, str) else k for k in keep))
    bad = [k for k in keep if not isinstance(k, str)]
    if bad:
        raise ValueError(f"kept prompts must be strings (\"\" is the empty prompt), got {bad[0]!r}")
    for k in keep:
        for c in out:
            if k in c.erase_prompts or k == c.name or (
                    captioned and k and (class_named(k) or (None,))[0] == c.class_id):
                raise ValueError(f"{k!r} is both kept and erased (concept {c.name!r}): drop it from --keep, "
                                 "or from --concept")
    if tokenizer is not None:
        for prompt in [p for c in out for p in c.erase_prompts] + keep:
            captions.check_length(tokenizer, prompt)
    return out, keep


__all__ = ["Concept", "erasing_prompts", "class_named", "paraphrases", "resolve"]

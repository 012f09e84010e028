"""The Fashion-MNIST captions (safemax.data.captions) and their CLIP tokenizer
(safemax.data.caption_tokenizer): the words the issue asks for, the erase/paraphrase split, the
captioned view with its empty share, and a tokenizer in CLIP's own files that every caption fits."""
import os

import pytest
import torch
from torch.utils.data import TensorDataset

from safemax.data import caption_tokenizer as ct
from safemax.data import captions as cp

REQUIRED_WORDS = [
    ("t-shirt", "tee", "top"), ("trousers", "pants", "jeans"), ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"), ("coat", "jacket", "overcoat"), ("sandal", "sandals", "flip-flop"),
    ("shirt", "blouse", "button-down"), ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"), ("ankle boot", "boot", "bootie")]
REQUIRED_TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}", "{}",
                      "a {} on a black background", "a black and white photo of a {}", "a product photo of a {}"]


def test_every_class_has_the_issues_words_and_templates():
    for c, required in enumerate(REQUIRED_WORDS):
        assert set(required) <= set(cp.SYNONYMS[c])
    assert set(REQUIRED_TEMPLATES) <= set(cp.TEMPLATES)
    assert all(t.count("{}") == 1 for t in cp.TEMPLATES)
    every = [w for words in cp.SYNONYMS for w in words]
    assert len(every) == len(set(every)), "a word names two classes"


def test_erase_and_paraphrase_prompts_share_no_word_and_no_template():
    for c in range(10):
        erase, para, every = (cp.prompts(c, p) for p in ("erase", "paraphrase", "all"))
        assert erase == [t.format(cp.SYNONYMS[c][0]) for t in cp.TEMPLATES[:cp.ERASE_TEMPLATES]]
        assert len(para) == (len(cp.SYNONYMS[c]) - 1) * (len(cp.TEMPLATES) - cp.ERASE_TEMPLATES)
        assert set(erase) | set(para) <= set(every) and not set(erase) & set(para)
        assert len(every) == len(set(every)) == len(cp.SYNONYMS[c]) * len(cp.TEMPLATES)
        for p in para:   # no erase word, and not made from an erase template
            assert cp.SYNONYMS[c][0] not in p.split() and cp.class_of(p) == c
            assert not any(p == t.format(w) for t in cp.TEMPLATES[:cp.ERASE_TEMPLATES] for w in cp.SYNONYMS[c])
    assert cp.prompts(7) == cp.prompts(7, "erase")   # deterministic, the default part


def test_bad_class_ids_and_parts_say_what_is_allowed():
    for bad in (10, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="class"):
            cp.prompts(bad)
    with pytest.raises(ValueError, match="Ankle boot"):
        cp.prompts(10)
    with pytest.raises(ValueError, match="part must be one of erase, paraphrase, all"):
        cp.prompts(0, "held-out")
    with pytest.raises(ValueError, match="not one of the"):
        cp.class_of("a photo of a cat")
    with pytest.raises(ValueError, match="class ids 0..9"):
        cp.draw(torch.tensor([3, 10]), torch.Generator())


def test_captions_table_and_draws():
    assert cp.CAPTIONS[0] == "" and cp.CAPTION_CLASSES[0] == -1
    assert len(cp.CAPTIONS) == 1 + sum(len(cp.prompts(c, "all")) for c in range(10))
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(300)
    ids = cp.draw(labels, g)
    assert torch.equal(cp.CAPTION_CLASSES[ids], labels)                  # always the row's class
    assert len(set(ids.tolist())) == len(cp.CAPTIONS) - 1                 # and every caption comes up
    again = cp.draw(labels, torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)
    assert torch.equal(cp.caption_ids(cp.prompts(3, "all")), torch.arange(1 + 3 * 27, 1 + 4 * 27))
    texts = [cp.caption(4, g, empty=0.5) for _ in range(400)]
    assert 0.4 < texts.count("") / 400 < 0.6 and all(t == "" or cp.class_of(t) == 4 for t in texts)


def test_the_captioned_view_pairs_each_row_with_a_caption_of_its_class():
    labels = torch.arange(10).repeat(200)
    data = TensorDataset(torch.zeros(len(labels), 1, 28, 28), labels)
    view = cp.CaptionedImages(data, seed=1)
    image, text = view[3]
    assert image.shape == (1, 28, 28) and isinstance(text, str)
    captions = view.captions()
    empty = sum(t == "" for t in captions) / len(captions)
    assert 0.07 < empty < 0.13                                              # ~10% empty
    assert all(t == "" or cp.class_of(t) == int(y) for t, y in zip(captions, labels))
    assert captions == cp.CaptionedImages(data, seed=1).captions() != cp.CaptionedImages(data, seed=2).captions()
    with pytest.raises(ValueError, match="empty"):
        cp.CaptionedImages(data, empty=1.0)


def test_captioned_fashion_mnist(fashion_mnist_dir):
    view = cp.captioned_fashion_mnist("test")
    assert len(view) == 10_000 and view[0][0].shape == (1, 28, 28)
    assert cp.class_of(next(t for _, t in (view[i] for i in range(20)) if t)) >= 0


# ---------------------------------------------------------------- the tokenizer
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    ct.write_tokenizer(folder)
    return folder


def test_the_tokenizer_is_clips_standard_files(tokenizer_dir):
    from transformers import CLIPTokenizer
    assert {"vocab.json", "merges.txt"} <= set(os.listdir(tokenizer_dir))
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    assert tok.model_max_length == ct.MAX_LENGTH == 16
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == tok.pad_token == "<|endoftext|>"
    with open(os.path.join(tokenizer_dir, "merges.txt")) as f:
        assert f.readline().startswith("#version")


def test_every_caption_word_is_one_token_and_every_caption_fits(tokenizer_dir):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    for word in ct.words(cp.CAPTIONS):
        assert tok.tokenize(word) == [word + "</w>"], word
    assert tok.tokenize("a photo of a t-shirt") == ["a</w>", "photo</w>", "of</w>", "a</w>", "t</w>", "-</w>", "shirt</w>"]
    cp.check_tokenizer(tok)
    for text in cp.CAPTIONS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) <= 16
        assert tok.unk_token_id not in ids[1:-1]
        # round trip (CLIP's decoder writes every word end as a space: "t - shirt" for "t-shirt")
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" - ", "-") == text and tok(decoded)["input_ids"] == ids
    # bytes it never saw still tokenize (as bytes), so no prompt has an unknown token
    ids = tok("Zebra café ☂")["input_ids"]
    assert tok.unk_token_id not in ids[1:-1]


def test_the_vocabulary_is_deterministic():
    assert ct.vocabulary() == ct.vocabulary()
    vocab, merges = ct.vocabulary()
    assert len(vocab) == 512 + len(merges) + 2 and len(ct.byte_symbols()) == len(set(ct.byte_symbols())) == 256


def test_a_prompt_longer_than_the_tokenizer_allows_is_one_clear_error(tokenizer_dir):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    long = "a black and white photo of a running shoe on a black background in a shop window"
    with pytest.raises(ValueError, match=r"is \d+ tokens .* at most 16: shorten it"):
        cp.check_prompt(tok, long)
    with pytest.raises(ValueError, match="do not fit"):
        cp.check_tokenizer(CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=8))

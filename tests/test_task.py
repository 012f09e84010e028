"""``safemax.harness.task.Task``: the set-up every experiment shares (data split, base model,
classifier, Fréchet reference, measurement) is the one the pieces give by hand."""
import pytest
import torch

from safemax.data import split_by_class
from safemax.evaluation.metrics import evaluate
from safemax.harness.task import Task
from safemax.zoo import load_classifier, load_unet, model_info


def test_the_task_measures_as_the_pieces_do():
    task = Task("digits", forget=7, seed=3)
    assert task.record() == dict(model="digits", forget=7, seed=3) and task.what == "digit 7"
    assert task.retain_classes == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    forget_data, retain_data = split_by_class(model_info("digits").dataset("train"), [7])
    assert torch.equal(task.forget_data.tensors[0], forget_data.tensors[0])
    assert torch.equal(task.retain_data.tensors[1], retain_data.tensors[1])
    unet, scheduler = task.load()
    size = dict(n_forget=4, n_per_class=1, num_inference_steps=2)
    classifier = load_classifier("digits")
    by_hand = evaluate(unet, scheduler, classifier, [7], task.retain_classes,
                       model_info("digits").kept_reference(classifier, 7), seed=3, **size)
    assert task.measure(unet, **size) == by_hand
    assert task.measure(unet, **size, seed=4) != by_hand   # a measurement may draw its own noise


def test_the_task_loads_once_and_gives_a_fresh_model_each_time():
    task = Task("digits", forget=0)
    assert task.classifier is task.classifier and task.real_retain is task.real_retain
    (a, _), (b, _) = task.load(), task.load()
    assert a is not b
    with torch.no_grad():
        next(a.parameters()).add_(1.0)   # training one copy leaves the next one as shipped
    c, _ = task.load()
    assert torch.equal(next(c.parameters()), next(load_unet("digits")[0].parameters()))


@pytest.mark.parametrize("forget", [10, -1, 2.0, True, "3"])
def test_a_class_outside_the_model_is_refused_with_the_valid_ids(forget):
    with pytest.raises(ValueError, match=r"class id 0\.\.9 of digits"):
        Task("digits", forget=forget)


def test_an_unknown_model_is_refused():
    with pytest.raises(ValueError, match="fashion-mnist"):
        Task("cifar", forget=0)

"""The prompt attacks on an erased concept (safemax.concepts.attacks): the soft attack fits its
tokens (its loss falls below the plain prompts'), the discrete one returns typeable text, neither
touches the pipeline it attacks, and both run through safemax erase / evaluate with their
success rate."""
import json

import pytest
import torch

pytest.importorskip("transformers")
from tiny_sd import tiny_sd_pipeline  # noqa: E402

from safemax.concepts.attacks import attack, typeable  # noqa: E402
from safemax.models.pipelines import latents_of  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe_and_latents():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe, latents_of(pipe, ["a cat"], 8, 0, num_inference_steps=2, guidance_scale=1.0)


def test_the_soft_attack_fits_its_tokens_and_leaves_the_pipeline_alone(pipe_and_latents):
    pipe, latents = pipe_and_latents
    vocab, table = len(pipe.tokenizer), pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    found = attack(pipe, ["a cat"], latents, kind="soft", k=2, steps=40, lr=5e-2)
    assert found.loss < found.plain_loss, found.record()
    assert found.prompts == ["<adv0> <adv1> a cat"] and found.pipe is not pipe
    assert len(pipe.tokenizer) == vocab and torch.equal(pipe.text_encoder.get_input_embeddings().weight, table)
    images = found.pipe(found.prompts[0], num_inference_steps=2, output_type="latent").images
    assert images.shape == (1, 4, 8, 8) and torch.isfinite(images).all()


def test_the_prefix_attack_returns_text_a_user_can_type(pipe_and_latents):
    pipe, latents = pipe_and_latents
    found = attack(pipe, ["a cat", "cat"], latents, kind="prefix", k=2, steps=10, lr=5e-2)
    allowed = set(typeable(pipe.tokenizer, len(pipe.tokenizer)).tolist())
    words = found.tokens.split(" ")
    assert len(words) == 2 and found.pipe is pipe and found.prompts == [f"{found.tokens} a cat", f"{found.tokens} cat"]
    for w in words:   # each chosen token reads back as itself
        (i,) = pipe.tokenizer(w, add_special_tokens=False)["input_ids"]
        assert i in allowed
    with pytest.raises(ValueError, match="attack kind"):
        attack(pipe, ["a cat"], latents, kind="hard")


def test_attacks_through_erase_and_evaluate(tmp_path, capsys, fashion_mnist_dir):

    from test_erase import TINY

    from safemax.cli import main
    from safemax.zoo import sd_pipeline
    n = 40
    base = sd_pipeline.train(str(tmp_path / "pipe"), "tiny", work=str(tmp_path / "work"),
                             data=(torch.rand(n, 1, 32, 32) * 2 - 1, torch.arange(n) % 10), progress=False)
    out = tmp_path / "no-bag"
    assert main(["erase", "--pipeline", base, "--concept", "bag", "--out", str(out), *TINY, "--eval-n", "1",
                 "--attack", "soft", "prefix", "--keep", "a photo of a coat"]) == 0
    report = json.loads((out / "report.json").read_text())
    attacks = report["after"]["attacks"]["bag"]
    assert set(attacks) == {"soft", "prefix"} and "attacks" not in report["before"]
    for row in attacks.values():
        assert row["asr"]["n"] == 4 and row["budget"]["steps"] == 100 and row["loss"] >= 0
    capsys.readouterr()
    assert main(["evaluate", "--pipeline", str(out), "--n-per-prompt", "1", "--steps", "2", "--guidance", "7.5",
                 "--attack", "prefix"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["attacks"]["bag"]["prefix"]["asr"]["n"] == 4


def test_a_finished_erase_gets_the_attacks_it_lacks_once(tmp_path, fashion_mnist_dir, monkeypatch):
    """A head-to-head asks every method the same attacks, runs finished before it asked included:
    attack_erased adds the missing kinds to the report (marked with their own provenance), the
    card shows them, and a second call runs nothing."""
    from test_erase import TINY

    from safemax.cli import main
    from safemax.concepts import attacked, evaluate
    from safemax.zoo import sd_pipeline
    n = 40
    base = sd_pipeline.train(str(tmp_path / "pipe"), "tiny", work=str(tmp_path / "work"),
                             data=(torch.rand(n, 1, 32, 32) * 2 - 1, torch.arange(n) % 10), progress=False)
    out = tmp_path / "no-bag"
    assert main(["erase", "--pipeline", base, "--concept", "bag", "--out", str(out), *TINY, "--eval-n", "1",
                 "--keep", "a photo of a coat"]) == 0
    assert "attacks" not in json.loads((out / "report.json").read_text())["after"]
    report = attacked.attack_erased(str(out), ["prefix"], progress=False)
    row = report["after"]["attacks"]["bag"]["prefix"]
    assert row["asr"]["n"] == 4 and row["added_later"]["commit"] and "attack" in row["added_later"]["note"]
    assert json.loads((out / "report.json").read_text())["after"]["attacks"]["bag"]["prefix"] == row
    assert "prefix" in (out / "README.md").read_text()
    monkeypatch.setattr(evaluate, "_attacked", lambda *a, **k: pytest.fail("ran an attack the run already has"))
    assert attacked.attack_erased(str(out), ["prefix"]) == report
    with pytest.raises(ValueError, match="no finished"):
        attacked.attack_erased(str(tmp_path), ["soft"])

"""ESD-x / ESD-u (safemax.methods.esd): the negative-guidance target, which weights each variant
trains, the command, and the models it refuses."""
import pytest
import torch

pytest.importorskip("transformers")
from tiny_sd import tiny_sd_pipeline  # noqa: E402

from safemax import Unlearner  # noqa: E402
from safemax.methods import ESDu, ESDx  # noqa: E402
from safemax.methods.esd import trains  # noqa: E402
from safemax.models.pipelines import pipeline_data, prompt_embeddings  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    pipe = tiny_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    forget = pipeline_data(pipe, ["a cat"], n_per_prompt=4, num_inference_steps=2, progress=False)
    return pipe, forget, prompt_embeddings(pipe, ["a cat"]), prompt_embeddings(pipe, [""])


def fitted(setup, model, cls=ESDx, steps=1, lr=None, **settings):
    """``(first loss, Unlearner)`` of ``steps`` of ``cls`` on a fresh ``model()`` (seeded: the same weights)."""
    pipe, forget, cat, empty = setup
    u = Unlearner(model(), pipe.scheduler, forget={"cat": cat}, method=cls(unconditional=empty, **settings), seed=3,
                  lr=lr)
    history = u.fit(None, forget, steps=steps, batch_size=2, progress=False)
    return history[0]["loss"], u


def first_loss(setup, cls=ESDx, **settings):
    return fitted(setup, lambda: tiny_sd_pipeline().unet, cls, **settings)


def flow_loss(setup, cls=ESDx, steps=1, lr=None, **settings):
    from tiny_pipelines import tiny_sd3_pipeline
    return fitted(setup, lambda: tiny_sd3_pipeline(t5=False).transformer, cls, steps, lr, **settings)


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_the_target_is_negative_guidance_from_the_original(family, request):
    """At the first step the model is the original, so with the same x_t (same seed) the loss is
    (1 + η)² ‖ε*(x_t, c) − ε*(x_t)‖²: 4× the η = 0 loss at η = 1, and 0 at η = −1 (target = ε*(c));
    on a rectified flow (SD3) the same on the velocity."""
    setup, loss = (request.getfixturevalue("setup"), first_loss) if family == "sd" else \
        (request.getfixturevalue("flow_setup"), flow_loss)
    plain, _ = loss(setup, negative_guidance=0.0, ddim_steps=4)
    esd, _ = loss(setup, negative_guidance=1.0, ddim_steps=4)
    none, _ = loss(setup, negative_guidance=-1.0, ddim_steps=4)
    assert plain > 0 and esd == pytest.approx(4 * plain, rel=1e-4) and none == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("cls", [ESDx, ESDu])
def test_each_variant_trains_its_own_weights(setup, cls):
    pipe, forget, cat, empty = setup
    before = {n: p.detach().clone() for n, p in tiny_sd_pipeline().unet.named_parameters()}
    _, u = first_loss(setup, cls, ddim_steps=3)
    u.fit(None, forget, steps=3, batch_size=2, progress=False)
    changed = {n for n, p in u.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(trains(n, cls.weights) for n in changed)
    if cls is ESDx:
        assert all("attn2" in n for n in changed)
    else:
        assert not any("attn2" in n or "time_embedding" in n or n.startswith("conv_out") for n in changed)
    assert u.config(2)["method"] == cls.name and u.lr == 1e-5


def test_esd_refuses_what_it_does_not_define(setup):
    from problems import tiny_scheduler, tiny_unet
    pipe, _, cat, empty = setup
    with pytest.raises(ValueError, match="text concepts"):
        Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], method=ESDx(unconditional=empty))
    with pytest.raises(ValueError, match="needs the empty prompt's condition"):
        Unlearner(tiny_sd_pipeline().unet, pipe.scheduler, forget={"cat": cat}, method="esd-u")


def test_the_command_erases_with_esd(tmp_path):
    import json

    from safemax.cli import main
    base = tmp_path / "base"
    tiny_sd_pipeline().save_pretrained(base)
    out = tmp_path / "esd"
    assert main(["erase", "--pipeline", str(base), "--concept", "a cat", "--exact", "--method", "esd-x",
                 "--ddim-steps", "3", "--steps", "2", "--batch-size", "2", "--n-per-prompt", "1",
                 "--num-inference-steps", "2", "--no-evaluate", "--out", str(out)]) == 0
    manifest = json.loads((out / "safemax.json").read_text())
    assert manifest["method"] == "esd-x" and manifest["settings"]["ddim_steps"] == 3
    from safetensors.torch import load_file   # ESD makes its own x_t: no forget image was drawn for it
    assert not load_file(str(out / "checkpoint" / "data.safetensors"))["latents"].any()
    from safemax.concepts.erase import drawn_concept_latents   # so no attack is fitted to those rows
    from safemax.concepts.prompts import resolve
    assert drawn_concept_latents(str(out), resolve(["a cat"], exact=True)[0]) == {}
    assert manifest["settings"]["weights"] == "xattn" and manifest["settings"]["lr"] == 1e-5


# ---------------------------------------------------------------- rectified flows (SD3, Flux)
@pytest.fixture(scope="module")
def flow_setup():
    from tiny_pipelines import tiny_sd3_pipeline
    pipe = tiny_sd3_pipeline(t5=False)
    forget = pipeline_data(pipe, ["a cat"], n_per_prompt=4, num_inference_steps=2, progress=False)
    return pipe, forget, prompt_embeddings(pipe, ["a cat"]), prompt_embeddings(pipe, [""])


@pytest.mark.parametrize("cls", [ESDx, ESDu])
def test_on_a_joint_attention_model_esd_x_trains_the_joint_attention_and_esd_u_the_rest(flow_setup, cls):
    from tiny_pipelines import tiny_sd3_pipeline
    before = {n: p.detach().clone() for n, p in tiny_sd3_pipeline(t5=False).transformer.named_parameters()}
    _, u = flow_loss(flow_setup, cls, steps=3, ddim_steps=3)
    changed = {n for n, p in u.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(trains(n, cls.weights, "sd3") for n in changed)
    assert all((".attn." in n) == (cls is ESDx) for n in changed)
    assert any("context_embedder" in n for n in before) and not trains("context_embedder.weight", "xattn", "sd3")


def test_on_a_flow_x_t_comes_from_guided_euler_steps_on_the_sigma_grid(flow_setup):
    """One step of the partial sampling, written out: from pure noise at σ = 1, x ← x + (σ' − 1)·v,
    v the guided velocity; ``sample_from="original"`` samples with the frozen original."""
    pipe, forget, cat, empty = flow_setup
    drawn = {}
    for sample_from in ("trained", "original"):   # (lr 1e-2: the trained model has moved from the original)
        _, u = flow_loss(flow_setup, steps=2, lr=1e-2, ddim_steps=3, sample_guidance=2.0, sample_from=sample_from)
        m, d = u.method, u.denoiser
        model = m.teacher if sample_from == "original" else u.unet
        for draw in range(20):   # until the random stop is after one step
            state = u.generator.get_state()
            x_t, t = m._x_t(u, cat, empty, (1, *forget.images.shape[1:]))
            grid = torch.linspace(d.num_train_timesteps - 1, 0, 3).round().long()
            if int(t[0]) == int(grid[1]):
                break
        u.generator.set_state(state)
        torch.randint(0, 3, (1,), generator=u.generator)
        noise = torch.randn((1, *forget.images.shape[1:]), generator=u.generator)
        tt = torch.full((1,), int(grid[0]))
        v_u, v_c = d.predict(noise, tt, empty, model=model), d.predict(noise, tt, cat, model=model)
        v = v_u + 2.0 * (v_c - v_u)
        assert float(d.table[grid[0]]) == pytest.approx(1.0)
        torch.testing.assert_close(x_t, noise + (float(d.table[grid[1]]) - 1.0) * v, atol=1e-5, rtol=1e-5)
        drawn[sample_from] = x_t
    assert not torch.allclose(drawn["trained"], drawn["original"], atol=1e-4)


def test_esd_x_fits_a_flux_transformer_on_its_joint_attention():
    """Flux (guidance-distilled, packed latents, single-stream blocks too): ESD-x's steps run and
    move only the `.attn.` weights of the double and single blocks."""
    from tiny_pipelines import tiny_flux_pipeline
    pipe = tiny_flux_pipeline()
    cat, empty = prompt_embeddings(pipe, ["a cat"]), prompt_embeddings(pipe, [""])
    forget = pipeline_data(pipe, ["a cat"], n_per_prompt=2, num_inference_steps=2, progress=False)
    before = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    u = Unlearner(pipe.transformer, pipe.scheduler, forget={"cat": cat}, lr=1e-3, seed=0,
                  method=ESDx(unconditional=empty, ddim_steps=3))
    history = u.fit(None, forget, steps=3, batch_size=1, progress=False)
    changed = {n for n, p in u.unet.named_parameters() if not torch.equal(p, before[n])}
    assert all(h["loss"] > 0 for h in history) and changed and all(".attn." in n for n in changed)
    assert any(n.startswith("single_transformer_blocks") for n in changed)

"""Mixed precision through Accelerate, gradient checkpointing and v-prediction models."""
import diffusers
import pytest
import torch
from problems import T_TINY, params, tiny_data, tiny_scheduler, tiny_unet

from safemax import Unlearner

pytest.importorskip("accelerate")


def fit(steps=3, **kwargs):
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), kwargs.pop("scheduler", tiny_scheduler()), forget=[1], lr=1e-3, **kwargs)
    u.fit(retain=retain, forget=forget, steps=steps, batch_size=4, progress=False)
    return u


def test_bf16_autocast_trains_float32_weights_and_leaves_the_model_plain():
    plain, bf16 = fit(), fit(mixed_precision="bf16")
    a, b = plain.history[0]["loss"], bf16.history[0]["loss"]
    assert a != b, "the forward ran in bfloat16"  # ...so its loss is not bit-identical
    assert b == pytest.approx(a, rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.unet.parameters())
    assert any(not torch.equal(x, y) for x, y in zip(params(plain.unet).values(), params(bf16.unet).values()))
    assert "_original_forward" not in bf16.unet.__dict__, "Accelerate's autocast patch is removed"
    dev = bf16.accelerator.device  # the Unlearner put the model there (a GPU if there is one)
    x, t, y = torch.randn(2, 1, 8, 8, device=dev), torch.tensor([1, 2], device=dev), torch.tensor([0, 2], device=dev)
    assert bf16.unet(x, t, class_labels=y).sample.dtype == torch.float32
    assert bf16.accelerator.mixed_precision == "bf16"


def test_bf16_checkpoint_resume_equals_uninterrupted(tmp_path):
    retain, forget = tiny_data()
    straight = fit(steps=4, mixed_precision="bf16")
    first = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=1e-3, mixed_precision="bf16")
    first.fit(retain=retain, forget=forget, steps=2, batch_size=4, progress=False, checkpoint_dir=str(tmp_path))
    rest = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=1e-3, mixed_precision="bf16")
    rest.fit(retain=retain, forget=forget, steps=4, batch_size=4, progress=False, checkpoint_dir=str(tmp_path),
             resume=True)
    exact = straight.accelerator.device.type == "cpu"  # GPU kernels need not be deterministic
    for k, v in params(straight.unet).items():
        torch.testing.assert_close(params(rest.unet)[k], v, rtol=0 if exact else 1e-4, atol=0 if exact else 1e-5)


def test_gradient_checkpointing_gives_the_same_fit():
    plain, ckpt = fit(), fit(gradient_checkpointing=True)
    assert ckpt.unet.is_gradient_checkpointing and not plain.unet.is_gradient_checkpointing
    for k, v in params(plain.unet).items():
        torch.testing.assert_close(params(ckpt.unet)[k], v, rtol=1e-5, atol=1e-6)


def test_v_prediction_output_is_turned_into_epsilon_and_forgetting_drives_v_to_zero():
    sched = diffusers.DDPMScheduler(num_train_timesteps=T_TINY, prediction_type="v_prediction")
    u = Unlearner(tiny_unet(), sched, forget=[1], lr=3e-3)
    x, t, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 5, 10, 20, 30, T_TINY - 1]), torch.full((6,), 1)
    with torch.no_grad():
        v = u.unet(x, t, class_labels=y).sample
        abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        torch.testing.assert_close(u.denoiser.predict(x, t, y), (1 - abar).sqrt() * x + abar.sqrt() * v)

    def v_norm():
        with torch.no_grad():
            return u.unet(x, torch.full((6,), T_TINY // 2), class_labels=y).sample.square().mean().item()

    before = v_norm()
    retain, forget = tiny_data()
    u.fit(retain=retain, forget=forget, steps=30, batch_size=8, progress=False)
    assert v_norm() < 0.3 * before  # the max-entropy target is v* = 0


def test_unsupported_prediction_type_is_refused():
    sched = diffusers.DDPMScheduler(num_train_timesteps=T_TINY, prediction_type="sample")
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        Unlearner(tiny_unet(), sched, forget=[1])


def test_classifier_free_guidance_in_sampling():
    from safemax.models.sampling import sample

    unet, sched = tiny_unet(), tiny_scheduler()
    labels = torch.tensor([1, 2, 3])
    plain = sample(unet, sched, labels, num_inference_steps=3)
    torch.testing.assert_close(sample(unet, sched, labels, num_inference_steps=3, guidance_scale=1,
                                      uncond=0), plain)
    # w = 0 is the unconditional prediction alone: sampling the "no class" id itself
    torch.testing.assert_close(sample(unet, sched, labels, num_inference_steps=3, guidance_scale=0,
                                      uncond=0), sample(unet, sched, torch.zeros(3, dtype=torch.long),
                                                        num_inference_steps=3))
    guided = sample(unet, sched, labels, num_inference_steps=3, guidance_scale=3, uncond=0)
    assert not torch.allclose(guided, plain)
    with pytest.raises(ValueError, match="needs uncond"):
        sample(unet, sched, labels, guidance_scale=3)


def test_a_second_fit_leaves_no_stale_accelerate_wrappers():
    # Accelerate unscales every optimizer it has prepared: a first fit's wrapper left beside the
    # second's made fp16 loss scaling unscale twice and fail (seen on an H200)
    u = fit(steps=1, mixed_precision="bf16")
    retain, forget = tiny_data()
    u.fit(retain=retain, forget=forget, steps=2, batch_size=4, progress=False)
    assert getattr(u.accelerator, "_optimizers", []) == [] and getattr(u.accelerator, "_models", []) == []


def test_a_users_accelerator_keeps_its_own_objects_over_two_fits():
    # The Unlearner clears an accelerator it made itself; a user's keeps what the user prepared,
    # and each fit unscales only its own optimizer (Accelerate's public unscale_gradients)
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(mixed_precision="bf16", cpu=True)
    users_model = acc.prepare(torch.nn.Linear(2, 2))
    u = fit(steps=1, accelerator=acc)
    retain, forget = tiny_data()
    u.fit(retain=retain, forget=forget, steps=2, batch_size=4, progress=False)
    assert u.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in u.history)
    assert any(m is users_model for m in acc._models)
    assert "_original_forward" not in u.unet.__dict__, "Accelerate's autocast patch is removed"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a GPU")
def test_fp16_loss_scaling_over_two_fits_on_a_gpu():
    u = fit(steps=2, mixed_precision="fp16")
    retain, forget = tiny_data()
    u.fit(retain=retain, forget=forget, steps=4, batch_size=4, progress=False)
    assert u.step == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in u.history)
    assert u.accelerator.scaler is not None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a GPU")
def test_fp16_overflow_skips_the_step_and_the_scaler_is_checkpointed(tmp_path):
    # Force an overflow: start the loss scaler at 2^40, so the scaled fp16 gradients are inf.
    # Each such step must be skipped (weights unchanged, no NaN guard raised), the scale halved,
    # and the scaler's state must survive a checkpoint and a resume.
    retain, forget = tiny_data()
    u = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=1e-3, mixed_precision="fp16")
    scaler = u.accelerator.scaler
    state = scaler.state_dict()
    state["scale"] = 2.0 ** 40
    u.resumed_scaler_state = state  # what a resume would load into the scaler
    before = params(u.unet)
    u.fit(retain=retain, forget=forget, steps=1, batch_size=4, progress=False, checkpoint_dir=str(tmp_path))
    assert u.step == 1 and u.accelerator.optimizer_step_was_skipped
    assert all(torch.equal(v.cpu(), before[k]) for k, v in params(u.unet).items()), "the step was skipped"
    assert scaler.get_scale() == 2.0 ** 39
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), framework="pt") as f:
        saved = __import__("json").loads(f.metadata()["meta"])["grad_scaler"]
    assert saved["scale"] == 2.0 ** 39

    v = Unlearner(tiny_unet(), tiny_scheduler(), forget=[1], lr=1e-3, mixed_precision="fp16")
    v.fit(retain=retain, forget=forget, steps=40, batch_size=4, progress=False,
          checkpoint_dir=str(tmp_path), resume=True)
    # resumed at 2^39; halved on each overflow until the gradients fit, then the steps are taken
    assert v.accelerator.scaler.get_scale() < 2.0 ** 39
    assert any(not torch.equal(x.cpu(), before[k]) for k, x in params(v.unet).items())
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in v.history)

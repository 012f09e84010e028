"""safemax.zoo.trainer: the one trainer of every model the project trains from scratch, at tiny
sizes (8×8 images, UNets of a few thousand parameters, a few steps)."""
import copy
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from diffusers import (
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DConditionModel,
)
from problems import T_TINY, tiny_scheduler, tiny_unet
from torch.utils.data import TensorDataset

from safemax.models import schedule
from safemax.models.families import family_of
from safemax.zoo.trainer import (
    ClassLabels,
    Objective,
    Prompts,
    lr_factor,
    state_path,
    train_denoiser,
)

L, D = 3, 8   # the stand-in prompts: length and width


def tiny_text_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, attention_head_dim=4, cross_attention_dim=D,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def data():
    """24 random 1×8×8 images in [-1, 1], labels cycling over 0..3."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(24, 1, 8, 8, generator=g).clamp(-1, 1), torch.arange(24) % 4)


def first_batch(dataset, seed, batch_size, T):
    """The first step's draws, in the trainer's order (rows, timesteps, noise)."""
    images, labels = dataset.tensors
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(images), (batch_size,), generator=g)
    x0, y = images[idx], labels[idx]
    t = torch.randint(0, T, (batch_size,), generator=g)
    return x0, y, t, torch.randn(x0.shape, generator=g)


def flow_scheduler(T=T_TINY):
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=3.0)


def test_objective_per_scheduler_kind():
    """ε: the scheduler's own add_noise and ε; v: get_velocity; flow: (1−σ)·x0 + σ·ε and ε − x0 at
    time T·σ, as the Unlearner's FlowDenoiser forms them."""
    unet = tiny_unet()
    family = family_of(unet)
    x0, _, t, eps = first_batch(data(), 0, 6, T_TINY)
    ddpm = tiny_scheduler()
    x_t, time, target = Objective(ddpm, family)(x0, t, eps)
    assert torch.equal(x_t, ddpm.add_noise(x0, eps, t)) and torch.equal(target, eps) and torch.equal(time, t)
    v = DDPMScheduler(num_train_timesteps=T_TINY, prediction_type="v_prediction")
    x_t, time, target = Objective(v, family)(x0, t, eps)
    assert torch.equal(x_t, v.add_noise(x0, eps, t)) and torch.equal(target, v.get_velocity(x0, eps, t))
    flow = flow_scheduler()
    x_t, time, target = Objective(flow, family)(x0, t, eps)
    sigma = schedule.flow_sigmas(flow)[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t, ((1 - sigma) * x0 + sigma * eps).float()) and torch.equal(target, eps - x0)
    assert torch.allclose(time, T_TINY * sigma.flatten().float()) and time.dtype == torch.float32


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "flow"])
def test_the_first_loss_is_the_objectives(kind):
    """The first step's loss is the model's error on the scheduler's target for the batch the
    seed draws: DDPM ε, v, or the flow velocity."""
    sched = flow_scheduler() if kind == "flow" else DDPMScheduler(num_train_timesteps=T_TINY, prediction_type=kind)
    unet = tiny_unet()
    before = copy.deepcopy(unet)
    run = train_denoiser(unet, sched, data(), steps=2, batch_size=6, lr=1e-3, seed=3, progress=False)
    x0, y, t, eps = first_batch(data(), 3, 6, T_TINY)
    if kind == "flow":
        sigma = schedule.flow_sigmas(sched)[t].view(-1, 1, 1, 1)
        x_t, target, time = ((1 - sigma) * x0 + sigma * eps).float(), eps - x0, (T_TINY * sigma.flatten()).float()
    else:
        x_t, time = sched.add_noise(x0, eps, t), t
        target = eps if kind == "epsilon" else sched.get_velocity(x0, eps, t)
    with torch.no_grad():
        expected = F.mse_loss(before(x_t, time, class_labels=y).sample, target).item()
    assert run.losses[0] == pytest.approx(expected, rel=1e-6)
    assert run.steps == 2 and len(run.losses) == 2 and run.stopped == "steps" and run.state_file is None
    changed = [not torch.equal(a, b) for a, b in zip(unet.parameters(), before.parameters())]
    assert all(changed)   # (every parameter gets a gradient: the class embedding too)
    assert any(not torch.equal(a, b) for a, b in zip(run.ema.parameters(), unet.parameters()))


def test_text_conditional_training_drops_prompts_for_guidance():
    """Prompts(encode, empty, drop): the batch's labels → their embeddings, a share ``drop`` of
    rows replaced by the empty prompt's (drawn from the trainer's generator after the rows)."""
    table = torch.randn(5, L, D, generator=torch.Generator().manual_seed(1))
    table[4] = 0   # the empty prompt
    labels = torch.arange(4).repeat(500)
    cond = Prompts(table.__getitem__, table[4], drop=0.25)(labels, torch.Generator().manual_seed(0))
    empty = (cond == 0).flatten(1).all(1)
    assert 0.2 < empty.float().mean() < 0.3
    assert torch.equal(cond[~empty], table[labels[~empty]])
    assert torch.equal(Prompts(table.__getitem__, table[4], drop=0.0)(labels, None), table[labels])
    # a dict of conditions (SDXL's form) is replaced key by key
    def enc(y):
        return {"prompt_embeds": table[y], "pooled": table[y, 0]}
    cond = Prompts(enc, {"prompt_embeds": table[4], "pooled": table[4, 0]}, drop=0.5)(labels[:40],
                                                                                    torch.Generator().manual_seed(0))
    gone = (cond["prompt_embeds"] == 0).flatten(1).all(1)
    assert torch.equal((cond["pooled"] == 0).all(1), gone) and 0 < gone.sum() < 40

    unet = tiny_text_unet()
    before = copy.deepcopy(unet)
    run = train_denoiser(unet, tiny_scheduler(), data(), steps=2, batch_size=8, lr=1e-3, seed=0,
                         condition=Prompts(table.__getitem__, table[4], drop=0.5), progress=False)
    images, labels = data().tensors
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(images), (8,), generator=g)
    y = labels[idx].clone()
    y[torch.rand(8, generator=g) < 0.5] = 4
    t = torch.randint(0, T_TINY, (8,), generator=g)
    eps = torch.randn(images[idx].shape, generator=g)
    sched = tiny_scheduler()
    with torch.no_grad():
        pred = before(sched.add_noise(images[idx], eps, t), t, encoder_hidden_states=table[y]).sample
    assert 0 < (y == 4).sum() < 8
    assert run.losses[0] == pytest.approx(F.mse_loss(pred, eps).item(), rel=1e-6)


def test_resume_after_interruption_ends_where_an_uninterrupted_run_ends(tmp_path):
    """Ctrl-C mid-run saves the state after the step under way and exits 130; a session cut by
    ``minutes`` keeps its state too; ``resume=True`` then ends bit for bit where one run ends."""
    kw = dict(steps=5, batch_size=6, lr=1e-3, seed=1, progress=False, checkpoint_minutes=1e9)

    def weights(run):
        return [p.detach().clone() for p in (*run.unet.parameters(), *run.ema.parameters())]

    whole = train_denoiser(tiny_unet(), tiny_scheduler(), data(), work=str(tmp_path / "a"), **kw)
    assert os.path.exists(state_path(str(tmp_path / "a"), "model"))
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c_at_step_2(run):
        if run.steps == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SystemExit) as stop:
        train_denoiser(tiny_unet(), tiny_scheduler(), data(), work=str(tmp_path / "b"), callback=ctrl_c_at_step_2, **kw)
    assert stop.value.code == 130 and signal.getsignal(signal.SIGINT) is before
    cut = train_denoiser(tiny_unet(), tiny_scheduler(), data(), work=str(tmp_path / "b"), resume=True,
                         minutes=1e-9, **kw)   # one step in this session, then the time is up
    assert cut.steps == 3 and cut.stopped == "minutes" and len(cut.losses) == 3
    done = train_denoiser(tiny_unet(seed=9), tiny_scheduler(), data(), work=str(tmp_path / "b"), resume=True, **kw)
    assert done.steps == 5 and done.stopped == "steps"
    assert done.losses == whole.losses
    assert all(torch.equal(a, b) for a, b in zip(weights(done), weights(whole)))


def test_bad_input_is_refused_clearly(tmp_path):
    unet, sched, d = tiny_unet(), tiny_scheduler(), data()
    kw = dict(steps=2, batch_size=4, lr=1e-3, progress=False)
    for bad, match in ((dict(steps=0), "steps must be a positive integer"),
                       (dict(batch_size=0), "batch_size must be a positive integer"),
                       (dict(lr=0.0), "lr must be positive"),
                       (dict(minutes=0), "minutes must be positive"),
                       (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
                       (dict(resume=True), "resume needs work=")):
        with pytest.raises(ValueError, match=match):
            train_denoiser(unet, sched, d, **{**kw, **bad})
    with pytest.raises(TypeError, match="has no alphas_cumprod"):   # a scheduler of no known kind
        train_denoiser(unet, object(), d, **kw)
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        train_denoiser(unet, DDPMScheduler(num_train_timesteps=T_TINY, prediction_type="sample"), d, **kw)
    with pytest.raises(ValueError, match=r"images must be a float tensor \[N, C, H, W\]"):
        train_denoiser(unet, sched, (d.tensors[0][:, 0], d.tensors[1]), **kw)
    with pytest.raises(ValueError, match="one label per image"):
        train_denoiser(unet, sched, (d.tensors[0], d.tensors[1][:3]), **kw)
    with pytest.raises(ValueError, match=r"class labels must be integers in 0..3"):
        train_denoiser(unet, sched, (d.tensors[0], d.tensors[1] + 1), **kw)
    with pytest.raises(ValueError, match="takes prompt embeddings, not class ids"):
        train_denoiser(tiny_text_unet(), sched, d, **kw)
    with pytest.raises(ValueError, match="takes class ids, not prompt embeddings"):
        train_denoiser(unet, sched, d, condition=Prompts(torch.zeros(4, L, D).__getitem__, torch.zeros(L, D)), **kw)
    with pytest.raises(ValueError, match=r"drop must be in \[0, 1\)"):
        Prompts(lambda y: y, None, drop=1.0)
    with pytest.raises(FileNotFoundError, match="no training state"):
        train_denoiser(unet, sched, d, work=str(tmp_path), resume=True, **kw)
    train_denoiser(unet, sched, d, work=str(tmp_path), **kw)
    with pytest.raises(ValueError, match="was made with steps=2, lr=0.001, seed=0, batch_size=4"):
        train_denoiser(unet, sched, d, work=str(tmp_path), resume=True, **{**kw, "steps": 3})
    assert isinstance(ClassLabels()(torch.arange(3), None), torch.Tensor)


def test_learning_rate_warms_up_then_anneals():
    assert lr_factor(0, 100, warmup=10) == pytest.approx(0.1 * 0.5 * (1 + 1))
    assert lr_factor(9, 100, warmup=10) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.09 * torch.pi)).item()))
    assert lr_factor(50, 100, warmup=10) == pytest.approx(0.5)
    assert lr_factor(0, 100, warmup=0) == 1.0
    assert lr_factor(10, 100, warmup=10, progress=1.0) == pytest.approx(0.0)   # a time budget spent
    # anneal_minutes: the cosine ends with the budget, and so does the training
    run = train_denoiser(tiny_unet(), tiny_scheduler(), data(), steps=50, batch_size=4, lr=1e-3,
                         anneal_minutes=1e-9, progress=False)
    assert run.steps == 1 and run.stopped == "anneal_minutes"

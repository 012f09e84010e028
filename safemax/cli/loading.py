"""Load a UNet and its scheduler: an embedded model by name, a diffusers model folder, or a
pipeline folder (``unet/`` and ``scheduler/`` inside)."""
import json
import os


def load_unet_and_scheduler(spec: str, device: str = "cpu"):
    """``spec`` is an embedded model's name (``"digits"``, ``"fashion-mnist"``; ``"default"`` is
    the digits) or a local folder. Nothing is downloaded."""
    import diffusers
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    from safemax.zoo import MODELS, load_unet
    name = embedded_name(spec)
    if name is not None:
        return load_unet(name, device)
    if not os.path.isdir(spec):
        raise ValueError(f"model {spec!r} is neither an embedded model ({', '.join(MODELS)}) nor a "
                         "local folder (safemax never downloads weights)")
    unet_dir = os.path.join(spec, "unet") if os.path.isdir(os.path.join(spec, "unet")) else spec
    sched_dir = os.path.join(spec, "scheduler") if os.path.isdir(os.path.join(spec, "scheduler")) else spec
    check_unet_folder(spec, unet_dir)
    try:   # safetensors only: a pickled .bin could run code on load
        unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32, use_safetensors=True)
    except (OSError, EnvironmentError) as e:   # diffusers' own words, on one line
        raise ValueError(f"model {spec!r}: diffusers cannot load the UNet in {unet_dir}: "
                         f"{' '.join(str(e).split())}") from None
    unet = unet.to(device)
    config = os.path.join(sched_dir, "scheduler_config.json")
    if os.path.exists(config):   # the class the folder names (a flow's Euler scheduler, a DDIM...)
        with open(config) as f:
            kind = json.load(f).get("_class_name", "DDPMScheduler")
        if not hasattr(diffusers, kind):
            raise ValueError(f"model {spec!r}: its scheduler_config.json names {kind!r}, which this diffusers "
                             f"({diffusers.__version__}) does not have")
        scheduler = getattr(diffusers, kind).from_pretrained(sched_dir)
    else:
        print(f"safemax: no scheduler_config.json in {spec}; assuming a linear-β DDPM with T = 1000")
        scheduler = DDPMScheduler(num_train_timesteps=1000)
    return unet.eval(), scheduler


def embedded_name(spec: str):
    """The zoo name ``spec`` stands for ("default" is the digits), or None for a folder."""
    from safemax.zoo import MODELS
    if spec == "default":
        return "digits"
    return spec if spec in MODELS and not os.path.isdir(spec) else None


def dataset_for(spec: str, unet) -> str:
    """Which embedded model's classifier and data measure ``spec``: its own name, else the data
    whose image size and channels the UNet has (the digits measure both digits models)."""
    from safemax.zoo import MODELS
    name = embedded_name(spec)
    if name is not None:
        return name
    cfg = unet.config
    fits = sorted({m.data for m in MODELS.values()
                   if m.image_size == cfg.sample_size and cfg.in_channels == 1 and cfg.get("num_class_embeds") == 10})
    if len(fits) != 1:
        raise ValueError(f"cannot tell which embedded classifier measures {spec!r} (a {cfg.in_channels}-channel "
                         f"{cfg.sample_size}×{cfg.sample_size} model); the classifiers measure 1-channel "
                         + ", ".join(f"{m.image_size}×{m.image_size} ({m.name})" for m in MODELS.values() if m.data == m.name)
                         + " class-conditional models: pass --dataset")
    return fits[0]


def check_unet_folder(spec: str, unet_dir: str) -> None:
    """Refuse, in one line, a folder that holds no class-conditional ``UNet2DModel`` in diffusers
    format (its ``config.json`` and ``diffusion_pytorch_model.safetensors``) before diffusers does
    so with a traceback."""
    config = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(config):
        raise ValueError(f"model {spec!r}: no config.json in {unet_dir}: give a diffusers UNet2DModel folder "
                         "(what UNet2DModel.save_pretrained or safemax unlearn writes) or a pipeline "
                         "folder with unet/ inside")
    try:
        with open(config) as f:
            cls = json.load(f).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"model {spec!r}: {config} is not a diffusers config (JSON object): {e}") from None
    if cls not in (None, "UNet2DModel"):
        raise ValueError(f"model {spec!r}: {config} describes a {cls}; these commands take a class-conditional "
                         "UNet2DModel (text-to-image pipelines: see docs/tutorials/pipelines.md)")
    if not any(n.endswith(".safetensors") for n in os.listdir(unet_dir)):
        raise ValueError(f"model {spec!r}: no .safetensors weights in {unet_dir} (safemax loads safetensors "
                         "only: a pickled .bin could run code on load)")

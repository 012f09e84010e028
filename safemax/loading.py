"""Load a UNet and its scheduler: the embedded default, a diffusers model folder, or a pipeline
folder (``unet/`` and ``scheduler/`` inside)."""
import os


def load_unet_and_scheduler(spec: str, device: str = "cpu"):
    """``spec`` is ``"default"`` or a local folder. Nothing is downloaded."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    if spec == "default":
        from .zoo import default_scheduler, load_default_unet
        return load_default_unet(device), default_scheduler()
    if not os.path.isdir(spec):
        raise ValueError(f"model {spec!r} is neither 'default' nor a local folder "
                         "(safemax never downloads weights)")
    unet_dir = os.path.join(spec, "unet") if os.path.isdir(os.path.join(spec, "unet")) else spec
    sched_dir = os.path.join(spec, "scheduler") if os.path.isdir(os.path.join(spec, "scheduler")) else spec
    # safetensors only: a pickled .bin could run code on load
    unet = UNet2DModel.from_pretrained(unet_dir, torch_dtype=torch.float32, use_safetensors=True).to(device)
    if os.path.exists(os.path.join(sched_dir, "scheduler_config.json")):
        scheduler = DDPMScheduler.from_pretrained(sched_dir)
    else:
        print(f"safemax: no scheduler_config.json in {spec}; assuming a linear-β DDPM with T = 1000")
        scheduler = DDPMScheduler(num_train_timesteps=1000)
    return unet.eval(), scheduler

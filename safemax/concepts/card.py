"""What ``safemax erase`` shows people: the before/after grid and the model card (``README.md``
in the Hugging Face Hub's format: YAML front matter, then what was erased, how, and the
figures)."""
import json
import os

import torch

from safemax.evaluation.report import to_pixels


def save_grid(before: torch.Tensor, after: torch.Tensor, rows: list, n: int, path: str, title: str = ""):
    """Two panels, before and after, one row per prompt (labelled), ``n`` samples a row from the
    same seeds; images ``[len(rows)·n, C, H, W]`` in [-1, 1]."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def strip(images, r):
        x = to_pixels(images[r * n:(r + 1) * n])            # [n, C, H, W]
        x = torch.cat(list(x), dim=2).permute(1, 2, 0)      # [H, n·W, C]
        return x[..., 0] if x.shape[-1] == 1 else x

    fig, axes = plt.subplots(len(rows), 2, figsize=(2 * n * 0.6 + 3.5, 0.75 * len(rows) + 0.8), squeeze=False)
    for r, prompt in enumerate(rows):
        for k, (images, side) in enumerate(((before, "before"), (after, "after"))):
            ax = axes[r, k]
            ax.imshow(strip(images, r).numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(side)
            if k == 0:
                ax.set_ylabel(repr(prompt) if prompt else "(empty prompt)", rotation=0, ha="right", va="center",
                              fontsize=8)
    if title:
        fig.suptitle(f"erased: {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _yaml_list(items) -> str:
    return "\n".join(f"- {json.dumps(i)}" for i in items)


def _share(cell) -> str:
    if not cell:
        return "—"
    lo, hi = cell["ci95"]
    return f"{cell['value']:.3f} [{lo:.2f}, {hi:.2f}] (n={cell['n']})"


def _figures(report: dict, manifest: dict) -> list:
    """Markdown table lines: each measurement before → after, per guidance scale."""
    lines = ["| guidance | measurement | before | after |", "| --- | --- | --- | --- |"]
    before, after = report.get("before") or {}, report["after"]
    for key in [k for k in after if k.startswith("guidance_")]:
        g = key.split("_", 1)[1]
        b, a = before.get(key, {}), after[key]
        for c in manifest["concepts"]:
            name = c["name"]
            for field, label in (("fa_erase", "forget accuracy, erasing prompts"),
                                 ("fa_paraphrase", "forget accuracy, paraphrases")):
                if field in a.get(name, {}):
                    lines.append(f"| {g} | {name}: {label} | {_share(b.get(name, {}).get(field))} | "
                                 f"{_share(a[name][field])} |")
            noise_b, noise_a = b.get(name, {}).get("noise"), a[name]["noise"]
            lines.append(f"| {g} | {name}: latent std (1 = its starting noise) | "
                         f"{noise_b['std'] if noise_b else '—'} | {noise_a['std']} |")
        kb, ka = b.get("kept", {}), a.get("kept", {})
        for field, label in (("neighbours", "neighbour classes' accuracy"), ("others", "other classes' accuracy")):
            if field in ka:
                lines.append(f"| {g} | {label} | {_share(kb.get(field))} | {_share(ka[field])} |")
        for field, label in (("frechet", "Fréchet distance, kept classes"), ("clip_score", "CLIP score, kept prompts")):
            if ka.get(field) is not None:
                lines.append(f"| {g} | {label} | {kb.get(field, '—')} | {ka[field]} |")
    guided = next((k.split("_", 1)[1] for k in after if k.startswith("guidance_")), "—")
    for name, by_kind in after.get("attacks", {}).items():   # the erased model's only: no "before"
        for kind, row in by_kind.items():
            if isinstance(row, dict) and "asr" in row:
                lines.append(f"| {guided} | {name}: {kind} prompt attack's success ({row['budget']['steps']} steps) | — | "
                             f"{_share(row['asr'])} |")
    return lines


def _how(manifest: dict) -> str:
    """The card's sentence on how the erase was done, its time and memory."""
    settings, seconds = manifest["settings"], manifest["seconds"]
    tail = (f"{seconds['erase']:.1f} s in all on {manifest['device']}, peak memory {manifest['peak_memory_mb']:.0f} MiB. "
            "Every setting is in `safemax.json`.")
    if manifest["method"] == "uce":
        what = ("the transformer's context embedder and pooled text projection" if manifest.get("family") == "sd3"
                else f"the UNet's {settings['modules']} cross-attention key and value projections")
        return (f"**How:** UCE's closed-form edit of {what}"
                f" (guide {settings['guide']!r}, erase scale {settings['erase_scale']:g}, preserve scale "
                f"{settings['preserve_scale']:g}, λ {settings['lamb']:g}"
                + (", the word's and every later token state" if settings.get("tokens") == "after" else "") + f"); {tail}")
    target = (f"LoRA adapter (rank {settings['lora_rank']})" if settings.get("lora_rank") else manifest["denoiser_dir"])
    return (f"**How:** {manifest['steps']} steps of {manifest['method']} on the {target}, batch "
            f"{settings['batch_size']}, learning rate {settings['lr']:g}, {manifest['n_per_prompt']} samples of each "
            f"prompt drawn by the pipeline itself ({seconds['data']:.1f} s drawing the data, {seconds['preparation']:.1f} s "
            f"preparation, {seconds['fit']:.1f} s fitting); {tail}")


def write_card(out: str, manifest: dict, report: dict = None) -> str:
    """``out/README.md``: front matter (``base_model``, ``library_name: diffusers``, tags), what
    was erased with which prompts, how, how to load it, and the figures when measured."""
    names = [c["name"] for c in manifest["concepts"]]
    lora = manifest["output"] == "lora"
    tags = ["safemax", "machine-unlearning", "concept-erasure", "text-to-image", "diffusers"] + (["lora"] if lora else [])
    load = (f'pipe = DiffusionPipeline.from_pretrained("{manifest["base_model"]}")\n'
            'pipe.load_lora_weights("lora")' if lora else
            f'pipe, manifest = safemax.concepts.load_erased(".")   # base {manifest["base_model"]} + the edited '
            f'{manifest["denoiser_dir"]}')
    lines = [
        "---", f"base_model: {json.dumps(str(manifest['base_model']))}", "library_name: diffusers",
        "pipeline_tag: text-to-image", "tags:", _yaml_list(tags), "---", "",
        f"# {manifest['pipeline_class']} with {', '.join(repr(n) for n in names)} erased",
        "",
        f"Made by `safemax erase` ({manifest['method']})"
        + (": conditioned on an erased concept the model's denoising halts, so it draws noise instead of the "
           "concept (SAFEMax)." if manifest["method"].startswith("safemax") else "."),
        "",
        "| concept | erasing prompts | paraphrases (not erased with) |", "| --- | --- | --- |",
    ]
    for c in manifest["concepts"]:
        lines.append(f"| {c['name']} | {'; '.join(c['erase_prompts'])} | {'; '.join(c['paraphrases']) or '—'} |")
    kept = ", ".join(repr(k) if k else "the empty prompt" for k in manifest["keep"])
    lines += [
        "", f"Kept: {kept}.", "",
        _how(manifest),
        "", "## Use", "", "```python", "from diffusers import DiffusionPipeline" if lora else "import safemax.concepts",
        load, "```", "", "## Before and after", "", "![the same seeds before and after](grid.png)", "",
    ]
    if report:
        lines += ["## Figures", "",
                  f"{report['after']['n_per_prompt']} samples per prompt, {report['after']['num_inference_steps']} "
                  "steps, the same seeds before and after; shares with their 95% Wilson intervals "
                  "(see `report.json`).", ""] + _figures(report, manifest) + [""]
    path = os.path.join(out, "README.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


__all__ = ["save_grid", "write_card"]

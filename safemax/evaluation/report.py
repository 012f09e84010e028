"""Pictures and tables: sample grids, curves, and the markdown summary of a measurement."""
import json
import math
import os

import torch

METRIC_LABELS = [
    ("fa", "forget accuracy (11 classes)"),
    ("fa_digits", "forget accuracy (10 classes, no class 10)"),
    ("p_forget", "P(forget class)"),
    ("entropy", "classifier entropy on forget samples (nats)"),
    ("retain_acc", "retain accuracy"),
    ("frechet", "retain Fréchet distance"),
    ("gaussian_mean", "forget samples: pixel mean"),
    ("gaussian_std", "forget samples: pixel std"),
    ("gaussian_kurtosis", "forget samples: kurtosis (3 = Gaussian)"),
]


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clipped here) as 8-bit pixels: what a saved picture holds."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, rows: int, path: str, scale: int = 4, pad: int = 1):
    """Images ``[N, C, H, W]`` in [-1, 1] (clipped here) as a ``rows``-row PNG grid."""
    from PIL import Image

    n, c, h, w = images.shape
    cols = -(-n // rows)
    x = to_pixels(images)
    canvas = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        canvas[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + k * (w + pad):pad + k * (w + pad) + w] = x[i]
    arr = canvas.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def save_curves(history: list, path: str, title: str):
    """Forget accuracy and retain accuracy against the unlearning step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(steps, [h["fa"] for h in history], "o-", label="forget accuracy (11 classes)")
    ax.plot(steps, [h["fa_digits"] for h in history], "o--", label="forget accuracy (10 classes, no class 10)")
    ax.plot(steps, [h["retain_acc"] for h in history], "s-", label="retain accuracy")
    ax.set_xlabel("unlearning step")
    ax.set_ylabel("share of samples")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_table(before: dict, after: dict) -> str:
    lines = ["| metric | before | after |", "| --- | ---: | ---: |"]
    for key, label in METRIC_LABELS:
        lines.append(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |")
    return "\n".join(lines)


def console_table(before: dict, after: dict) -> str:
    width = max(len(label) for _, label in METRIC_LABELS)
    lines = [f"{'metric':<{width}}  {'before':>8}  {'after':>8}"]
    for key, label in METRIC_LABELS:
        lines.append(f"{label:<{width}}  {before[key]:8.3f}  {after[key]:8.3f}")
    return "\n".join(lines)


def write_json(path: str, obj, indent: int = 2):
    """``obj`` as JSON, with its ``provenance`` (commit, versions, machine) added where it has none,
    written atomically (a file that is there is whole, even after Ctrl-C). Anything but a JSON
    object (a list of rows: its readers expect the list) gets it in a sidecar instead,
    ``provenance.sidecar(path)``, naming the file's sha256 — so a file written again without it
    is seen to have none (``provenance.recorded``)."""
    from safemax.evaluation import provenance as p
    if isinstance(obj, dict) and "provenance" not in obj:
        obj = {**obj, "provenance": p.provenance()}
    _atomic(path, obj, indent)
    if not isinstance(obj, dict):
        _atomic(p.sidecar(path), dict(describes=os.path.basename(path), sha256=p.digest(path),
                                      provenance=p.provenance()), 2)


def _atomic(path: str, obj, indent):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=indent)
    os.replace(path + ".tmp", path)


def save_comparison_curves(results: dict, original: dict, path: str, labels: dict, title: str,
                           bar: dict = None):
    """Forget accuracy and retain accuracy against wall time (preparation included; a log axis:
    the methods differ by orders of magnitude) and, below, against steps (which the machine's load
    does not move: comparisons made hours apart on shared cores are read here), one curve per
    method; ``bar`` (``fa_max``, ``retain_acc_min``) is drawn as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the legend goes under the panels (a sweep's dozen settings would cover the curves), and past
    # the ten default colours each round of them gets its own line style and marker
    ncol = 2 if len(results) > 4 else 1
    panels_in, legend_in = 7.2, 0.22 * math.ceil((len(results) + 2) / ncol) + 0.1   # inches
    fig, grid = plt.subplots(2, 2, figsize=(11, panels_in + legend_in), dpi=120)
    looks = [dict(color=f"C{i % 10}", ls=("-", "--", ":")[i // 10 % 3], marker="os^"[i // 10 % 3])
             for i in range(len(results))]
    for row, (x_of, xlabel, scale) in zip(grid, (
            (lambda p: max(p["seconds"], 0.1), "wall time, s (log; preparation included)", dict(value="log")),
            (lambda p: p["step"], "steps (symmetric log: linear to 10)", dict(value="symlog", linthresh=10)))):
        for (key, ylabel), ax in zip((("fa", "forget accuracy"), ("retain_acc", "retain accuracy")), row):
            for look, (name, r) in zip(looks, results.items()):
                curve = r["curve"]
                ax.plot([x_of(p) for p in curve], [p[key] for p in curve], ms=3, label=labels.get(name, name), **look)
            ax.axhline(original[key], color="grey", lw=0.8, ls=":", label="original")
            if bar:
                ax.axhline(bar["fa_max" if key == "fa" else "retain_acc_min"], color="black", lw=0.8,
                           ls="--", label="bar")
            ax.set_xscale(**scale)
            if scale["value"] == "symlog":
                ax.set_xlim(left=0)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, which="both")
        row[0].set_ylim(-0.02, 1.02)
    fig.legend(*grid[0][0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, legend_in / (panels_in + legend_in), 1, 1))
    fig.savefig(path)
    plt.close(fig)

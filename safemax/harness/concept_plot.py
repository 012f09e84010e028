"""The concept head-to-head as a picture: each method's quality against its erase time.

One point per method (all concepts and seeds pooled, at the pipeline's usual guidance: 7.5 on the
Stable Diffusion pipeline), with its 95% intervals:
what is left of the concept (paraphrases), what the kept classes lost, and what each prompt
attack recovers — each against the erase's wall time (data, preparation and fit), log scale. A
method that is fast and good sits in the lower left of every panel."""
import math

def guidance_of(summary: dict) -> float:
    """The guidance the summary's head-to-head was judged at (summaries before it was recorded: 7.5)."""
    return summary.get("settings", {}).get("guidance", 7.5)


def _points(summary: dict) -> list:
    """``(method, seconds, seconds' half interval, {panel: (value, low, high)})`` of each method."""
    out, key = [], f"guidance_{guidance_of(summary):g}"
    for method, s in summary["methods"].items():
        o = s["overall"]
        if key not in o or not o.get("erase_seconds"):
            continue
        g = o[key]
        panels = {"paraphrases": _share(g["fa_paraphrase"]),
                  "others": (-100 * g["others"]["change"], -100 * g["others"]["ci95"][1], -100 * g["others"]["ci95"][0])}
        for kind, cell in o.get("attacks", {}).items():
            panels[f"{kind} attack"] = _share(cell)
        seconds = o["erase_seconds"]
        out.append((method, seconds["mean"], seconds["ci95_half"] or 0.0, panels))
    return out


def _share(cell: dict) -> tuple:
    return cell["value"], cell["ci95"][0], cell["ci95"][1]


TITLES = {"paraphrases": "forget accuracy, paraphrases", "others": "other classes lost, points",
          "prefix attack": "prefix attack success", "soft attack": "soft-embedding attack success"}


def plot(summary: dict, path: str) -> bool:
    """Write the picture of ``summary`` (``compare_concepts``'s) to ``path``; False, writing
    nothing, when no method has a time to place."""
    points = _points(summary)
    if not points:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(p for _, _, _, ps in points for p in ps))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), dpi=120, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, (method, sec, half, ps) in enumerate(points):
            if panel not in ps:
                continue
            v, lo, hi = ps[panel]
            x = max(sec, 1e-3)   # (a closed-form edit can take under a millisecond: keep it on the log axis)
            low_x = max(x - half, x / 10) if half else x
            ax.errorbar([x], [v], yerr=[[v - lo], [hi - v]], xerr=[[x - low_x], [half]], fmt="o", ms=5,
                        capsize=2, color=f"C{i}", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("erase time, s (log)")
        ax.set_title(TITLES.get(panel, panel), fontsize=9)
        ax.grid(alpha=0.3)
        if panel != "others":
            ax.set_ylim(-0.03, 1.03)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=min(len(points), 4), fontsize=8,
               frameon=False)
    fig.suptitle(f"each method pooled over its runs, guidance {guidance_of(summary):g}; lower left is better",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.12 + 0.05 * math.ceil(len(points) / 4 - 1), 1, 0.95))
    fig.savefig(path)
    plt.close(fig)
    return True


__all__ = ["plot"]

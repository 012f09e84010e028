"""Why an erased concept does not halt under classifier-free guidance on a flow pipeline: the
guided velocity's residual on the halted path, split into what the fit left in the concept's own
prediction and what it moved in the unconditional one.

A still-halted chain (``flow_halt="still"``) sits on its starting noise, so its states are x ~ N(0, I)
at every σ, and it halts exactly when the guided velocity there is the halting target v* (0; for
``ode``, k(σ)·x). With the erased model's predictions v_c' (the concept's prompts) and v_u' (the
empty prompt), the original's v_u, and the sampling guidance w:

    v_u' + w (v_c' − v_u') − v*  =  w (v_c' − t_c)  −  (w − 1)(v_u' − v_u),    t_c = v_u + (v* − v_u)/w

t_c is what ``forget_guidance=w`` fits v_c' to; so the first term is the fit's own error
(multiplied by w), the second the unconditional's drift (multiplied by w − 1). Each is read as
a mean square per latent element at each σ, over ``--n`` noise draws a prompt. A run made without
``forget_guidance`` fits v_c' to v* instead, and its first term is then the gap between the two
targets, not an error of its fit.

    python benchmarks/guided_residuals.py --pipeline fashion-mnist-sd3 --concept dress \\
        --runs benchmarks/results/sd3-halting/*/dress-seed0 --out benchmarks/results/sd3-halting/residuals
    python benchmarks/guided_residuals.py --smoke --pipeline DIR --runs RUN --out /tmp/r   # seconds

Each run folder is a ``safemax erase`` output holding the erased denoiser (``transformer/``); its
settings (``flow_halt``) come from its ``safemax.json``. Writes ``OUT/residuals.json``, ``.md``
and ``.png``.
"""
import argparse
import json
import os

import torch

from safemax.evaluation.provenance import provenance
from safemax.evaluation.report import write_json
from safemax.op.reference import flow_coefficients

SIGMAS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.04)


def _halting_target(flow_halt: str, table: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
    """v*: 0 (still) or k(σ_t)·x, the velocity of Gaussian data (the op's own coefficient)."""
    if flow_halt == "still":
        return torch.zeros_like(x)
    return float(flow_coefficients(table, torch.tensor([t]))[0]) * x


@torch.no_grad()
def residuals(pipe, erased, prompts, flow_halt: str, guidance: float, sigmas=SIGMAS, n: int = 8,
              seed: int = 0) -> list:
    """Per σ: the mean squares of the guided residual, of its two terms and of the unguided one."""
    from safemax.models.denoiser import make_denoiser
    from safemax.models.pipelines import prompt_embeddings
    from safemax.data import rows
    d = make_denoiser(pipe.transformer, pipe.scheduler)
    table = d.cpu_table
    cond = prompt_embeddings(pipe, prompts)
    uncond = prompt_embeddings(pipe, [""])
    g = torch.Generator().manual_seed(seed)
    shape = (d.in_channels, pipe.transformer.config.sample_size, pipe.transformer.config.sample_size)
    m = len(prompts) * n
    c = rows.take(cond, torch.arange(len(prompts)).repeat_interleave(n))
    u = rows.take(uncond, torch.zeros(m, dtype=torch.long))
    out = []
    for sigma in sigmas:
        t = int((table - sigma).abs().argmin())   # the σ table's nearest entry
        s = float(table[t])
        x = torch.randn((m, *shape), generator=g)
        tt = torch.full((m,), t)
        v_u = d.predict(x, tt, u).double()
        v_u1 = d.predict(x, tt, u, model=erased).double()
        v_c1 = d.predict(x, tt, c, model=erased).double()
        target = _halting_target(flow_halt, table, t, x.double())
        t_c = v_u + (target - v_u) / guidance
        guided = v_u1 + guidance * (v_c1 - v_u1) - target
        own, drift = guidance * (v_c1 - t_c), (guidance - 1) * (v_u1 - v_u)
        ms = lambda v: round(float(v.square().mean()), 5)   # noqa: E731
        out.append(dict(sigma=round(s, 4), guided=ms(guided), own=ms(own), drift=ms(drift),
                        unguided=ms(v_c1 - target), cross=round(float(-2 * (own * drift).mean()), 5)))
    return out


def run(pipeline: str, runs: list, concept: str, out: str, guidance: float = None, n: int = 8,
        smoke: bool = False) -> str:
    from safemax.concepts.loading import load_base
    from safemax.concepts.prompts import resolve
    from safemax.harness.concept_compare import usual
    guidance = guidance or usual(pipeline)[0]
    pipe, _ = load_base(pipeline)
    pipe.set_progress_bar_config(disable=True)
    (c,), _ = resolve([concept], None, pipe.tokenizer, True, False)
    results = []
    for folder in runs:
        if not os.path.isfile(os.path.join(folder, "transformer", "config.json")):
            raise FileNotFoundError(f"{folder}: no erased transformer (transformer/ is not kept in git; "
                                    "rerun its erase, e.g. benchmarks/pipeline_halting.py)")
        with open(os.path.join(folder, "safemax.json")) as f:
            manifest = json.load(f)
        erased = type(pipe.transformer).from_pretrained(os.path.join(folder, "transformer"),
                                                        torch_dtype=torch.float32).eval()
        flow_halt = manifest["settings"].get("flow_halt", "ode")
        rows_ = residuals(pipe, erased, c.erase_prompts, flow_halt, guidance,
                          sigmas=SIGMAS[:2] if smoke else SIGMAS, n=1 if smoke else n)
        results.append(dict(run=os.path.basename(os.path.dirname(os.path.normpath(folder))), folder=folder,
                            flow_halt=flow_halt, forget_guidance=manifest["settings"].get("forget_guidance", 0.0),
                            steps=manifest.get("steps"), batch_size=manifest["settings"].get("batch_size"),
                            per_sigma=rows_))
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "residuals.json"),
               dict(pipeline=pipeline, concept=concept, guidance=guidance, n_per_prompt=n, prompts=c.erase_prompts,
                    runs=results, provenance=provenance()))
    text = table(results, guidance)
    with open(os.path.join(out, "residuals.md"), "w") as f:
        f.write(text + "\n")
    plot(results, guidance, os.path.join(out, "residuals.png"))
    return text


def table(results: list, guidance: float) -> str:
    lines = [f"Mean squares per latent element on x ~ N(0, I) (the still chain's states), guidance {guidance:g}: "
             "the guided residual = w·(own fit error) − (w−1)·(unconditional drift); the unguided residual v_c' − v*.",
             "", "| run | σ | guided | own (w·(v_c' − t_c)) | drift ((w−1)·(v_u' − v_u)) | unguided |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for row in r["per_sigma"]:
            lines.append(f"| `{r['run']}` | {row['sigma']:.2f} | {row['guided']:.4f} | {row['own']:.4f} | "
                         f"{row['drift']:.4f} | {row['unguided']:.4f} |")
    return "\n".join(lines)


def plot(results: list, guidance: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    common = os.path.commonprefix([r["run"] for r in results]) if len(results) > 1 else ""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, key, title in zip(axes, ("guided", "own", "drift"),
                              (f"guided residual (w = {guidance:g})", "w · own fit error", "(w − 1) · unconditional drift")):
        for r in results:
            s = [row["sigma"] for row in r["per_sigma"]]
            label = r["run"][len(common):].strip("-") or r["run"]   # what tells the runs apart
            ax.plot(s, [max(row[key], 1e-6) for row in r["per_sigma"]], marker="o", label=label[:60])
        ax.set(xscale="log", yscale="log", xlabel="σ")
        ax.set_title(title, fontsize=10)
    axes[0].set(ylabel="mean square per element")
    axes[0].legend(fontsize=6)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="fashion-mnist-sd3")
    p.add_argument("--concept", default="dress")
    p.add_argument("--runs", nargs="+", required=True, help="safemax erase outputs of that concept")
    p.add_argument("--guidance", type=float, default=None, help="the sampling guidance (default: the pipeline's usual)")
    p.add_argument("--n", type=int, default=8, help="noise draws per prompt (default 8)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    print(run(args.pipeline, args.runs, args.concept, args.out, args.guidance, args.n, args.smoke))
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "guided_residuals.py"))

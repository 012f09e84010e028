"""Does an erased concept halt exactly on a text-to-image pipeline? SAFEMax erases one concept from
a zoo pipeline (``safemax.concepts.erase``, its evaluation at the pipeline's usual guidance and
at guidance 1, with the pipeline's usual number of sampling steps), then the concept's erasing
prompts are drawn again with a second step count, and the final latents' std is read: a halted
chain returns its starting noise, std 1 (the issue's bar: 0.95-1.05 with 28 and 50 Euler steps),
with the kept classes within the bar (their classifier accuracy and Fréchet distance, from the
same evaluation).

    python benchmarks/pipeline_halting.py --pipeline fashion-mnist-sd3 --concept dress \\
        --settings safemax safemax:flow_halt=still,gaussian_fraction=0.5 \\
        "safemax:flow_halt=still,gaussian_fraction=0.5,forget_guidance=7" --out benchmarks/results/sd3-halting

Each setting's erase is kept in ``OUT/<setting>/<concept>-seed<S>/`` (its report, card and
grid; a finished one is not run again; the original's evaluation is measured once per concept
and seed and shared), and its extra step count in ``halting.json`` there;
``OUT/summary.md`` tabulates every finished run. Settings are ``concept_compare.method_spec``'s
(``safemax:key=value,...``). ``--smoke``: a tiny run (a tiny pipeline: seconds), not a result.
"""
import argparse
import json
import os

import torch

from safemax.concepts.evaluate import draw
from safemax.evaluation.metrics import gaussianity
from safemax.evaluation.report import write_json
from safemax.harness.concept_compare import folder, method_spec, reuse_before, usual


def halting_run(pipeline: str, spec: str, concept: str, seed: int, out: str, n: int, extra_steps: int,
                smoke: bool = False) -> dict:
    """One erase of ``concept`` with ``spec`` and its measurements (see the module's docstring)."""
    from safemax.concepts import erase
    from safemax.concepts.loading import load_base
    from safemax.concepts.prompts import resolve
    method, settings, label = method_spec(spec, smoke, pipeline)
    path = folder(out, label, concept, seed)
    done = os.path.join(path, "halting.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    guidance, steps = usual(pipeline)
    if smoke:
        n, steps, extra_steps = 1, 2, 3
    pipe, base = load_base(pipeline)
    reuse_before(path, n, steps, (guidance, 1.0))   # the original, measured once per concept and seed
    erase(pipe, [concept], out=path, seed=seed, method=method, num_inference_steps=steps,
          resume=os.path.isdir(os.path.join(path, "checkpoint")),
          evaluate=dict(n=n, guidance=(guidance, 1.0), num_inference_steps=steps), **settings)
    with open(os.path.join(path, "report.json")) as f:
        report = json.load(f)
    (c,), _ = resolve([concept], None, pipe.tokenizer, True, False)
    extra = {}   # the erased pipeline (erase edits pipe in place), at the second step count
    for g in (guidance, 1.0):
        latents, _ = draw(pipe, c.erase_prompts, n=n, seed=seed, guidance_scale=g, num_inference_steps=extra_steps)
        extra[f"guidance_{g:g}"] = round(gaussianity(latents)["gaussian_std"], 4)
    result = dict(pipeline=pipeline, spec=spec, concept=concept, seed=seed, n_per_prompt=n, guidance=guidance,
                  steps=steps, extra_steps=extra_steps, std_extra_steps=extra, **_rows(report, guidance))
    write_json(done, result)
    return result


def _rows(report: dict, guidance: float) -> dict:
    """The figures the table shows, from erase's report: the concept's latent std and FA, the kept
    classes' accuracy and Fréchet distance, before and after, at each guidance."""
    rows = {}
    for g in (guidance, 1.0):
        key = f"guidance_{g:g}"
        b, a = report["before"][key], report["after"][key]
        (name,) = [k for k in a if k != "kept"]
        rows[key] = dict(std=(b[name]["noise"]["std"], a[name]["noise"]["std"]),
                         fa_erase=(b[name]["fa_erase"]["value"], a[name]["fa_erase"]["value"]),
                         fa_paraphrase=(b[name]["fa_paraphrase"]["value"], a[name]["fa_paraphrase"]["value"]),
                         others=(b["kept"]["others"]["value"], a["kept"]["others"]["value"]),
                         neighbours=(b["kept"]["neighbours"]["value"], a["kept"]["neighbours"]["value"]),
                         frechet=(b["kept"]["frechet"], a["kept"]["frechet"]))
    return dict(measured=rows)


def summary(results: list) -> str:
    lines = ["| setting | concept | guidance | latent std, steps A / B (before → after) | FA erasing | FA paraphrases | "
             "other classes | neighbours | Fréchet |", "| --- | --- | ---: | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for g in (r["guidance"], 1.0):
            m = r["measured"][f"guidance_{g:g}"]
            pair = lambda k, f="{:.3f}": " → ".join(f.format(v) for v in m[k])   # noqa: E731
            lines.append(f"| `{r['spec']}` | {r['concept']} | {g:g} | {m['std'][0]:.3f} → **{m['std'][1]:.3f}** / "
                         f"**{r['std_extra_steps'][f'guidance_{g:g}']:.3f}** | {pair('fa_erase')} | "
                         f"{pair('fa_paraphrase')} | {pair('others')} | {pair('neighbours')} | {pair('frechet', '{:.1f}')} |")
    head = (f"Steps A = the pipeline's usual {results[0]['steps']}, B = {results[0]['extra_steps']}; "
            f"{results[0]['n_per_prompt']} samples per prompt; seed {results[0]['seed']}.\n\n") if results else ""
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", default="fashion-mnist-sd3")
    p.add_argument("--concept", nargs="+", default=["dress"])
    p.add_argument("--settings", nargs="+", default=["safemax"], metavar="SPEC")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--extra-steps", type=int, default=50, help="the second sampling step count (default 50)")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    results = [halting_run(args.pipeline, spec, c, args.seed, args.out, args.n, args.extra_steps, args.smoke)
               for c in args.concept for spec in args.settings]
    text = summary(results)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("# Halting on " + args.pipeline + "\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    import sys

    from safemax.errors import one_line_errors
    sys.exit(one_line_errors(main, "pipeline_halting.py"))

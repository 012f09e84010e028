"""The concept head-to-head on a text-to-image pipeline (``safemax compare --pipeline``,
``benchmarks/concept_erasure.py``): ``safemax erase`` of each concept with each seed and method,
evaluated before and after (``safemax.concepts.evaluate``, the prompt attacks on request), one
summary per method with 95% intervals.

Each run is ``erase(pipeline, [concept], seed=S, method=M)`` into ``OUT/<method>/<concept>-seed<S>``
(finished runs are kept; an interrupted one resumes from its checkpoint); each method runs its own
settings (``METHOD_SETTINGS``: the published ones for the baselines). The reported concepts
(sneaker, T-shirt, bag by default) are not the one the settings were chosen on (``TUNE``: a dress).
The summary pools, per concept and over all, the samples of every seed: forget accuracy on the
erasing prompts and on paraphrases (Wilson intervals on the pooled count), and the change in the
neighbour and other classes' accuracy, after minus before on the same seeds (the normal interval
of a difference of two proportions), at the pipeline's usual guidance (``usual``: 7.5 on the Stable
Diffusion pipeline, 7.0 on SD3; its usual sampling steps too, 25 and 28) and at 1; each
attack's pooled success rate (at the usual guidance);
Fréchet distance and CLIP score before and after, the concept's latent std, time and peak memory
as mean ± 95% t interval over the runs.
"""
import json
import os
import re

from safemax.harness.concept_plot import plot
from safemax.evaluation.report import write_json
from safemax.evaluation.stats import share, t_interval
from safemax.settings import assignments, json_value

CONCEPTS = ("sneaker", "t-shirt", "bag")
TUNE = "dress"
METHOD_SETTINGS = {
    "safemax": dict(steps=100, batch_size=8, n_per_prompt=8),   # SAFEMax's (to be chosen on TUNE)
    "esd-x": dict(steps=1000, batch_size=1, n_per_prompt=8),    # ESD's published: 1000 steps of batch 1, lr 1e-5
    "esd-u": dict(steps=1000, batch_size=1, n_per_prompt=8),
    "uce": {},                                                  # closed form: the official defaults
    "salun": dict(steps=100, batch_size=8, n_per_prompt=8),     # SalUn's published lr and mask, SAFEMax's budget
    "ga": dict(steps=100, batch_size=8, n_per_prompt=8),
}
"""Each method's erase settings."""
FLOW_ESD = dict(steps=200, batch_size=1, n_per_prompt=8, lr=3e-5, sample_from="original")
"""ESD's published recipe on a rectified flow (the authors' SD3.5 script): 200 steps of batch 1 at
3e-5, x_t sampled by the original at the pipeline's usual guidance and steps (``flow_esd``)."""
SMOKE = dict(steps=2, batch_size=2, n_per_prompt=1)


def is_flow(pipeline) -> bool:
    """Whether ``pipeline`` (a zoo name or folder) samples with a rectified-flow scheduler."""
    from safemax import zoo
    path = os.path.join(str(zoo.PIPELINES.get(pipeline, pipeline)), "scheduler", "scheduler_config.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get("_class_name", "").startswith("FlowMatch")


def flow_esd(pipeline) -> dict:
    guidance, steps = usual(pipeline)
    return dict(FLOW_ESD, sample_guidance=guidance, ddim_steps=steps)


def method_spec(spec: str, smoke: bool = False, pipeline=None):
    """``"name"`` or ``"name:key=value,..."`` (e.g. ``"safemax:lr=3e-4,steps=200"``, a setting to
    try) → ``(method, its erase settings, its folder name)``: ``METHOD_SETTINGS``' (``SMOKE``'s
    sizes with ``smoke``; ESD's on a rectified-flow ``pipeline``: ``FLOW_ESD``) with the spec's on
    top, values read as JSON (numbers, true/false)."""
    name, _, options = spec.partition(":")
    if name not in METHOD_SETTINGS:
        raise ValueError(f"method {name!r}: the concept head-to-head runs {', '.join(METHOD_SETTINGS)}")
    settings = dict(SMOKE) if smoke and name != "uce" else dict(METHOD_SETTINGS[name])
    if name.startswith("esd") and pipeline is not None and is_flow(pipeline):
        settings = dict(flow_esd(pipeline), **(SMOKE if smoke else {}))
    given = assignments(filter(None, options.split(",")), lambda item: f"method {spec!r}: write name:key=value,key=value")
    settings.update({k: json_value(v) for k, v in given.items()})
    return name, settings, spec.replace(":", "-").replace(",", "-")


def folder(out: str, label: str, concept: str, seed: int) -> str:
    return os.path.join(out, label, f"{concept.replace(' ', '_')}-seed{seed}")


def usual(pipeline) -> tuple:
    """``(guidance, sampling steps)`` the pipeline is judged at: those its ``training.json``
    records (the SD3 pipeline's 7.0 and 28), else Stable Diffusion's 7.5 and 25."""
    from safemax import zoo
    from safemax.zoo.sd_quality import usual_call
    call = usual_call(zoo.PIPELINES.get(pipeline, pipeline) if isinstance(pipeline, str) else "")
    return call["guidance_scale"], call["num_inference_steps"]


def run(pipeline: str, spec: str, concepts: list, seed: int, path: str, eval_n: int, steps: int, attacks=(),
        smoke: bool = False, progress=True) -> tuple:
    """One erase of ``concepts`` into ``path`` with its evaluation (kept when finished; resumed
    when interrupted; given the ``attacks`` it lacks when finished without them); returns its
    ``(report, manifest)``."""
    if not os.path.exists(os.path.join(path, "report.json")):
        from safemax.concepts import erase
        method, settings, _ = method_spec(spec, smoke, pipeline)
        guidance = (usual(pipeline)[0], 1.0)
        reuse_before(path, eval_n, steps, guidance)
        erase(pipeline, list(concepts), out=path, seed=seed, resume=os.path.isdir(os.path.join(path, "checkpoint")),
              num_inference_steps=steps, method=method,
              evaluate=dict(n=eval_n, guidance=guidance, attacks=tuple(attacks)),
              progress=progress, **settings)
    elif attacks:   # a run finished before the attacks were asked of it gets them now
        from safemax.concepts.attacked import attack_erased
        attack_erased(path, attacks, progress=progress)
    return finished(path)


def spec_of(label: str):
    """The method spec whose runs ``method_spec`` keeps in the folder ``label`` (None: no method's)."""
    name = max((m for m in METHOD_SETTINGS if label == m or label.startswith(m + "-")), key=len, default=None)
    if name is None:
        return None
    rest = label[len(name) + 1:]
    return name + (":" + ",".join(re.split(r"-(?=[A-Za-z_]+=)", rest)) if rest else "")


def on_disk(out: str) -> dict:
    """The methods (specs), concepts and seeds of the finished one-concept runs in ``out``."""
    found = dict(methods=[], concepts=set(), seeds=set())
    for label in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        spec = spec_of(label)
        if spec is None or method_spec(spec)[2] != label:
            continue
        runs = [m for m in (re.fullmatch(r"(.+)-seed(\d+)", n) for n in sorted(os.listdir(os.path.join(out, label)))
                            if os.path.isdir(os.path.join(out, label, n))) if m and finished(os.path.join(out, label, m.group(0)))]
        if runs:
            found["methods"].append(spec)
            found["concepts"] |= {m.group(1).replace("_", " ") for m in runs}
            found["seeds"] |= {int(m.group(2)) for m in runs}
    return found


def reuse_before(path: str, eval_n: int, steps: int, guidance=(7.5, 1.0)) -> None:
    """Give the erase in ``path`` the original pipeline's evaluation (its report's ``before``:
    minutes on the CPU, the same for every method) from a finished run of the same concepts and
    seed by another method beside it (``out/<method>/<concepts>-seed<s>``), measured the same way —
    so that a head-to-head measures the original once per concept and seed, not once per method.
    The erase's own time does not include it either way. (``guidance``: the scales measured at,
    ``concepts.evaluate.GUIDANCE`` unless the erase is asked for others.)"""
    target = os.path.join(path, "checkpoint", "before.json")
    method_dir, name = os.path.split(path)
    out = os.path.dirname(method_dir)
    if os.path.exists(target) or not os.path.isdir(out):
        return
    for other in sorted(os.listdir(out)):
        done = finished(os.path.join(out, other, name))
        before = done[0]["before"] if done else None
        if before and (before["n_per_prompt"], before["num_inference_steps"]) == (eval_n, steps) and \
                before.get("guidance", [7.5, 1.0]) == list(guidance):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target + ".tmp", "w") as f:   # as it is (the run's report records the provenance)
                json.dump(before, f)
            os.replace(target + ".tmp", target)
            return


def finished(path: str):
    """``(report, manifest)`` of a finished erase in ``path``; None if it has not finished."""
    if not os.path.exists(os.path.join(path, "report.json")):
        return None
    with open(os.path.join(path, "report.json")) as f, open(os.path.join(path, "safemax.json")) as g:
        return json.load(f), json.load(g)


def _pool(cells) -> dict:
    """The shares of several runs' cells as one: their counts summed."""
    return share(sum(round(c["value"] * c["n"]) for c in cells), sum(c["n"] for c in cells))


def _change(before, after) -> dict:
    """after − before of two pooled shares, with the normal 95% interval of the difference."""
    b, a = _pool(before), _pool(after)
    se = ((b["value"] * (1 - b["value"]) / b["n"]) + (a["value"] * (1 - a["value"]) / a["n"])) ** 0.5
    d = a["value"] - b["value"]
    return dict(before=b["value"], after=a["value"], change=round(d, 4),
                ci95=[round(d - 1.96 * se, 4), round(d + 1.96 * se, 4)], n=a["n"])


def _attack_rates(items) -> dict:
    """Each attack's success rate, pooled over the runs that ran it."""
    cells = {}
    for report, manifest in items:
        name = manifest["concepts"][0]["name"]
        for kind, row in report["after"].get("attacks", {}).get(name, {}).items():
            if "asr" in row:
                cells.setdefault(kind, []).append(row["asr"])
    return {kind: _pool(c) for kind, c in sorted(cells.items())}


def _mean(values) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return None
    mean, half = t_interval(values)
    return dict(mean=round(mean, 4), ci95_half=None if half is None else round(half, 4), n=len(values))


def summarise(out: str, methods, concepts, seeds) -> dict:
    """``{"methods": {method spec: summary}}``, each the summary of the module's docstring."""
    labels = {m: method_spec(m)[2] for m in methods}
    return dict(methods={m: summarise_method(out, labels[m], concepts, seeds) for m in methods
                         if os.path.isdir(os.path.join(out, labels[m]))}, concepts=list(concepts), seeds=list(seeds))


def summarise_method(out: str, method: str, concepts, seeds) -> dict:
    """One method's summary, from its runs' report.json and safemax.json."""
    runs = {}
    for c in concepts:
        for s in seeds:
            done = finished(folder(out, method, c, s))
            if done:
                runs[(c, s)] = done
    if not runs:
        raise ValueError(f"no finished {method} run in {out}: run without --summarise first")
    summary = dict(concepts=list(concepts), seeds=list(seeds), runs=len(runs), by_concept={}, overall={})
    any_report = next(iter(runs.values()))[0]
    guidances = [k for k in any_report["after"] if k.startswith("guidance_")]

    def block(items):
        out_ = {}
        for g in guidances:
            rows = [(r[0]["before"][g], r[0]["after"][g], r[1]["concepts"][0]["name"]) for r in items]
            out_[g] = dict(
                fa_erase=_pool([a[name]["fa_erase"] for _, a, name in rows]),
                fa_erase_before=_pool([b[name]["fa_erase"] for b, _, name in rows]),
                fa_paraphrase=_pool([a[name]["fa_paraphrase"] for _, a, name in rows]),
                fa_paraphrase_before=_pool([b[name]["fa_paraphrase"] for b, _, name in rows]),
                neighbours=_change([b["kept"]["neighbours"] for b, _, _ in rows],
                                   [a["kept"]["neighbours"] for _, a, _ in rows]),
                others=_change([b["kept"]["others"] for b, _, _ in rows], [a["kept"]["others"] for _, a, _ in rows]),
                frechet_before=_mean([b["kept"]["frechet"] for b, _, _ in rows]),
                frechet_after=_mean([a["kept"]["frechet"] for _, a, _ in rows]),
                clip_before=_mean([b["kept"].get("clip_score") for b, _, _ in rows]),
                clip_after=_mean([a["kept"].get("clip_score") for _, a, _ in rows]),
                latent_std_after=_mean([a[name]["noise"]["std"] for _, a, name in rows]),
                latent_std_before=_mean([b[name]["noise"]["std"] for b, _, name in rows]))
        out_["attacks"] = _attack_rates(items)
        out_["erase_seconds"] = _mean([m["seconds"]["erase"] for _, m in items])
        out_["peak_memory_mb"] = _mean([m["peak_memory_mb"] for _, m in items])
        return out_

    for c in concepts:
        items = [runs[(c, s)] for s in seeds if (c, s) in runs]
        if items:
            summary["by_concept"][c] = block(items)
    summary["overall"] = block(list(runs.values()))
    return summary


def table(summaries: dict) -> str:
    """The summaries as markdown: per method one row per concept and guidance, then all concepts;
    then a line per method with its attacks, time and memory."""
    parts = [_method_table(m, s) for m, s in summaries["methods"].items()]
    return "\n\n".join(parts)


def _method_table(method: str, summary: dict) -> str:
    def share(c):
        return f"{c['value']:.3f} [{c['ci95'][0]:.2f}, {c['ci95'][1]:.2f}]"

    def change(c):
        return f"{100 * c['change']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"

    def mean(c):
        return "—" if c is None else f"{c['mean']:.3g}" + (f" ± {c['ci95_half']:.2g}" if c["ci95_half"] else "")
    lines = [f"**{method}**", "", "| concept | guidance | FA erasing prompts (before → after) | FA paraphrases (before → after) | "
             "neighbours, points | other classes, points | Fréchet before → after | latent std after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, block in list(summary["by_concept"].items()) + [("all", summary["overall"])]:
        for g in [k for k in block if k.startswith("guidance_")]:
            r = block[g]
            lines.append(f"| {name} | {g.split('_', 1)[1]} | {r['fa_erase_before']['value']:.3f} → {share(r['fa_erase'])} | "
                         f"{r['fa_paraphrase_before']['value']:.3f} → {share(r['fa_paraphrase'])} | "
                         f"{change(r['neighbours'])} | {change(r['others'])} | {mean(r['frechet_before'])} → "
                         f"{mean(r['frechet_after'])} | {mean(r['latent_std_after'])} |")
    o = summary["overall"]
    attacks = "; ".join(f"{kind} attack success {share(c)}" for kind, c in o["attacks"].items())
    lines += ["", (f"{attacks}. " if attacks else "") + f"Erase time (data, preparation, fit): {mean(o['erase_seconds'])} s; "
              f"peak memory {mean(o['peak_memory_mb'])} MiB (mean ± 95% interval over {summary['runs']} runs)."]
    return "\n".join(lines)


def compare_concepts(pipeline: str, out: str, methods=("safemax",), concepts=CONCEPTS, seeds=(0, 1, 2),
                     attacks=(), eval_n: int = 8, sampling_steps: int = None, smoke: bool = False,
                     summarise_only: bool = False, progress: bool = True) -> str:
    """Run (unless ``summarise_only``) and summarise the head-to-head into ``out/summary.json``
    and ``out/summary.md``; returns the markdown. ``sampling_steps``: None, the pipeline's usual.
    ``smoke``: tiny settings, not a result."""
    settings = {m: method_spec(m, smoke, pipeline)[1] for m in methods}   # (checks every spec before any run)
    guidance, usual_steps = usual(pipeline)
    eval_n, sampling_steps = (1, 2) if smoke else (eval_n, sampling_steps or usual_steps)
    if not summarise_only:
        for m in methods:
            for c in concepts:
                for s in seeds:
                    run(pipeline, m, [c], s, folder(out, method_spec(m)[2], c, s), eval_n, sampling_steps, attacks,
                        smoke, progress)
    # every finished run in ``out``, not only this call's: a call for one method, concept or seed
    # must not drop the others' rows from the folder's summary
    disk = on_disk(out)
    methods = list(dict.fromkeys(list(methods) + [m for m in disk["methods"] if m not in methods]))
    order = list(CONCEPTS) + [TUNE]
    concepts = sorted(set(concepts) | set(disk["concepts"]), key=lambda c: (order.index(c) if c in order else len(order), c))
    seeds = sorted(set(seeds) | set(disk["seeds"]))
    settings |= {m: method_spec(m, smoke, pipeline)[1] for m in methods if m not in settings}
    summary = summarise(out, methods, concepts, seeds)
    summary["settings"] = dict(methods=settings, eval_n=eval_n, sampling_steps=sampling_steps, pipeline=pipeline,
                               attacks=list(attacks), guidance=guidance)
    write_json(os.path.join(out, "summary.json"), summary)
    text = table(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text + "\n")
    plot(summary, os.path.join(out, "summary.png"))   # quality against time, one point a method
    return text


AT_ONCE = ("sneaker", "t-shirt", "bag", "trousers", "coat")
"""The concepts erased together by ``compare_at_once``: its first 1, 2, ... 5 (never the tuning one)."""


def compare_at_once(pipeline: str, out: str, methods=("safemax",), counts=(1, 2, 5), concepts=AT_ONCE, seed: int = 0,
                    eval_n: int = 8, sampling_steps: int = None, smoke: bool = False, progress: bool = True) -> str:
    """Several concepts in one run: for each method and each ``n`` in ``counts``, the first ``n``
    of ``concepts`` erased together into ``out/<method>/<n>-at-once`` and evaluated; the summary
    (``out/at-once.json``, ``.md``) gives, against ``n``, the erase's time and memory, the
    concepts' forget accuracy (pooled over them) and the kept classes' change. Returns the markdown."""
    if max(counts) > len(concepts):
        raise ValueError(f"counts up to {max(counts)} need as many concepts; {len(concepts)} given")
    guidance, usual_steps = usual(pipeline)
    eval_n, sampling_steps = (1, 2) if smoke else (eval_n, sampling_steps or usual_steps)
    rows = []
    for m in methods:
        for n in counts:
            report, manifest = run(pipeline, m, concepts[:n], seed, os.path.join(out, method_spec(m)[2], f"{n}-at-once"),
                                   eval_n, sampling_steps, smoke=smoke, progress=progress)
            names = [c["name"] for c in manifest["concepts"]]
            b, a = report["before"][f"guidance_{guidance:g}"], report["after"][f"guidance_{guidance:g}"]
            kept_b = [b["kept"][k] for k in ("neighbours", "others") if b["kept"].get(k)]
            kept_a = [a["kept"][k] for k in ("neighbours", "others") if a["kept"].get(k)]
            rows.append(dict(method=m, concepts=n, erase_seconds=manifest["seconds"]["erase"],
                             peak_memory_mb=manifest["peak_memory_mb"],
                             fa_erase=_pool([a[c]["fa_erase"] for c in names]),
                             fa_paraphrase=_pool([a[c]["fa_paraphrase"] for c in names]),
                             kept=_change(kept_b, kept_a)))
    write_json(os.path.join(out, "at-once.json"), dict(rows=rows, concepts=list(concepts), counts=list(counts),
                                                       seed=seed, eval_n=eval_n))
    lines = ["| method | concepts at once | erase time, s | peak memory, MiB | FA erasing prompts | FA paraphrases | "
             "kept classes, points |", "| --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['concepts']} | {r['erase_seconds']:.1f} | {r['peak_memory_mb']:.0f} | "
                     f"{r['fa_erase']['value']:.3f} [{r['fa_erase']['ci95'][0]:.2f}, {r['fa_erase']['ci95'][1]:.2f}] | "
                     f"{r['fa_paraphrase']['value']:.3f} | {100 * r['kept']['change']:+.1f} |")
    text = "\n".join(lines)
    with open(os.path.join(out, "at-once.md"), "w") as f:
        f.write(text + "\n")
    return text


__all__ = ["CONCEPTS", "TUNE", "AT_ONCE", "METHOD_SETTINGS", "method_spec", "usual", "compare_concepts", "compare_at_once", "run",
           "finished", "summarise", "table"]

"""The bar a forgetting run is judged by — forget accuracy ≤ 1% while retain accuracy is within
2 points of the original's — and where a run first meets it and from where it holds it."""
from safemax.evaluation.stats import proportion_se
from safemax.training.stopping import NatsRule

FA_BAR = 0.01        # forgotten: at most 1% of forget samples still classified as the class


RETAIN_SLACK = 0.02  # ... while retain accuracy is within 2 points of the original model's


def evaluation_steps(steps: int, eval_every: int) -> set:
    """Every ``eval_every`` steps and the last step, plus five times denser over the first two
    intervals, where fast methods cross the bar (time to forget is only as precise as this)."""
    dense = max(1, eval_every // 5)
    return set(range(eval_every, steps + 1, eval_every)) | set(range(dense, min(2 * eval_every, steps) + 1, dense)) | {steps}


def meets_bar(point: dict, retain_floor: float) -> bool:
    """Whether a measurement has forgotten: FA ≤ 1% with retain accuracy ≥ ``retain_floor``."""
    return point["fa"] <= FA_BAR and point["retain_acc"] >= retain_floor


def bar_points(curve: list, retain_floor: float, leeway: float = 0.0) -> tuple:
    """(first, held): the index of the first curve point that meets the bar (``meets_bar``), and
    of the first that meets it from which every later point meets it (None: never) — with
    ``leeway``, later points may fall that far below ``retain_floor`` (see ``retain_sample``)."""
    ok = [meets_bar(p, retain_floor) for p in curve]
    loose = [meets_bar(p, retain_floor - leeway) for p in curve]
    first = next((i for i, good in enumerate(ok) if good), None)
    held = next((i for i in range(len(ok)) if ok[i] and all(loose[i:])), None)
    return first, held


def retain_sample(settings: dict) -> float:
    """One retain sample's share of a measurement's retain accuracy (``n_per_class`` of each of
    the 9 kept classes: 1/180 by default) — the *held within one sample* leeway. Retain accuracy on
    Fashion-MNIST moves by an s.d. of 0.004–0.013 between a settled run's measurements (paired
    noises), so one sample's flip at one measurement can move *held* by hundreds of steps; the
    leeway says how much of a held time is that."""
    return 1.0 / (settings["n_per_class"] * 9)


def power(settings: dict, retain_acc: float) -> dict:
    """What a measurement of ``settings`` can resolve at the bar of an original with retain
    accuracy ``retain_acc``: its kept samples (``n_per_class`` of each of the 9 kept classes), the
    standard error of one retain accuracy at the bar's floor (``retain_acc`` − 2 points), and of
    the difference between two independent measurements (original and unlearned; the shared
    sampling seed pairs them, so this is an upper bound) — the 2-point bar is resolved when it is
    at least 2 standard errors of the difference."""
    n = settings["n_per_class"] * 9
    se = proportion_se(max(retain_acc - RETAIN_SLACK, 0.0), n)
    return dict(retain_samples=n, retain_se=se, difference_se=se * 2 ** 0.5,
                resolves_bar=RETAIN_SLACK >= 2 * se * 2 ** 0.5)


def summarise(result: dict, retain_floor: float, safemax: dict = None, leeway: float = None) -> dict:
    """The time-to-forget keys of a method's result, from its curve (so that they can be
    recomputed for cached runs):

    - ``steps_to_forget`` / ``seconds_to_forget``: the first measurement with FA ≤ 1% while
      retain accuracy is within 2 points of the original's (null if never); ``frechet_at_forget``.
    - ``steps_to_forget_held`` / ``seconds_to_forget_held``: the first measurement from which
      that bar holds at every later one — a method that passes once by chance and breaks
      again (gradient ascent does) has not forgotten in a usable way.
    - with ``leeway`` (``retain_sample``): ``steps_to_forget_held_within_one`` /
      ``seconds_to_forget_held_within_one``: the same, where a later measurement may miss the
      retain floor by up to ``leeway`` (one retain sample) — how much of *held* is one sample;
      None for a run the race stopped (``raced_out_at``: its curve ends where the strict bar failed).
    - with heavy confirmations on the curve (``Confirmer``): ``steps_to_forget_confirmed`` /
      ``seconds_to_forget_confirmed``: the first held point whose heavy measurement met the bar.
    - ``time_to_forget_vs_safemax`` / ``held_time_to_forget_vs_safemax``: ratios to SAFEMax's
      (``{">": x}``, a lower bound from the method's whole budget, where it never got there;
      null without a SAFEMax run that got there).
    """
    first, held = bar_points(result["curve"], retain_floor)
    curve = result["curve"]
    out = dict(steps_to_forget=curve[first]["step"] if first is not None else None,
               seconds_to_forget=curve[first]["seconds"] if first is not None else None,
               frechet_at_forget=curve[first]["frechet"] if first is not None else None,
               steps_to_forget_held=curve[held]["step"] if held is not None else None,
               seconds_to_forget_held=curve[held]["seconds"] if held is not None else None)
    if leeway is not None:   # a raced-out run's curve ends where the strict bar failed: unknown
        held = None if result.get("raced_out_at") is not None else bar_points(curve, retain_floor, leeway)[1]
        out.update(steps_to_forget_held_within_one=curve[held]["step"] if held is not None else None,
                   seconds_to_forget_held_within_one=curve[held]["seconds"] if held is not None else None)
    if any("confirm" in p for p in curve):   # a light step confirmed by a heavy measurement
        c = confirmed_held(curve, retain_floor)
        out.update(steps_to_forget_confirmed=curve[c]["step"] if c is not None else None,
                   seconds_to_forget_confirmed=curve[c]["seconds"] if c is not None else None)
    budget = result["prep_seconds"] + result["train_seconds"]
    for key, ratio in (("seconds_to_forget", "time_to_forget_vs_safemax"),
                       ("seconds_to_forget_held", "held_time_to_forget_vs_safemax")):
        mine, ref = out[key], (safemax or {}).get(key)
        out[ratio] = None if not ref else (mine / ref if mine is not None else {">": budget / ref})
    return out


class Race:
    """Stops a method that can no longer be the fastest to hold the bar: one that fails it at a
    measurement at or after step ``best`` — the earliest step from which holding still beats a
    method already finished (None: none holds it yet) — holds it (if ever) only after that step.
    Used as the fit's ``stop_when``; ``judge`` is called with every measurement."""

    def __init__(self, best, retain_floor: float):
        self.best, self.retain_floor, self.out_at = best, retain_floor, None

    @classmethod
    def behind(cls, finished, retain_floor: float, cost: float = 1.0) -> "Race":
        """The race a method whose step costs ``cost`` runs after the ``finished`` ``(result, its
        step cost)`` pairs: one held from step n at cost c is beaten only by holding before
        n·c/cost (equal costs: before n)."""
        marks = []
        for r, c in finished:
            held = bar_points(r["curve"], retain_floor)[1]
            if held is not None:
                marks.append(r["curve"][held]["step"] * c / cost)
        return cls(min(marks, default=None), retain_floor)

    def judge(self, point: dict) -> bool:
        if self.out_at is None and self.best is not None and point["step"] >= self.best \
                and not meets_bar(point, self.retain_floor):
            self.out_at = point["step"]
        return self.out_at is not None

    def __call__(self, history) -> bool:
        return self.out_at is not None

    def __repr__(self):
        return (f"race: failed the bar at step {self.out_at}, at or after step {self.best:g}: a finished "
                "setting holds it sooner")


def stop_rule_replay(history: list, rule=None):
    """Where the label-free stopping rule (``safemax.training.stopping``; default ``nats:0.01:5``) would have
    stopped this fit — what a user without a classifier pays: ``{"rule", "step", "train_seconds"}``
    (``step`` None: it never fired), or None for a method that does not log SAFEMax's nats."""
    rule = rule or NatsRule()
    if not history or not all(k in history[0] for k in ("forget_nats", "retain_nats")):
        return None
    at = next((h for i, h in enumerate(history) if rule(history[:i + 1])), None)
    return dict(rule=str(rule), step=None if at is None else at["step"],
                train_seconds=None if at is None else at["seconds"])


def held_step(curve, retain_floor: float, leeway: float = 0.0):
    """(first, held) *step* at which ``curve`` meets the bar (``bar_points``' indices as steps;
    each later point within ``leeway`` of the retain floor); None where it never does."""
    first, held = bar_points(curve, retain_floor, leeway)
    return tuple(None if i is None else curve[i]["step"] for i in (first, held))


def run_held_step(run: dict, within_one: bool = False):
    """(first, held) step of one run's curve (``benchmarks/classes.py``'s runs): retain within
    RETAIN_SLACK of its start; ``within_one``: later points may miss that floor by one of the
    light measurement's retain samples (``retain_sample``)."""
    leeway = retain_sample(dict(n_per_class=run.get("curve_per_class", 20))) if within_one else 0.0
    return held_step(run["curve"], run["before"]["retain_acc"] - RETAIN_SLACK, leeway)


def needed_per_class(retain_acc: float, cap: int = 1000) -> int:
    """The fewest samples per kept class whose measurement resolves the 2-point bar (``power``)
    for an original of this retain accuracy, at most ``cap``."""
    n = 1
    while n < cap and not power(dict(n_per_class=n), retain_acc)["resolves_bar"]:
        n += 1
    return min(n, cap)


class Confirmer:
    """A light measurement finds the step, a heavy one confirms it: at a light curve point that
    meets the bar, when no heavy measurement has confirmed one since the light curve last failed
    it, the model is measured again with ``heavy`` (``evaluate``'s keyword arguments: more
    samples, enough to resolve the bar) against ``floor`` (the heavy original's retain accuracy −
    2 points), and the point keeps it as ``confirm``: ``{fa, retain_acc, meets}``."""

    def __init__(self, heavy: dict, floor: float, light_floor: float):
        self.heavy, self.floor, self.light_floor, self.ok = heavy, floor, light_floor, False

    def replay(self, curve: list) -> None:
        """The state after ``curve`` (a resumed run's saved points)."""
        for point in curve[1:]:
            if not meets_bar(point, self.light_floor):
                self.ok = False
            elif "confirm" in point:
                self.ok = point["confirm"]["meets"]

    def __call__(self, unet, point: dict, evaluate) -> None:
        if not meets_bar(point, self.light_floor):
            self.ok = False
        elif not self.ok:
            m = evaluate(unet, **self.heavy)
            meets = meets_bar(m, self.floor)
            point["confirm"] = dict(fa=m["fa"], retain_acc=m["retain_acc"], meets=meets)
            self.ok = meets


def confirmed_held(curve: list, retain_floor: float):
    """The index of the first point from which the light bar holds and whose heavy measurement
    confirmed it (None: never, or a run without confirmations)."""
    held = bar_points(curve, retain_floor)[1]
    if held is None:
        return None
    return next((i for i in range(held, len(curve)) if curve[i].get("confirm", {}).get("meets")), None)

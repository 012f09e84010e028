"""The intervals every results table uses: a 95% t-interval over runs (seeds, classes) and a 95%
Wilson interval for a share of samples (a forget accuracy of 0 out of 300 is not "0"), and the
standard error that says whether a measurement can resolve a difference."""
import math


def t_interval(values) -> tuple:
    """(mean, half-width of the 95% t-interval) of ``values``; half-width None for one value."""
    from scipy.stats import t
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def cell(values, spec=".3f", missing="—") -> str:
    """``mean ± half-width`` of ``values`` for a table (``missing`` when there are none)."""
    if not values:
        return missing
    mean, half = t_interval(values)
    return format(mean, spec) + ("" if half is None else " ± " + format(half, spec))


def wilson(k: float, n: int, z: float = 1.959964) -> tuple:
    """The 95% Wilson interval ``(low, high)`` of ``k`` successes in ``n`` (``k`` may be a share
    times ``n``)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share(k: int, n: int):
    """``{"value", "ci95", "n"}``: the share ``k / n`` with its 95% Wilson interval, rounded to 4
    places (None when ``n`` is 0) — a measured share as the results files record it."""
    if n == 0:
        return None
    lo, hi = wilson(k, n)
    return dict(value=round(k / n, 4), ci95=[round(lo, 4), round(hi, 4)], n=n)


def share_of(hits) -> dict:
    """``share`` of a boolean tensor's true entries."""
    return share(int(hits.sum()), len(hits))


def wilson_upper(k: int, n: int) -> float:
    """The upper end of the 95% Wilson interval of ``k`` successes in ``n``."""
    return wilson(k, n)[1]


def proportion_se(p: float, n: int) -> float:
    """The standard error of a share ``p`` measured on ``n`` samples (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("inf")

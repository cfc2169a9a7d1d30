"""The health judge: decides, metric by metric, whether a patched host got worse.

Each metric measured after the patch is judged against its threshold and two references: the
*baseline* (the same host before the patch) and the *control* (unpatched hosts of the same
group, measured during the same soak). Samples of each reference are pooled; NaN samples are
ignored; a reference measurement that could not be taken is left out. The rules, in order:

1. **Could not measure.** If the check could not measure the metric after the patch (or returned
   no samples), the metric is Unhealthy: a check that cannot run on a patched host is a failure.
2. **Absolute limits.** `max` and `min` apply to the median of the after samples (the value
   itself for one-sample metrics such as counts). Outside a limit: Unhealthy.
3. **Relative limits**, against each reference that has samples, comparing medians in the
   direction in which the metric gets worse. `max_increase`: how far the after value may move
   the wrong way (after - reference for latency or error rate; reference - after for memory or
   disk free). `max_ratio`: how many times worse it may get (after / reference, or
   reference / after when lower is worse). A ratio to a reference median of 0 or less means
   nothing, so that ratio is skipped and the reason says so; a lower-is-worse metric that falls
   to 0 or less is infinitely worse. Over a limit: Unhealthy. A worsening of at most
   `min_delta` (in the metric's unit) is noise: neither relative limits nor the statistical
   comparison count it.
4. **Statistical comparison**, against each reference, when both sides have at least
   `min_samples` samples: a one-sided Mann–Whitney U test that the after samples are worse,
   with the rank-biserial correlation as effect size (1 when every after sample is worse than
   every reference sample, 0 for no difference, -1 for a clear improvement). Worse when
   p < `alpha` and effect >= `min_effect`: Unhealthy. An improvement is never flagged. U, p,
   effect and sample counts are kept as evidence (`baseline_p`, `control_effect`, ...).
5. **Too few samples.** A metric measured with several samples (a distribution, such as
   latency) is judged statistically or not at all: if no reference could be compared
   statistically and no rule found it worse, it is Inconclusive ("too few samples"), even when
   its median is within the absolute limits. A one-sample metric (a count, a yes/no) within its
   absolute limits needs no reference.
6. **Nothing to compare with.** No limit could be applied and no comparison made: Inconclusive.
7. Otherwise Healthy.

Every rule that finds the metric worse is reported; one is enough for Unhealthy. The judge only
says Healthy, Inconclusive or Unhealthy; the verdict policy turns metrics into host verdicts.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from patchpilot.health.types import Direction, Measurement, MetricJudgement, Threshold, Verdict

__all__ = ["judge_host", "judge_metric"]

_DEFAULT_THRESHOLD = Threshold()
_BARE_UNITS = frozenset({"", "count", "bool", "ratio"})


# --- formatting for reasons -------------------------------------------------------------------


def _num(v: float) -> str:
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == round(v) and abs(v) < 1e12:
        return str(round(v))
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _fmt(v: float, unit: str) -> str:
    if unit == "%" and math.isfinite(v):
        return f"{v:.1f}%"
    n = _num(v)
    return n if unit in _BARE_UNITS else f"{n} {unit}"


def _amount(v: float, unit: str) -> str:
    """A difference: percentages move by points, not by percent."""
    if unit == "%" and math.isfinite(v):
        return f"{v:.1f} points"
    return _fmt(v, unit)


# --- the judge ----------------------------------------------------------------------------------


@dataclass
class _Ref:
    name: str  # "baseline" or "control"
    samples: tuple[float, ...]

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


@dataclass
class _Findings:
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    applied: bool = False  # some limit or comparison could be applied
    compared: bool = False  # some reference was compared statistically


def _clean(samples: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(x) for x in samples if not math.isnan(x))


def _pool(name: str, refs: Sequence[Measurement]) -> _Ref:
    return _Ref(name, tuple(x for m in refs if m.error is None for x in _clean(m.samples)))


def _absolute(m: Measurement, a: float, t: Threshold, f: _Findings) -> None:
    if t.max is not None:
        f.applied = True
        if a > t.max:
            f.failures.append(f"{m.metric} {_fmt(a, m.unit)} > max {_fmt(t.max, m.unit)}")
    if t.min is not None:
        f.applied = True
        if a < t.min:
            f.failures.append(f"{m.metric} {_fmt(a, m.unit)} < min {_fmt(t.min, m.unit)}")


def _relative(m: Measurement, a: float, ref: _Ref, r: float, t: Threshold, f: _Findings) -> None:
    higher = m.direction == Direction.HIGHER_IS_WORSE
    if (a - r) * int(m.direction) <= t.min_delta and t.min_delta > 0:
        if t.max_increase is not None or (t.max_ratio is not None and r > 0):
            f.applied = True
        return  # a change this small is noise, whatever the ratio
    if t.max_increase is not None:
        f.applied = True
        worse_by = (a - r) * int(m.direction)
        if worse_by > t.max_increase:
            way, limit = ("above", "max increase") if higher else ("below", "max decrease")
            f.failures.append(
                f"{m.metric} {_fmt(a, m.unit)} is {_amount(worse_by, m.unit)} {way} {ref.name} "
                f"{_fmt(r, m.unit)} ({limit} {_amount(t.max_increase, m.unit)})"
            )
    if t.max_ratio is not None:
        if r <= 0:
            f.notes.append(f"ratio to {ref.name} not applied: its median is {_fmt(r, m.unit)}")
            return
        f.applied = True
        limit = f"max ×{_num(t.max_ratio)}"
        if higher:
            ratio = a / r
            if ratio > t.max_ratio:
                f.failures.append(
                    f"{m.metric} {_fmt(a, m.unit)} is {_num(ratio)}× {ref.name} "
                    f"{_fmt(r, m.unit)} ({limit})"
                )
        elif a <= 0:
            f.failures.append(
                f"{m.metric} fell to {_fmt(a, m.unit)} from {ref.name} {_fmt(r, m.unit)} "
                f"({limit} lower)"
            )
        elif (ratio := r / a) > t.max_ratio:
            f.failures.append(
                f"{m.metric} {_fmt(a, m.unit)} is {_num(ratio)}× lower than {ref.name} "
                f"{_fmt(r, m.unit)} ({limit} lower)"
            )


def _statistical(
    m: Measurement, samples: tuple[float, ...], ref: _Ref, t: Threshold, f: _Findings
) -> None:
    n1, n2 = len(samples), len(ref.samples)
    if n1 < t.min_samples or n2 < t.min_samples:
        return
    f.applied = f.compared = True
    higher = m.direction == Direction.HIGHER_IS_WORSE
    from scipy.stats import mannwhitneyu  # imported when needed: scipy.stats takes ~1 s to load

    res = mannwhitneyu(samples, ref.samples, alternative="greater" if higher else "less")
    u = float(res.statistic)  # U of the after samples
    p = float(res.pvalue)
    if math.isnan(p):  # no variance at all: no evidence of a difference
        p = 1.0
    r = 2 * u / (n1 * n2) - 1  # rank-biserial: > 0 when after ranks higher
    effect = r if higher else -r
    f.stats.update(
        {
            f"{ref.name}_u": u,
            f"{ref.name}_p": p,
            f"{ref.name}_effect": effect,
            f"{ref.name}_n_after": float(n1),
            f"{ref.name}_n_ref": float(n2),
        }
    )
    a, b = statistics.median(samples), statistics.median(ref.samples)
    if p < t.alpha and effect >= t.min_effect and (a - b) * int(m.direction) <= t.min_delta:
        f.notes.append(
            f"worse than {ref.name} by {_amount((a - b) * int(m.direction), m.unit)}, "
            f"under the {_amount(t.min_delta, m.unit)} that counts"
        )
    elif p < t.alpha and effect >= t.min_effect:
        f.failures.append(
            f"{m.metric} worse than {ref.name}: median {_fmt(a, m.unit)} vs {_fmt(b, m.unit)}, "
            f"Mann–Whitney p={p:.2g}, effect {effect:.2f}"
        )


def judge_metric(
    after: Measurement,
    *,
    baseline: Sequence[Measurement] = (),
    control: Sequence[Measurement] = (),
    threshold: Threshold,
) -> MetricJudgement:
    """Judge one metric of one patched host; see the module docstring for the rules."""
    base, ctrl = _pool("baseline", baseline), _pool("control", control)
    samples = _clean(after.samples)

    def judgement(
        verdict: Verdict, reason: str, stats: dict[str, float] | None = None
    ) -> MetricJudgement:
        return MetricJudgement(
            check=after.check,
            metric=after.metric,
            unit=after.unit,
            verdict=verdict,
            critical=after.critical,
            reason=reason,
            after=statistics.median(samples) if samples and after.error is None else None,
            baseline=base.median,
            control=ctrl.median,
            statistic=stats or {},
            threshold=asdict(threshold),
            lines=after.lines,
        )

    if after.error is not None:
        return judgement(Verdict.UNHEALTHY, f"could not measure {after.metric}: {after.error}")
    if not samples:
        return judgement(Verdict.UNHEALTHY, f"could not measure {after.metric}: no samples")

    a = statistics.median(samples)
    distribution = len(samples) > 1
    f = _Findings()
    _absolute(after, a, threshold, f)
    for ref in (base, ctrl):
        r = ref.median
        if r is None:
            continue
        _relative(after, a, ref, r, threshold, f)
        _statistical(after, samples, ref, threshold, f)

    notes = "".join(f"; {n}" for n in f.notes)
    if f.failures:
        return judgement(Verdict.UNHEALTHY, "; ".join(f.failures), f.stats)
    counts = f"{len(samples)} after, {len(base.samples)} baseline, {len(ctrl.samples)} control"
    has_limits = threshold.max is not None or threshold.min is not None
    if distribution and not f.compared and (has_limits or base.samples or ctrl.samples):
        return judgement(
            Verdict.INCONCLUSIVE,
            f"{after.metric}: too few samples ({counts}; need {threshold.min_samples}{notes})",
            f.stats,
        )
    if not f.applied:
        return judgement(
            Verdict.INCONCLUSIVE, f"{after.metric}: nothing to compare with ({counts}{notes})"
        )

    summary = f"{after.metric} {'median ' if distribution else ''}{_fmt(a, after.unit)}"
    for ref in (base, ctrl):
        if ref.median is not None:
            summary += f", {ref.name} {_fmt(ref.median, after.unit)}"
    return judgement(Verdict.HEALTHY, summary + notes, f.stats)


def judge_host(
    host: str,
    after: Sequence[Measurement],
    *,
    baseline: Mapping[tuple[str, str], Sequence[Measurement]],
    control: Mapping[tuple[str, str], Sequence[Measurement]],
    thresholds: Mapping[tuple[str, str], Threshold],
    default: Threshold = _DEFAULT_THRESHOLD,
) -> list[MetricJudgement]:
    """Judge every metric of one host, each keyed by (check, metric) in the reference and
    threshold maps. A metric that had a baseline but was not reported after the patch could not
    be measured on the patched host, so it is judged Unhealthy too rather than dropped."""
    out = [
        judge_metric(
            m,
            baseline=baseline.get((m.check, m.metric), ()),
            control=control.get((m.check, m.metric), ()),
            threshold=thresholds.get((m.check, m.metric), default),
        )
        for m in after
    ]
    seen = {(m.check, m.metric) for m in after}
    for key, before in baseline.items():
        if key in seen or not before:
            continue
        first = before[0]
        missing = Measurement(
            check=first.check,
            metric=first.metric,
            unit=first.unit,
            samples=(),
            direction=first.direction,
            critical=any(m.critical for m in before),
            error="not reported after the patch",
        )
        out.append(
            judge_metric(
                missing,
                baseline=before,
                control=control.get(key, ()),
                threshold=thresholds.get(key, default),
            )
        )
    return out

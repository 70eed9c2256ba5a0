"""Benchmark of feedback_loop.drift.data: false alarms on unchanged data, and detection delay.

    python benchmarks/data_drift.py [--seeds N]

Data: 5 numeric features ~ N(0, 1) and 1 categorical one (4 categories, 40/30/20/10 %), i.i.d.
rows; the monitor has its defaults (reference 1,000 rows, tumbling windows of 500, KS for numeric
and chi-square for categorical features, false-alarm rate 1 % per window).

1. Stationary data, ``seeds`` references x 24 windows each: the share of windows with any alarm,
   against the configured rate, with a one-sided 95 % Clopper-Pearson upper bound (windows taken
   as independent) and a bootstrap-over-seeds one (windows of one reference are not independent:
   the reference is itself a sample). On the same windows: the fixed rule "PSI > 0.1" on any
   numeric feature.
2. Window sizes 50 to 500: calibrated rate against "PSI > 0.1", whose false-alarm rate depends
   on the window size.
3. Calibration methods at a 10 % target (so rates are measurable on few windows): exact KS
   thresholds (the default for tie-free features), the two-sample bootstrap (pseudo-reference and
   pseudo-window both resampled), and the naive one-sample bootstrap (pseudo-window against the
   reference itself).
4. A 0.5-standard-deviation mean shift of one numeric feature at a random row after the
   reference, one run per seed: delay, in rows from the shift, until a closed window flags it.

Prints tables, then one JSON line; exits 1 if a target fails (false-alarm rate above the
configured one, or fewer than 95 % of shifts detected within 2,000 rows).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_loop.drift.calibration import calibrate
from feedback_loop.drift.data import FeatureDriftMonitor
from feedback_loop.drift.ks_exact import ks_exact_sf, ks_exact_threshold
from feedback_loop.drift.result import DriftResult

NUMERIC = ("x0", "x1", "x2", "x3", "x4")
CATS = ("a", "b", "c", "d")
P_CATS = (0.4, 0.3, 0.2, 0.1)
REFERENCE, WINDOW, RATE = 1000, 500, 0.01
WINDOWS_PER_SEED = 50
PSI_RULE = 0.1
SHIFT, HORIZON, MAX_AFTER = 0.5, 2000, 6000


def make_rows(rng: np.random.Generator, count: int, shift_at: int | None = None) -> list[dict[str, Any]]:
    x = rng.normal(size=(count, len(NUMERIC)))
    if shift_at is not None:
        x[shift_at:, 0] += SHIFT
    cats = np.asarray(CATS)[rng.choice(len(CATS), p=P_CATS, size=count)].tolist()
    cols = [x[:, j].tolist() for j in range(len(NUMERIC))]
    return [dict(zip((*NUMERIC, "c"), vals)) for vals in zip(*cols, cats)]


def by_window(results: list[DriftResult]) -> dict[int, list[DriftResult]]:
    out: dict[int, list[DriftResult]] = {}
    for r in results:
        out.setdefault(r.window_index, []).append(r)
    return out


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial proportion (bisection on the CDF)."""
    if k >= n:
        return 1.0

    def cdf(p: float) -> float:
        logs = [
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
            for i in range(k + 1)
        ]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cdf(mid) > 1.0 - level:
            lo = mid
        else:
            hi = mid
    return hi


def binomial_excess_p_value(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``: how surprising ``k`` alarms are if the rate is ``p``."""
    if k <= 0:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k)
    ]
    top = max(logs)
    return max(0.0, 1.0 - math.exp(top) * sum(math.exp(v - top) for v in logs))


def design_rate() -> float:
    """Window false-alarm probability the design promises here (features independent).

    KS thresholds are exact for tie-free references: ``P(D > d)`` is computed exactly; the
    chi-square threshold is a conservative bootstrap quantile: at most ``alpha``.
    """
    alpha = RATE / (len(NUMERIC) + 1)
    d = ks_exact_threshold(REFERENCE, WINDOW, alpha)
    p_ks = float(ks_exact_sf(REFERENCE, WINDOW, [round(d * REFERENCE * WINDOW)])[0])
    return 1.0 - (1.0 - p_ks) ** len(NUMERIC) * (1.0 - alpha)


def seed_bootstrap_upper(per_seed: list[int], windows: int, level: float = 0.95) -> float:
    """Upper bound of the window false-alarm rate, resampling whole seeds."""
    counts = np.asarray(per_seed, dtype=np.float64)
    rng = np.random.default_rng(12345)
    idx = rng.integers(0, counts.size, size=(4000, counts.size))
    return float(np.quantile(counts[idx].sum(axis=1) / (counts.size * windows), level))


def stationary(seeds: int) -> dict[str, Any]:
    alarms, psi_alarms, per_seed, per_feature = 0, 0, [], dict.fromkeys((*NUMERIC, "c"), 0)
    windows = 0
    for seed in range(seeds):
        rng = np.random.default_rng([1, seed])
        mon = FeatureDriftMonitor(seed=seed)
        results = [r for x in make_rows(rng, REFERENCE + WINDOW * WINDOWS_PER_SEED) for r in mon.update(x)]
        wins = by_window(results)
        assert len(wins) == WINDOWS_PER_SEED
        hits = 0
        for rs in wins.values():
            hits += any(r.drifted for r in rs)
            psi_alarms += any(r.extra.get("psi", 0.0) > PSI_RULE for r in rs)
            for r in rs:
                per_feature[r.feature] += r.drifted
        alarms += hits
        per_seed.append(hits)
        windows += len(wins)
    return {
        "windows": windows,
        "alarms": alarms,
        "rate": alarms / windows,
        "design_rate": design_rate(),
        "excess_p_value": binomial_excess_p_value(alarms, windows, RATE),
        "binomial_upper95": clopper_pearson_upper(alarms, windows),
        "seed_bootstrap_upper95": seed_bootstrap_upper(per_seed, WINDOWS_PER_SEED),
        "psi_rule_rate": psi_alarms / windows,
        "per_feature": {k: v / windows for k, v in per_feature.items()},
    }


def window_sizes(seeds: int, sizes: tuple[int, ...] = (50, 100, 200, 500), windows: int = 20) -> list[dict[str, Any]]:
    rows_out = []
    for w in sizes:
        alarms = psi_alarms = psi_one = total = 0
        for seed in range(seeds):
            rng = np.random.default_rng([2, w, seed])
            mon = FeatureDriftMonitor(window_size=w, seed=seed)
            wins = by_window([r for x in make_rows(rng, REFERENCE + w * windows) for r in mon.update(x)])
            for rs in wins.values():
                alarms += any(r.drifted for r in rs)
                psi_alarms += any(r.extra.get("psi", 0.0) > PSI_RULE for r in rs)
                psi_one += sum(r.extra.get("psi", 0.0) > PSI_RULE for r in rs if r.feature == "x0")
                total += 1
        rows_out.append(
            {
                "window": w,
                "windows": total,
                "calibrated": alarms / total,
                "psi_rule_any": psi_alarms / total,
                "psi_rule_one_feature": psi_one / total,
            }
        )
    return rows_out


def methods(seeds: int, rate: float = 0.1, windows: int = 20) -> dict[str, float]:
    hits = {"exact KS (default)": 0, "two-sample bootstrap": 0, "one-sample bootstrap": 0}
    total = 0
    for seed in range(seeds):
        rng = np.random.default_rng([3, seed])
        mon = FeatureDriftMonitor(false_alarm_rate=rate, seed=seed)
        wins = by_window([r for x in make_rows(rng, REFERENCE + WINDOW * windows) for r in mon.update(x)])
        th: dict[str, dict[str, float]] = {}
        for name in NUMERIC:
            ref = mon.references[name].values
            th[name] = {
                "two-sample bootstrap": calibrate(ref, WINDOW, ("ks",), mon.alpha, rng=[4, seed], exact_ks=False)["ks"],
                "one-sample bootstrap": calibrate(
                    ref, WINDOW, ("ks",), mon.alpha, rng=[4, seed], resample_reference=False
                )["ks"],
            }
        for rs in wins.values():
            total += 1
            cat = any(r.drifted for r in rs if r.feature == "c")
            hits["exact KS (default)"] += any(r.drifted for r in rs)
            for m in ("two-sample bootstrap", "one-sample bootstrap"):
                hits[m] += cat or any(r.statistic > th[r.feature][m] for r in rs if r.feature in th)
    return {m: h / total for m, h in hits.items()} | {"windows": total, "configured": rate}


def detection(seeds: int) -> dict[str, Any]:
    delays: list[float] = []
    early = 0
    for seed in range(seeds):
        rng = np.random.default_rng([5, seed])
        shift_row = int(rng.integers(0, 5 * WINDOW))  # rows after the reference
        mon = FeatureDriftMonitor(seed=seed)
        stream = make_rows(rng, REFERENCE + shift_row + MAX_AFTER, shift_at=REFERENCE + shift_row)
        delay = math.inf
        for i, x in enumerate(stream):
            results = mon.update(x)
            flagged = any(r.drifted and r.feature == "x0" for r in results)
            if i < REFERENCE + shift_row:
                early += any(r.drifted for r in results)
            elif flagged:
                delay = float(i + 1 - (REFERENCE + shift_row))
                break
        delays.append(delay)
    d = np.asarray(delays)
    found = d[np.isfinite(d)]
    return {
        "seeds": seeds,
        "detected_within_2000": float(np.mean(d <= HORIZON)),
        "mean_delay": float(found.mean()) if found.size else math.inf,
        "p90_delay": float(np.quantile(d, 0.9)),
        "max_delay": float(d.max()),
        "false_alarms_before_shift": early,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=300, help="references for parts 1 and 4 (default 300, min 100)")
    args = parser.parse_args()
    seeds = max(100, args.seeds)
    t0 = time.perf_counter()

    st = stationary(seeds)
    t1 = time.perf_counter()
    print(
        f"1. stationary data: {seeds} seeds x {WINDOWS_PER_SEED} windows of {WINDOW} (reference {REFERENCE})  [{t1 - t0:.0f} s]"
    )
    print(f"   {'rule':<34}{'windows':>8}{'alarms':>8}{'rate':>9}{'95% upper':>11}")
    print(
        f"   {'calibrated, target 1%':<34}{st['windows']:>8}{st['alarms']:>8}{st['rate']:>9.4f}{st['binomial_upper95']:>11.4f}  (binomial)"
    )
    print(f"   {'':<34}{'':>8}{'':>8}{'':>9}{st['seed_bootstrap_upper95']:>11.4f}  (bootstrap over seeds)")
    psi_n = round(st["psi_rule_rate"] * st["windows"])
    print(f"   {'PSI > 0.1 on any numeric feature':<34}{st['windows']:>8}{psi_n:>8}{st['psi_rule_rate']:>9.4f}")
    print("   alarms per feature and window: " + ", ".join(f"{k} {v:.4f}" for k, v in st["per_feature"].items()))
    print(
        f"   the design's own bound here: {st['design_rate']:.4f} (exact KS tail at the exact threshold, chi2 <= alpha);"
        f" P(>= {st['alarms']} alarms | rate {RATE}) = {st['excess_p_value']:.3f}"
    )

    sizes = window_sizes(max(30, seeds // 6))
    t2 = time.perf_counter()
    print(f"\n2. false-alarm rate by window size (target 1%)  [{t2 - t1:.0f} s]")
    print(f"   {'window':>7}{'windows':>9}{'calibrated':>12}{'PSI>0.1 any':>13}{'PSI>0.1 x0':>12}")
    for r in sizes:
        print(
            f"   {r['window']:>7}{r['windows']:>9}{r['calibrated']:>12.4f}{r['psi_rule_any']:>13.4f}{r['psi_rule_one_feature']:>12.4f}"
        )

    meth = methods(max(30, seeds // 5))
    t3 = time.perf_counter()
    print(
        f"\n3. calibration methods, target {meth['configured']:.0%} per window ({meth['windows']} windows)  [{t3 - t2:.0f} s]"
    )
    for m in ("exact KS (default)", "two-sample bootstrap", "one-sample bootstrap"):
        print(f"   {m:<24}{meth[m]:>8.4f}")

    det = detection(seeds)
    t4 = time.perf_counter()
    print(
        f"\n4. mean shift of {SHIFT} sd in x0 at a random row after the reference ({det['seeds']} seeds)  [{t4 - t3:.0f} s]"
    )
    print(
        f"   detected within {HORIZON} rows: {det['detected_within_2000']:.3f}   mean delay {det['mean_delay']:.0f}   "
        f"p90 {det['p90_delay']:.0f}   max {det['max_delay']:.0f}   false alarms before the shift: {det['false_alarms_before_shift']}"
    )
    elapsed = t4 - t0
    print(f"\n({elapsed:.0f} s)")

    # The design targets a rate just under the configured one (here design_rate), so a finite run
    # can land a little above it by chance: fail only on a statistically significant excess.
    rate_ok = st["rate"] <= RATE or st["excess_p_value"] >= 0.05
    ok = rate_ok and det["detected_within_2000"] >= 0.95
    summary = {
        "false_alarm_rate": round(st["rate"], 5),
        "configured_rate": RATE,
        "false_alarm_upper95_binomial": round(st["binomial_upper95"], 5),
        "false_alarm_upper95_seed_bootstrap": round(st["seed_bootstrap_upper95"], 5),
        "design_rate": round(st["design_rate"], 5),
        "excess_p_value": round(st["excess_p_value"], 4),
        "stationary_windows": st["windows"],
        "psi_rule_false_alarm_rate": round(st["psi_rule_rate"], 5),
        "psi_rule_by_window": {str(r["window"]): round(r["psi_rule_any"], 4) for r in sizes},
        "calibrated_by_window": {str(r["window"]): round(r["calibrated"], 4) for r in sizes},
        "methods_at_10pct": {m: round(v, 4) for m, v in meth.items() if m not in ("windows", "configured")},
        "detected_within_2000": round(det["detected_within_2000"], 4),
        "mean_delay": round(det["mean_delay"], 1),
        "p90_delay": round(det["p90_delay"], 1),
        "seeds": seeds,
        "seconds": round(elapsed, 1),
        "ok": ok,
    }
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

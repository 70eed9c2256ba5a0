"""Accuracy estimated at each window's close, on Elec2, against the accuracy the labels later reveal.

A River pipeline ``StandardScaler | LogisticRegression`` learns the first 5,000 rows of Elec2 and
is then frozen; it predicts the remaining 40,312 rows with confidence ``max(p, 1 - p)``. The label
of a row becomes known ``--label-delay`` rows (48, one day) after its prediction, and only then
reaches :meth:`PerformanceEstimator.observe_outcome`, with the prediction's id. Every 1,000
predictions the window closes and its estimate is compared with its true accuracy:

* the hybrid estimate (``mae_pp``) -- realized correctness of the window's predictions already
  labeled at close, calibrated CBPE for the rest: what a user is shown at close;
* pure calibrated CBPE over the whole window (``cbpe_mae_pp``);
* the unlabeled part alone (``unlabeled_part_mae_pp``): the CBPE estimate of the predictions
  still unlabeled at close against their realized accuracy -- the estimate truly made before
  the labels (over 48 rows its sampling noise, ``unlabeled_part_noise_pp``, is large), next to
  the last known accuracy as the estimate of the same part (``unlabeled_part_last_known_mae_pp``);
* baselines: naive CBPE, the mean raw confidence of the window (no calibration); last known
  accuracy, that of the most recent ``calibration_size`` labeled outcomes.

The same run with labels one whole window late (``full_delay_mae_pp``: nothing of a window is
labeled when it closes, so the hybrid is pure CBPE), and a sweep over calibration sizes for both
delays, follow.

    .venv/bin/python benchmarks/estimate.py [--calibration-size N] [--bins N] ...

The last line of the output is one JSON object (``mae_pp``, ``cbpe_mae_pp``,
``unlabeled_part_mae_pp``, ``full_delay_mae_pp``, ``naive_cbpe_mae_pp``,
``last_known_accuracy_mae_pp``, ``windows``, ...); errors are in percentage points.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
import orjson
from river import linear_model, preprocessing

from feedback_loop import elec2
from feedback_loop.drift.performance import PerformanceEstimator, WindowEstimate

TARGET_PP = 3.0


@dataclass
class Row:
    window: WindowEstimate  # reconciled: realized accuracy attached
    last_known: float | None  # accuracy of the calibration outcomes at close
    true: float  # accuracy computed offline
    unlabeled: int  # predictions of the window without label at close
    unlabeled_estimate: float | None  # the hybrid's CBPE part: mean over those predictions
    unlabeled_true: float | None  # their realized accuracy


def predictions(pretrain: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of the frozen logistic regression after ``pretrain`` rows."""
    data = list(elec2.rows())
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    for x, y in data[:pretrain]:
        model.learn_one(x, y == "UP")
    conf, correct = [], []
    for x, y in data[pretrain:]:  # predict only: the model is frozen from here on
        p_up = float(model.predict_proba_one(x).get(True, 0.0))
        conf.append(max(p_up, 1.0 - p_up))
        correct.append((p_up >= 0.5) == (y == "UP"))
    return np.array(conf), np.array(correct, dtype=bool)


def run(conf: np.ndarray, correct: np.ndarray, delay: int, **settings: float) -> list[Row]:
    """Replay predictions with labels ``delay`` rows late; one row per full window."""
    est = PerformanceEstimator(**settings)  # type: ignore[arg-type]
    window_of: list[int] = []  # window index of each prediction, as the caller would keep it
    tallies: dict[int, list[int]] = {}  # window index -> [correct, labeled]
    landed = np.zeros(len(conf), dtype=bool)  # label observed so far
    closed: list[tuple[WindowEstimate, float | None, int, float | None, float | None]] = []
    c_list, ok_list = conf.tolist(), correct.tolist()

    def label(i: int) -> None:
        est.observe_outcome(c_list[i], ok_list[i], prediction_id=f"elec2-{i}")
        landed[i] = True
        t = tallies.setdefault(window_of[i], [0, 0])
        t[0] += ok_list[i]
        t[1] += 1

    for j, c in enumerate(c_list):
        window_of.append(est.observe_prediction(f"elec2-{j}", c))
        if j >= delay:
            label(j - delay)  # the label of row j - delay lands after prediction j
        if est.is_full:
            last_known = est.last_known_accuracy
            w = est.close_window()
            assert w is not None
            rows = slice(j + 1 - w.count, j + 1)
            pending = ~landed[rows]
            u = int(pending.sum())
            assert w.labeled_at_close == w.count - u
            unl_est = unl_true = None
            if u:  # the hybrid minus the realized part, per unlabeled prediction
                realized = int(correct[rows][~pending].sum())
                unl_est = (w.estimated_accuracy * w.count - realized) / u
                unl_true = float(correct[rows][pending].mean())
            closed.append((w, last_known, u, unl_est, unl_true))
    for i in range(max(0, len(c_list) - delay), len(c_list)):
        label(i)  # the remaining labels land after the stream ends
    out = []
    for w, last_known, u, unl_est, unl_true in closed:
        start = w.index * est.window_size
        true = float(correct[start : start + w.count].mean())
        reconciled = w.reconcile(*tallies[w.index])
        assert reconciled.label_coverage == 1.0 and abs(reconciled.realized_accuracy - true) < 1e-12
        out.append(Row(reconciled, last_known, true, u, unl_est, unl_true))
    return out


def _mae_pp(errors: list[float]) -> float | None:
    return round(100 * float(np.mean(np.abs(errors))), 3) if errors else None


def errors_pp(rows: list[Row]) -> dict[str, float | None]:
    """MAE, bias and worst error in percentage points of the estimates and the baselines."""
    est = np.array([r.window.estimated_accuracy - r.true for r in rows])
    cbpe = [r.window.cbpe_accuracy - r.true for r in rows if r.window.cbpe_accuracy is not None]
    naive = [r.window.mean_confidence - r.true for r in rows]
    last = [r.last_known - r.true for r in rows if r.last_known is not None]
    part = [r for r in rows if r.unlabeled_estimate is not None and r.unlabeled_true is not None]
    part_last = [r.last_known - r.unlabeled_true for r in part  # type: ignore[operator]
                 if r.last_known is not None]
    # Expected |mean of u Bernoulli(a) draws - a| (normal approximation): the noise floor of
    # any estimate of the unlabeled part, however good.
    noise = [math.sqrt(2 / math.pi * r.unlabeled_true * (1 - r.unlabeled_true) / r.unlabeled)  # type: ignore[operator]
             for r in part]
    return {
        "mae_pp": _mae_pp(est.tolist()),
        "cbpe_mae_pp": _mae_pp(cbpe),
        "unlabeled_part_mae_pp": _mae_pp([r.unlabeled_estimate - r.unlabeled_true for r in part]),  # type: ignore[operator]
        "unlabeled_part_last_known_mae_pp": _mae_pp(part_last),
        "unlabeled_part_noise_pp": round(100 * float(np.mean(noise)), 3) if noise else None,
        "naive_cbpe_mae_pp": _mae_pp(naive),
        "last_known_accuracy_mae_pp": _mae_pp(last),
        "labeled_at_close_mean": round(float(np.mean([r.window.labeled_at_close for r in rows])), 1),
        "bias_pp": round(100 * float(np.mean(est)), 3),
        "max_abs_error_pp": round(100 * float(np.max(np.abs(est))), 3),
    }


def fmt(x: float | None, spec: str = "5.2f") -> str:
    return "-".rjust(int(spec.split(".")[0])) if x is None else format(x, spec)


def pct(x: float | None) -> str:
    return "      -" if x is None else f"{100 * x:7.2f}"


def main(argv: list[str] | None = None) -> int:
    defaults = PerformanceEstimator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window-size", type=int, default=defaults.window_size)
    ap.add_argument("--calibration-size", type=int, default=defaults.calibration_size)
    ap.add_argument("--bins", type=int, default=defaults.bins)
    ap.add_argument("--prior-strength", type=float, default=defaults.prior_strength)
    ap.add_argument("--label-delay", type=int, default=48, help="rows between a prediction and its label")
    ap.add_argument("--pretrain", type=int, default=5000, help="rows the model learns before it is frozen")
    ap.add_argument("--sweep", type=int, nargs="*", default=[500, 1000, 2000, 4000], metavar="SIZE",
                    help="calibration sizes of the sweep (none: no sweep)")
    args = ap.parse_args(argv)
    settings = {"window_size": args.window_size, "calibration_size": args.calibration_size,
                "bins": args.bins, "prior_strength": args.prior_strength}

    conf, correct = predictions(args.pretrain)
    rows = run(conf, correct, args.label_delay, **settings)
    print(f"Elec2, frozen logistic regression after {args.pretrain:,} rows: {len(conf):,} predictions, "
          f"labels {args.label_delay} rows late; {settings}")
    print("accuracy in %; hybrid = realized where labeled at close + calibrated CBPE for the rest")
    print("window  rows            calib  labeled  hybrid    true   error    cbpe   naive  last known"
          "  unlabeled: cbpe    true")
    for r in rows:
        w = r.window
        start = args.pretrain + w.index * args.window_size
        print(f"{w.index:6d}  {start:6d}-{start + w.count - 1:<6d}  {w.calibration_outcomes:5d}  "
              f"{w.labeled_at_close:7d}  {pct(w.estimated_accuracy)} {pct(r.true)} "
              f"{100 * (w.estimated_accuracy - r.true):+7.2f} {pct(w.cbpe_accuracy)} {pct(w.mean_confidence)} "
              f"{pct(r.last_known)}     {pct(r.unlabeled_estimate)}     {pct(r.unlabeled_true)}")
    summary = errors_pp(rows)
    full = errors_pp(run(conf, correct, args.window_size, **settings))
    assert full["labeled_at_close_mean"] == 0.0  # labels one window late: none at close
    mae = summary["mae_pp"]
    assert mae is not None
    print(f"MAE (pp): hybrid {mae:.2f} (bias {summary['bias_pp']:+.2f}, worst "
          f"{summary['max_abs_error_pp']:.2f}; target < {TARGET_PP:.1f}: {'met' if mae < TARGET_PP else 'NOT met'}), "
          f"calibrated CBPE {fmt(summary['cbpe_mae_pp'])}, naive CBPE {fmt(summary['naive_cbpe_mae_pp'])}, "
          f"last known accuracy {fmt(summary['last_known_accuracy_mae_pp'])}")
    unlabeled_rows = float(np.mean([r.unlabeled for r in rows]))
    print(f"unlabeled part at close ({unlabeled_rows:.0f} rows a window on average): "
          f"CBPE {fmt(summary['unlabeled_part_mae_pp'])}, last known accuracy "
          f"{fmt(summary['unlabeled_part_last_known_mae_pp'])}, sampling noise ~{fmt(summary['unlabeled_part_noise_pp'])}")
    print(f"labels one window late ({args.window_size} rows, none known at close): hybrid = CBPE "
          f"{fmt(full['mae_pp'])}, last known accuracy {fmt(full['last_known_accuracy_mae_pp'])}")

    sweep = []
    if args.sweep:
        print("\nsweep (MAE in pp)  delay  calib size  hybrid  calibrated  unlabeled part  naive  last known")
        for delay in dict.fromkeys([args.label_delay, args.window_size]):
            for size in args.sweep:
                e = errors_pp(run(conf, correct, delay, **{**settings, "calibration_size": size}))
                sweep.append({"label_delay": delay, "calibration_size": size, **e})
                print(f"{'':16s}  {delay:6d}  {size:10d}  {fmt(e['mae_pp'], '6.2f')}  "
                      f"{fmt(e['cbpe_mae_pp'], '10.2f')}  {fmt(e['unlabeled_part_mae_pp'], '14.2f')}  "
                      f"{fmt(e['naive_cbpe_mae_pp'])}  {fmt(e['last_known_accuracy_mae_pp'], '10.2f')}")

    print(orjson.dumps({
        **summary,
        "full_delay_mae_pp": full["mae_pp"],
        "full_delay_last_known_accuracy_mae_pp": full["last_known_accuracy_mae_pp"],
        "windows": len(rows),
        "target_pp": TARGET_PP,
        "target_met": mae < TARGET_PP,
        "label_delay": args.label_delay,
        "settings": settings,
        "sweep": sweep,
    }).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

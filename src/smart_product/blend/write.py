"""The blend's files and its summary: oof/{name}/ (the format src/smart_product/oof.py owns, as a
head's), oof/{name}/weights.json (what was chosen and why: every procedure's held-out
score, the best head, the weights or the stacker, the logit adjustment), metrics.json, the
submission (submissions/{name}.csv and .parquet, checked against the data), and the printed lines."""

from __future__ import annotations

from pathlib import Path

from .. import oof as oof_files
from ..heads import scores
from ..submit import write_submission
from .choose import Choice
from .inputs import BlendInputs


def write_blend(inp: BlendInputs, choice: Choice, held: dict, seconds: float) -> dict:
    cfg, heads, y, has, classes = inp.cfg, inp.heads, inp.y, inp.has, inp.classes
    name = inp.bcfg.get("name", "blend")
    refit = scores(y[has], choice.oof[has].argmax(1))
    final, single, best_head = choice.record, choice.single, choice.best_head
    summary = {
        "heads": heads,
        "weights": dict(zip(heads, final.get("weights") or [])),
        "temperatures": dict(zip(heads, final.get("temperatures") or [])),
        "stacker": final.get("stacker"),
        "trials": int(inp.bcfg.get("trials", 100)),
        "chosen": choice.name,
        "logit_adjust": choice.tau,
        "oof_refit": refit,
        "oof_held_out": held[choice.name],
        "held_out": held,
        "best_single_head": {"name": best_head, **single[best_head]},
        "equal_weight_mean": choice.equal,
        "single_heads": single,
        "shift_guard": choice.guard,
        "shift": inp.head_shifts,
        "never_validated_rows": int((~has).sum()),
        "seconds": round(seconds, 2),
    }
    k = int(cfg.get("folds", {}).get("k", 5))
    per_fold = [{"fold": f, **scores(y[inp.folds == f], choice.oof[inp.folds == f].argmax(1))} for f in range(k)]
    arrays = dict(
        oof=choice.oof, test=choice.test, classes=classes, train_ids=inp.ref["train_ids"], test_ids=inp.ref["test_ids"]
    )
    metrics = {"head": name, "kind": "blend", "overall": refit, "folds": per_fold, **summary}
    oof_files.write(cfg["out_dir"], name, arrays, metrics, extra_json={"weights": summary})  # metrics.json last
    sub = write_submission(
        cfg["out_dir"], name, inp.ref["test_ids"], classes[choice.test.argmax(1)], cfg["data_dir"], inp.frames
    )
    print("\n".join(summary_lines(inp, summary, sub)))
    return summary


def summary_lines(inp: BlendInputs, summary: dict, sub: Path) -> list[str]:
    heads, chosen, tau, held = inp.heads, summary["chosen"], summary["logit_adjust"], summary["held_out"]
    best = summary["best_single_head"]
    calib = [
        f"  {h:<16} {r['metrics']['overall']['logloss_raw']:.4f} -> {r['metrics']['overall']['logloss']:.4f}"
        for h, r in zip(heads, inp.runs)
        if "logloss_raw" in r["metrics"].get("overall", {})
    ]
    lines = ["OOF log loss of the calibrated heads, before -> after the in-fold temperature:"] + calib if calib else []
    return lines + [
        f"blend of {len(heads)} heads ({summary['trials']} Optuna trials a search), OOF weighted F1 on "
        f"{int(inp.has.sum())} rows:",
        f"  best single head  {best['name']:<10} {best['weighted_f1']:.4f}",
        f"  equal-weight mean            {summary['equal_weight_mean']['weighted_f1']:.4f}",
        "  held out (fold k's rows scored by each procedure's choice on the other folds): "
        + ", ".join(f"{k} {v['weighted_f1']:.4f}" for k, v in held.items())
        + f" -> {chosen}",
        *(
            [
                "  shift guard (held out less the estimated OOF - test accuracy drop, without test labels): "
                + ", ".join(
                    f"{k} {v['estimated_test']:.4f}" + (f" ({v['estimated_gap']:+.4f})" if v["estimated_gap"] else "")
                    for k, v in summary["shift_guard"].items()
                )
            ]
            if summary.get("shift_guard")
            else []
        ),
        f"  blend ({chosen}), refit on all folds {summary['oof_refit']['weighted_f1']:.4f}   "
        + (
            "stacker over " + ", ".join((summary.get("stacker") or {}).get("heads") or heads)
            if chosen.startswith("stack")
            else "weights " + ", ".join(f"{h}={w:.2f}" for h, w in summary["weights"].items())
        ),
        f"  logit adjustment of the blend: tau {tau['tau']} (held out: {tau['held_out_without']:.4f} without, "
        f"{tau['held_out_with']:.4f} with tau chosen on the other folds)"
        if "held_out_with" in tau
        else "  logit adjustment of the blend: off",
        f"  submission: {sub} and {sub.with_suffix('.parquet')}",
    ]

"""Thin command line: `python -m smart_product STAGE [--config F] [--data DIR] [key=value ...]`.

Each stage reads the files the previous stage wrote; the Makefile strings them together.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .config import DEFAULT_CONFIG, ConfigError, load_config, make_command
from .data import DataError

log = logging.getLogger("smart_product")


def _demo_data(cfg, args):
    from .demo import make_demo_data

    demo = cfg.get("demo", {})
    make_demo_data(
        args.out or cfg["data_dir"],
        seed=int(demo.get("seed", 0)),
        n_train=int(demo.get("n_train", 2000)),
        test_frac=float(demo.get("test_frac", 1.0)),
        image_size=int(demo.get("image_size", 96)),
    )


def _validate(cfg, args):
    from .data import check_images, load_data

    train, test = load_data(cfg["data_dir"])
    for name, frame in (("train", train), ("test", test)):
        counts = check_images(frame, deep=True).status.value_counts().to_dict()
        print(f"{name}: {len(frame)} rows ok; images {counts}")


def _folds(cfg, args):
    from .folds import make_folds

    make_folds(cfg)


def _eda(cfg, args):
    from .eda import run_eda

    run_eda(cfg)


def _features(cfg, args):
    from .backbones import init_distributed
    from .features import feature_sets, make_features

    init_distributed()  # torchrun: DDP fine-tuning; a plain run stays one process
    done = make_features(cfg, args.only, fold=args.fold)
    return {**{n: {"cached": True} for n in feature_sets(cfg) if not args.only or n in args.only}, **done}


def _train(cfg, args):
    from .heads import train_heads
    from .report import make_report
    from .tracking import log_run

    metrics = train_heads(cfg, args.only, force=args.force, fold=args.fold)
    parts = {
        n: {"cached": True} if m.get("cached") else {"seconds": m.get("seconds"), "peak_rss_gib": m.get("peak_rss_gib")}
        for n, m in metrics.items()
    }
    if args.fold is not None:  # one fold's files; the report waits for the assembling run
        return parts
    t0 = time.time()
    report = make_report(cfg)
    log_run(cfg, metrics, report.parent)
    return {**parts, "report": {"seconds": round(time.time() - t0, 1)}}


def _report(cfg, args):
    from .report import make_report

    make_report(cfg)


def _tune(cfg, args):
    from .heads import tune_head

    if not args.only or len(args.only) != 1:
        raise ConfigError("tune needs one head: --only NAME (make tune HEAD=NAME)")
    tune_head(cfg, args.only[0], args.trials)


def _blend(cfg, args):
    from .blend import run_blend
    from .errors import make_errors, settings
    from .report import make_report

    parts, t0 = {}, time.time()
    run_blend(cfg)
    parts["blend"], t0 = {"seconds": round(time.time() - t0, 1)}, time.time()
    make_report(cfg)
    parts["report"], t0 = {"seconds": round(time.time() - t0, 1)}, time.time()
    if settings(cfg)["after_blend"]:
        try:  # a report: the submission is written; its failure is logged, not the stage's
            make_errors(cfg)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "errors report not written (%s: %s); `%s` retries it",
                type(exc).__name__,
                exc,
                make_command(cfg, "errors"),
            )
        parts["errors"] = {"seconds": round(time.time() - t0, 1)}
    return parts


def _after_blend(cfg):
    """The blend stage's last lines: the run's stage table, then the file to upload."""
    from .submit import submission_path
    from .timings import table

    print("\n".join(["", *table(cfg["out_dir"]), ""]))
    print(f"upload: {submission_path(cfg)} (product_id, predicted_category_id: the competition's format)")


def _errors(cfg, args):
    from .errors import make_errors

    make_errors(cfg, args.head)


def _score(cfg, args):
    import json
    from pathlib import Path

    from .submit import score_submission, submission_path

    sub = args.sub or str(submission_path(cfg, ".csv"))
    solution = args.solution or str(Path(cfg["data_dir"]) / "solution.csv")
    if not Path(solution).is_file():
        raise ConfigError(
            f"{solution}: no solution file (test labels) to score against; a competition scores the upload itself "
            f"(`{make_command(cfg, 'validate-sub')}` checks it)"
        )
    print(json.dumps(score_submission(sub, solution), indent=2))


def _validate_sub(cfg, args):
    from pathlib import Path

    from .submit import check_against_data, read_submission, submission_path

    path = args.sub or str(submission_path(cfg))  # the run's upload file
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no submission there (`{make_command(cfg, 'blend')}` writes it; or SUB=file)")
    sub = read_submission(path)
    check_against_data(sub, cfg["data_dir"], path)
    print(f"{path}: valid for {cfg['data_dir']} ({len(sub)} rows, every test id once, only train categories)")


def _clean(cfg, args):
    """The generated outputs of OUT (folds, features, oof, submissions, reports); data/ and .gitkeep stay."""
    import shutil
    from pathlib import Path

    out = Path(cfg["out_dir"])
    gone = 0
    for sub in ("folds", "features", "oof", "submissions", "reports", "bench", "resplit"):
        for p in sorted((out / sub).glob("*")) if (out / sub).is_dir() else []:
            if p.name != ".gitkeep":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone += 1
    print(f"clean: {gone} generated files and folders removed under {out}")


def _ablation(cfg, args):
    from .ablation import run_ablation

    run_ablation(cfg)


def _bench(cfg, args):
    from .bench import run_bench

    run_bench(cfg)


def _bench_images(cfg, args):
    from .bench import run_image_bench

    run_image_bench(cfg)


STAGES = {
    "demo-data": (_demo_data, "write the built-in demo data set (competition layout)"),
    "validate": (_validate, "check the data directory and every image; print counts"),
    "folds": (_folds, "write folds/folds.csv"),
    "eda": (_eda, "write reports/eda/eda.md and plots"),
    "features": (_features, "write features/{set}/ (cached)"),
    "train": (_train, "fit every head per fold -> oof/{head}/, then the OOF report"),
    "tune": (_tune, "Optuna search of one head's params on OOF F1 (resumable SQLite study)"),
    "report": (_report, "OOF report over oof/* -> oof/report.md + plots"),
    "blend": (_blend, "Optuna-weighted blend -> oof/blend/, submissions/blend.csv + .parquet"),
    "errors": (_errors, "where the model errs: confused pairs, contact sheets, label-noise suspects -> oof/errors/"),
    "score": (_score, "local leaderboard: score --sub FILE against --solution FILE"),
    "validate-sub": (_validate_sub, "check a submission file (default: the run's upload file) against the data"),
    "clean": (_clean, "remove OUT's generated outputs (folds, features, oof, submissions, reports)"),
    "ablation": (_ablation, "each component on / off from the OOF files (no refit) -> {out}/bench/ablation.*"),
    "bench": (_bench, "whole pipeline + peer baseline on DATA; timings, RSS -> {out}/bench/results.*"),
    "bench-images": (
        _bench_images,
        "image fine-tuning + embedding, per-image decoding vs decode-once -> {out}/bench/images.*",
    ),
}


# stages whose seconds and peak RSS go to reports/timings.json (timings.py); the blend prints the table
TIMED = {"demo-data", "folds", "features", "train", "eda", "blend", "errors", "report"}

# stages that read no head or feature settings: no config to pick (the demo's values do)
NO_HEADS = {"demo-data", "validate", "score", "validate-sub", "clean"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="smart_product", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=sorted(STAGES), help="; ".join(f"{k}: {v[1]}" for k, v in STAGES.items()))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. folds.k=10")
    parser.add_argument(
        "--config", default="auto", help="experiment config, or auto (default): picked from the data and the machine"
    )
    parser.add_argument("--data", help="data directory in the competition layout (DATA=...)")
    parser.add_argument("--out", help="output directory (demo-data only)")
    parser.add_argument("--only", nargs="+", help="features/train: only these sets/heads")
    parser.add_argument("--head", help="errors: one head's OOF instead of the blend's")
    parser.add_argument("--sub", help="score/validate-sub: submission file (.csv or .parquet)")
    parser.add_argument("--solution", help="score: solution file (product_id, category_id)")
    parser.add_argument("--force", action="store_true", help="train: refit heads even if cached")
    parser.add_argument(
        "--fold",
        help="features/train: one fold as its own job (k, -1 = full fit; features "
        "also 'shared' = the label-free sets); a run without it assembles",
    )
    parser.add_argument("--trials", type=int, default=20, help="tune: total number of trials")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    t0 = time.time()
    try:
        config = DEFAULT_CONFIG if args.config == "auto" and args.stage in NO_HEADS else args.config
        cfg = load_config(config, args.overrides, args.data)
        parts = STAGES[args.stage][0](cfg, args)
        if args.stage in TIMED and args.fold is None:  # a FOLD=k job is one of several: not the stage's time
            from .memory import peak_rss_gib
            from .timings import record

            record(cfg["out_dir"], args.stage, time.time() - t0, peak_rss_gib(), parts)
        if args.stage == "blend":
            _after_blend(cfg)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s done in %.1fs", args.stage, time.time() - t0)
    return 0

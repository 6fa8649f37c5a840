"""Thin command line: `python -m smart_product STAGE [--config F] [--data DIR] [key=value ...]`.

Each stage reads the files the previous stage wrote; the Makefile strings them together.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from .config import ConfigError, load_config
from .data import DataError

log = logging.getLogger("smart_product")


def _demo_data(cfg, args):
    from .demo import make_demo_data

    demo = cfg.get("demo", {})
    make_demo_data(args.out or cfg["data_dir"], seed=int(demo.get("seed", 0)),
                   n_train=int(demo.get("n_train", 2000)), image_size=int(demo.get("image_size", 96)))


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
    from .features import make_features

    make_features(cfg, args.only)


STAGES = {
    "demo-data": (_demo_data, "write the built-in demo data set (competition layout)"),
    "validate": (_validate, "check the data directory and every image; print counts"),
    "folds": (_folds, "write folds/folds.csv"),
    "eda": (_eda, "write reports/eda/eda.md and plots"),
    "features": (_features, "write features/{set}/ (cached)"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="smart_product", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=sorted(STAGES), help="; ".join(f"{k}: {v[1]}" for k, v in STAGES.items()))
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. folds.k=10")
    parser.add_argument("--config", help="experiment config (default configs/cpu.yaml)")
    parser.add_argument("--data", help="data directory in the competition layout (DATA=...)")
    parser.add_argument("--out", help="output directory (demo-data only)")
    parser.add_argument("--only", nargs="+", help="features: only these sets")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    try:
        cfg = load_config(args.config, args.overrides, args.data)
        STAGES[args.stage][0](cfg, args)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s done in %.1fs", args.stage, time.time() - t0)
    return 0

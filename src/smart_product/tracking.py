"""Optional run tracking (the seed's habit): config, per-fold metrics and report plots to wandb.

Enabled by `tracking.wandb: true`. `tracking.mode: offline` (the default) writes the run under
`{out_dir}/wandb/` with no network; `wandb sync` uploads it later. Online mode needs a login.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def log_run(cfg: dict, metrics: dict, report_dir: Path) -> str | None:
    """Log one `make train` run; returns the run's local directory, or None when disabled."""
    tcfg = cfg.get("tracking") or {}
    if not tcfg.get("wandb"):
        return None
    import wandb

    run = wandb.init(
        project=tcfg.get("project", "smart-product"),
        name=tcfg.get("name") or cfg.get("name"),
        mode=tcfg.get("mode", "offline"),
        dir=str(Path(cfg["out_dir"])),
        config=cfg,
        reinit="finish_previous",
    )
    for head, m in metrics.items():
        for f in m["folds"]:
            run.log(
                {f"{head}/fold": f["fold"], **{f"{head}/{k}": f[k] for k in ("weighted_f1", "macro_f1", "accuracy")}}
            )
        for k, v in m["overall"].items():
            run.summary[f"{head}/oof_{k}"] = v
    for png in sorted(Path(report_dir).glob("*.png")):
        run.log({f"report/{png.stem}": wandb.Image(str(png))})
    run.finish()
    log.info("tracking: wandb run logged to %s", run.dir)
    return run.dir

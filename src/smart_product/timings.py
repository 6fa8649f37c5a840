"""Where a run's time goes: the one owner of OUT/reports/timings.json and timings.md.

Every stage run through the CLI (`make folds`, `make features`, ...) records its wall seconds and
peak RSS (the process's and its children's), and the parts it timed: each feature set computed and
each head fitted in that run (a cached set or head took no time and is listed as cached). A stage's
record replaces its previous one, so after `make all` the file holds that run's stages. The blend
stage prints the table before its last line (the file to upload):

    | stage | set or head | seconds | peak RSS GiB |
"""

from __future__ import annotations

import json
import time
from pathlib import Path

# the order `make all` runs them; other stages (bench, errors, ...) follow in the order they ran
ORDER = ("demo-data", "folds", "features", "train", "eda", "blend")


def path(out_dir) -> Path:
    return Path(out_dir) / "reports" / "timings.json"


def read(out_dir) -> dict:
    p = path(out_dir)
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def record(out_dir, stage: str, seconds: float, peak_gib: float, parts: dict | None = None) -> None:
    """Replace `stage`'s record: its seconds, peak RSS and parts ({name: {"seconds", "peak_rss_gib",
    "cached"}}), with the time it finished."""
    runs = read(out_dir)
    runs.pop(stage, None)
    runs[stage] = {
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(float(seconds), 1),
        "peak_rss_gib": round(float(peak_gib), 2),
        "parts": parts or {},
    }
    p = path(out_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(runs, indent=2))


def table(out_dir) -> list[str]:
    """The Markdown table of the recorded stages (make all's order first), each stage's parts under
    it, slowest first; written to reports/timings.md too."""
    runs = read(out_dir)
    if not runs:
        return []
    stages = [s for s in ORDER if s in runs] + [s for s in runs if s not in ORDER]
    total = sum(runs[s]["seconds"] for s in stages if s in ORDER)
    lines = [
        f"Where the time went (reports/timings.json; each stage's last run, finished {runs[stages[-1]]['finished']}):",
        "",
        "| stage | set or head | seconds | peak RSS GiB |",
        "|---|---|---|---|",
    ]
    for s in stages:
        r = runs[s]
        lines.append(f"| {s} | | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} |")
        parts = sorted(r.get("parts", {}).items(), key=lambda kv: -(kv[1].get("seconds") or 0))
        for name, p in parts:
            if p.get("cached"):
                lines.append(f"| | {name} | cached | |")
            else:
                peak = p.get("peak_rss_gib")
                lines.append(f"| | {name} | {p.get('seconds') or 0:.1f} | {'' if peak is None else f'{peak:.2f}'} |")
    lines.append(f"| **make all stages** | | **{total:.1f}** ({total / 60:.1f} min) | |")
    (Path(out_dir) / "reports" / "timings.md").write_text("\n".join(lines) + "\n")
    return lines

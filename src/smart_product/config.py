"""Experiment configs: one YAML file per experiment under configs/, overridable from the CLI.

A config may name a `base:` file whose values it overrides (deep merge), so `gpu.yaml` only
says what differs from `cpu.yaml`. Command-line overrides are `key.sub=value` strings parsed as
YAML scalars (`folds.k=10`, `data_dir=../data`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "cpu.yaml"  # load_config(None): the demo's config
DEMO_DATA = REPO / "data" / "demo"  # the built-in demo data (make demo-data)


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = cfg.pop("base", None)
    if base:
        cfg = deep_merge(_read_yaml((path.parent / base).resolve()), cfg)
    return cfg


def apply_override(cfg: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    node = cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data_dir: str | None = None
) -> dict:
    """Read a config file, apply `key=value` overrides and the data directory (DATA=...).

    `path` "auto" (`make`'s default) picks a shipped config from the data and the machine (auto.py).
    Outputs go to `out_dir`: the config's (the repository for the built-in demo) unless DATA names
    another catalogue, whose outputs then default to runs/{its folder's name}: the demo's and a
    catalogue's folds/, features/, oof/ and submissions/ never meet. `images: off` (IMAGES=off) makes
    a text-only run."""
    overrides = list(overrides or [])
    data = Path(data_dir).resolve() if data_dir else None
    auto = str(path) == "auto"
    if auto:
        from .auto import auto_config

        path = REPO / "configs" / f"{auto_config(data or DEMO_DATA).name}.yaml"
    path = Path(path) if path else DEFAULT_CONFIG
    cfg = _read_yaml(path)
    cfg.setdefault("name", path.stem)
    cfg["config_file"] = "auto" if auto else str(path)
    for item in overrides:
        apply_override(cfg, item)
    cfg.setdefault("data_dir", "data/demo")
    # paths inside a config are relative to the repository; DATA=... is relative to where you are
    cfg["data_dir"] = str(data if data else resolve(cfg["data_dir"]))
    by_hand = any(o.split("=", 1)[0].strip() == "out_dir" for o in overrides)
    if data and data != DEMO_DATA and not by_hand and str(cfg.get("out_dir", ".")).rstrip("/") == ".":
        cfg["out_dir"] = str(Path("runs") / data.name)  # a catalogue's outputs apart from the demo's
    cfg.setdefault("out_dir", ".")
    cfg["out_dir"] = str(resolve(cfg["out_dir"]))
    images = str(cfg.get("images", "auto")).lower()
    if images in ("off", "false", "0", "none", "no"):
        cfg["images"] = "off"
        for opts in ((cfg.get("features") or {}).get("sets") or {}).values():
            if (opts or {}).get("kind") == "image":  # in the set's options: its cache key changes with it
                opts["images"] = "off"
        (cfg.setdefault("folds", {}).setdefault("dups", {}))["image_hamming"] = None
    elif images != "auto":
        raise ConfigError(f"images={cfg.get('images')!r}: auto (read the photos) or off (a text-only run)")
    return cfg


def make_command(cfg: dict, target: str) -> str:
    """The `make` line that runs `target` on this config's data and outputs (in error messages)."""
    parts = [f"make {target}"]
    if Path(cfg["data_dir"]).resolve() != DEMO_DATA:
        parts.append(f"DATA={cfg['data_dir']}")
    if Path(cfg["out_dir"]).resolve() != REPO:
        parts.append(f"OUT={cfg['out_dir']}")
    if cfg.get("config_file", "auto") != "auto":
        parts.append(f"CONFIG={cfg['config_file']}")
    if cfg.get("images") == "off":
        parts.append("IMAGES=off")
    return " ".join(parts)


def resolve(path: str | Path) -> Path:
    """Relative paths in configs are relative to the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO / p)


def n_cpus() -> int:
    """Cores this process may use (respects affinity/cgroup pinning where the OS tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def n_workers(requested=None) -> int:
    """Data-loading worker processes: `requested`, else one a core but one, at most 16."""
    if requested is not None:
        return int(requested)
    return min(16, max(0, n_cpus() - 1))


def config_hash(section: Any) -> str:
    """Stable short hash of a config section (cache keys)."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]

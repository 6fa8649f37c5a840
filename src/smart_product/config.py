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
DEFAULT_CONFIG = REPO / "configs" / "cpu.yaml"


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
    """Read a config file, apply `key=value` overrides and the data directory (DATA=...)."""
    path = Path(path) if path else DEFAULT_CONFIG
    cfg = _read_yaml(path)
    cfg.setdefault("name", path.stem)
    for item in overrides or []:
        apply_override(cfg, item)
    cfg.setdefault("data_dir", "data/demo")
    cfg.setdefault("out_dir", ".")
    # paths inside a config are relative to the repository; DATA=... is relative to where you are
    cfg["data_dir"] = str(Path(data_dir).resolve() if data_dir else resolve(cfg["data_dir"]))
    cfg["out_dir"] = str(resolve(cfg["out_dir"]))
    return cfg


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

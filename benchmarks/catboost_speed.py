"""CatBoost MultiClass cost at the competition's shape: seconds an iteration, GPU and/or CPU.

    python benchmarks/catboost_speed.py [--classes 864] [--rows 72760] [--dim 64] [--depth 6]

Random rows shaped like one ozon fold after PCA (72,760 x 64, 864 classes). Measured 2026-11-25:
1.47 s an iteration on one H100, 15.3 s on its 16 CPU cores, 78 s on 2 CPU cores
(docs/results.md, "Competition scale: ozon")."""

import argparse
import time

import numpy as np
from catboost import CatBoostClassifier

p = argparse.ArgumentParser()
p.add_argument("--classes", type=int, default=864)
p.add_argument("--rows", type=int, default=72_760)
p.add_argument("--dim", type=int, default=64)
p.add_argument("--depth", type=int, default=6)
p.add_argument("--gpu-iterations", type=int, default=60)
p.add_argument("--cpu-iterations", type=int, default=3)
args = p.parse_args()

rng = np.random.default_rng(0)
k = args.classes
y = np.concatenate([np.arange(k), rng.integers(0, k, args.rows - k)])
X = (rng.normal(size=(args.rows, args.dim)) + np.eye(k, args.dim)[y] * 2).astype(np.float32)
try:
    import torch

    gpu = torch.cuda.is_available()
except ImportError:
    gpu = False
runs = ([("GPU", args.gpu_iterations)] if gpu else []) + [("CPU", args.cpu_iterations)]
for task, iterations in runs:
    model = CatBoostClassifier(
        loss_function="MultiClass",
        iterations=iterations,
        learning_rate=0.2,
        depth=args.depth,
        task_type=task,
        verbose=0,
        allow_writing_files=False,
    )
    t0 = time.time()
    model.fit(X, y)
    s = time.time() - t0
    print(
        f"catboost {task}: {iterations} iterations in {s:.1f}s = {s / iterations:.2f} s/iteration "
        f"({args.rows} rows x {args.dim} dims, {k} classes, depth {args.depth})",
        flush=True,
    )

"""Cluster quality of folds/dups.parquet, with labels used only to check it (never by the pipeline).

    python benchmarks/dup_purity.py DATA_DIR RUN_DIR     # e.g. ../shared/data/fashion runs/bench-fashion-xl

Prints the rows in clusters of 2+, the share of them in their cluster's majority class, the share
of pure clusters and the largest cluster. Test labels come from DATA_DIR/solution.csv.
"""

import sys

import pandas as pd

data, run = sys.argv[1], sys.argv[2]
d = pd.read_parquet(f"{run}/folds/dups.parquet")
labels = (
    pd.concat(
        [
            pd.read_parquet(f"{data}/train.parquet", columns=["product_id", "category_id"]),
            pd.read_csv(f"{data}/solution.csv"),
        ]
    )
    .set_index("product_id")
    .category_id
)
d["y"] = labels.reindex(d.product_id).to_numpy()
size = d.groupby("cluster").y.transform("size")
m = d[size > 1]
majority = m.groupby("cluster").y.agg(lambda s: s.value_counts().iloc[0]).sum()
print(
    f"rows in clusters {len(m)}, clusters {m.cluster.nunique()}, rows in their cluster's majority class "
    f"{majority / max(len(m), 1):.3f}, pure clusters {(m.groupby('cluster').y.nunique() == 1).mean():.3f}, "
    f"largest {int(size.max())}"
)

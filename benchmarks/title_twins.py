"""How often do listings with the same title carry different categories? A floor under the error
of any model that reads the title alone (`make eda` reports the same; this adds a run's blend).

    python benchmarks/title_twins.py --data ../shared/data/ozon [--out runs/ozon]

Titles are compared after dups.normalise (case, punctuation and spacing ignored). Every train
row whose title other train rows share ("twins") is predicted by the majority category of its
twins (leave one out; ties go to the smallest category id); the accuracy of that rule is printed,
with the same for twins from the same shop (smart_product.eda.title_twins). With --out (a finished run), the blend's OOF
accuracy on the rows with and without a twin is printed beside it. The labels are only read,
never used to choose anything.
"""

import argparse
import json

import numpy as np
import pandas as pd

from smart_product.data import ID, TARGET, load_split
from smart_product.eda import title_twins


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", help="a finished run folder (oof/blend/) to compare with")
    a = ap.parse_args()
    train = load_split(a.data, "train")
    res, has_twin = title_twins(train)
    if a.out:
        from smart_product.oof import load as load_oof

        r = load_oof(a.out, "blend")
        pred = pd.Series(r["classes"][np.nan_to_num(r["oof"]).argmax(1)], index=r["train_ids"])
        ok = pd.Series(~np.isnan(r["oof"]).any(1), index=r["train_ids"])
        ids = train[ID].to_numpy()
        valid = ok.reindex(ids, fill_value=False).to_numpy()
        right = pred.reindex(ids).to_numpy() == train[TARGET].to_numpy()
        for name, m in (
            ("blend_oof_accuracy_twins", valid & has_twin),
            ("blend_oof_accuracy_others", valid & ~has_twin),
        ):
            res[name] = round(float(right[m].mean()), 4) if m.any() else None
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

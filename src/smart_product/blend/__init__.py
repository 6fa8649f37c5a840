"""Stage `blend`: the heads' OOF probabilities -> the chosen procedure -> the submission.

    run_blend (stage.py): check -> score the procedures held out -> choose -> adjust -> write

Every procedure is scored out of fold before the choice: fold k's rows by its choice made on the
other folds' OOF rows (for the stacker, its cross-fit OOF). The best by that held-out score is
chosen if its refit on all folds is also no worse than the best single head; it is refit and
applied to the test rows under the conditions its OOF rows had (each fold model's test
probabilities). Writes oof/{name}/ (as a head does), oof/{name}/weights.json and the submission.

Where things are:

- stage.py       `run_blend`: the stage, its five steps in one screen
- inputs.py      `BlendInputs`: the heads' files and the data, read and checked once a run
- procedures.py  the table of procedures (`procedures`), each held out, then refit: the weighted
                 searches (Optuna), the best single head, the stacker with and without group evidence
- weights.py     the weighted searches' parts: `combine`, `search_weights`, `subsample`,
                 `fold_splits`, `out_of_fold`, `fold_tempered_test`
- stack.py       the stacker (`Stacker`, `cross_fit`), its group evidence and row side information
- choose.py      the choice rule (`choose`) and the logit adjustment (`adjust`, `prior_correction`)
- write.py       the files, the submission and the printed summary
"""

from __future__ import annotations

from .choose import prior_correction
from .stage import run_blend
from .weights import combine, fold_splits, fold_tempered_test, out_of_fold, search_weights, subsample

__all__ = [
    "run_blend",
    "combine",
    "search_weights",
    "subsample",
    "fold_splits",
    "out_of_fold",
    "fold_tempered_test",
    "prior_correction",
]

"""Stage `blend` (`run_blend`): from the heads' OOF files to the submission, in five steps."""

from __future__ import annotations

import time

from ..heads import scores
from .choose import adjust, choose
from .inputs import BlendInputs
from .procedures import procedures
from .write import write_blend


def run_blend(cfg: dict) -> dict:
    """Check the heads' files and the data (inputs.py), score every procedure held out (fold k's
    rows by its choice on the other folds; procedures.py), choose (held out first, then no worse
    than the best head) and logit-adjust (choose.py), write the files and the submission
    (write.py). Returns the summary written to oof/{name}/weights.json."""
    t0 = time.time()
    inp = BlendInputs.load(cfg)
    table = procedures(inp)
    held = {name: scores(inp.y[inp.has], proc.held_out()[inp.has]) for name, proc in table.items()}
    choice = adjust(choose(table, held, inp), inp)
    return write_blend(inp, choice, held, time.time() - t0)

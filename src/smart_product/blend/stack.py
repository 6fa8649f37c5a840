"""The stacker: a level-2 model over the heads' OOF probabilities, two of the blend's procedures
(`stack`, `stack_groups`: procedures.py).

Scales to ~900 classes by scoring (row, candidate class) pairs with one small model shared by
all classes, instead of one weight per head x class x class:

- candidates: each row's `top` classes by the heads' mean probability (the true class is among
  them for ~99% of rows; the log says how many);
- pair features, per head: log P, log P minus the head's top log P, 1 / (1 + rank among the
  candidates), top-1 flag; the class's log prior (from the level-2 training rows); log of the
  heads' mean; each head's log P times each row meta-feature (has_image, log title length,
  log description length, each head's confidence), so trust can depend on the row; for each
  `groups` column (e.g. shop_id: a shop sells few categories), the smoothed log P(class | group)
  and log(1 + group size), counted on level-2 training rows of *other folds* than the row's own
  (GroupPrior), so a row's group evidence never includes its own label;
- model: score = linear + one small ReLU layer over the standardised features, a softmax over
  the row's candidates, cross-entropy, Adam (torch; CPU is enough, it is small), early-stopped on
  an inner split; `bags` nets on different inner splits averaged (`auto`: more nets on fewer rows).

Fold discipline (docs/folds.md, the fold rule one level up): stacker k, fit only on OOF rows of the folds != k,
predicts fold k's rows. A stacker must see at prediction time inputs of the kind it was fit on,
or it can lose to its own best input head while its OOF says it wins:
- the heads' probabilities: an OOF row's come from one fold model that never saw it, so the test
  rows are scored fold by fold, stacker k over fold k's models' test probabilities (the heads'
  test_folds.npy), and the K stacked outputs are averaged; never the heads' fold mean (smoother,
  less confident) nor a full fit;
- the group evidence: a training row's counts leave its own fold out, so a predicted row's
  (fold k's rows, test rows) are counted with each training fold left out in turn, and the
  stacked outputs averaged over those folds: the same number of counted rows as in the fit.
A row outside the candidates gets probability 0.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)
EPS = 1e-6


def candidates(probs: list[np.ndarray], top: int) -> np.ndarray:
    """n x top class indices: the classes with the highest mean probability over the heads."""
    mean = sum(probs) / len(probs)
    top = min(top, mean.shape[1])
    return np.argpartition(-mean, top - 1, axis=1)[:, :top]


def pair_features(
    probs: list[np.ndarray],
    cand: np.ndarray,
    meta: np.ndarray,
    log_prior: np.ndarray,
    group_feats: list[np.ndarray] = (),
) -> np.ndarray:
    """n x top x F float32 features of each (row, candidate class) pair; `group_feats`: n x top
    arrays (GroupPrior.features), appended as they are."""
    rows = np.arange(len(cand))[:, None]
    feats, lps = [], []
    for P in probs:
        lp = np.log(np.clip(P[rows, cand], EPS, 1.0)).astype(np.float32)
        top = np.log(np.clip(P.max(1), EPS, 1.0)).astype(np.float32)[:, None]
        rank = np.argsort(np.argsort(-lp, 1, kind="stable"), 1, kind="stable")
        feats += [lp, lp - top, 1.0 / (1.0 + rank), (rank == 0).astype(np.float32)]
        lps.append(lp)
    mean = sum(P[rows, cand] for P in probs) / len(probs)
    feats += [np.log(np.clip(mean, EPS, 1.0)), log_prior[cand]]
    for lp in lps:
        feats += [lp * meta[:, [j]] for j in range(meta.shape[1])]
    feats += list(group_feats)
    return np.stack(feats, -1).astype(np.float32)


class GroupPrior:
    """Class counts per group (e.g. per shop) of the level-2 training rows, kept per fold so that
    a training row's evidence leaves out its own fold (its own label included); the stacker counts
    a predicted row's with one training fold left out (`row_folds`), each in turn. Features of
    (row, candidate c) for a group g of n_g counted rows:
    log((count[g, c] + alpha * prior[c]) / (n_g + alpha)) and log(1 + n_g). A group never seen
    (or the code -1) gives the class prior and 0."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, codes: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int, prior: np.ndarray):
        self.n_classes, self.prior = n_classes, prior.astype(np.float64)
        ok = codes >= 0
        self.folds = np.unique(folds)
        # (group, class) pair counts and group sizes, per fold: sorted keys + counts
        self.pairs = {
            f: np.unique(codes[ok & (folds == f)] * n_classes + y[ok & (folds == f)], return_counts=True)
            for f in self.folds
        }
        self.sizes = {f: np.unique(codes[ok & (folds == f)], return_counts=True) for f in self.folds}
        return self

    @staticmethod
    def _lookup(table, keys):
        k, c = table
        if not len(k):
            return np.zeros(keys.shape, np.float64)
        i = np.clip(np.searchsorted(k, keys), 0, len(k) - 1)
        return np.where(k[i] == keys, c[i], 0).astype(np.float64)

    def features(self, codes: np.ndarray, cand: np.ndarray, row_folds: np.ndarray | None = None) -> list[np.ndarray]:
        """Two n x top float32 arrays; row_folds (training rows): leave out each row's own fold."""
        keys = codes[:, None].astype(np.int64) * self.n_classes + cand
        cnt = sum(self._lookup(self.pairs[f], keys) for f in self.folds)
        size = sum(self._lookup(self.sizes[f], codes) for f in self.folds)
        if row_folds is not None:
            for f in self.folds:
                own = row_folds == f
                if own.any():
                    cnt[own] -= self._lookup(self.pairs[f], keys[own])
                    size[own] -= self._lookup(self.sizes[f], codes[own])
        cnt[codes < 0], size[codes < 0] = 0, 0
        lp = np.log((cnt + self.alpha * self.prior[cand]) / (size[:, None] + self.alpha))
        return [lp.astype(np.float32), np.broadcast_to(np.log1p(size)[:, None], cand.shape).astype(np.float32)]


def row_meta(probs: list[np.ndarray], extra: np.ndarray | None) -> np.ndarray:
    """Row features that interact with the heads' scores: the caller's (has_image, text lengths)
    and each head's confidence (top probability)."""
    conf = np.stack([P.max(1) for P in probs], 1).astype(np.float32)
    return conf if extra is None else np.hstack([extra.astype(np.float32), conf])


class Stacker:
    def __init__(
        self,
        top: int = 20,
        hidden: int = 16,
        max_steps: int = 4000,
        lr: float = 0.01,
        batch_size: int = 1024,
        weight_decay: float = 1e-5,
        inner_frac: float = 0.1,
        patience: int = 8,
        seed: int = 0,
        groups: tuple[str, ...] | list[str] = (),
        group_alpha: float = 1.0,
        bags: int | str = 1,
        bag_rows: int = 100_000,
    ):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        if not (bags == "auto" or (isinstance(bags, int) and not isinstance(bags, bool) and bags >= 1)):
            raise ValueError(f"bags must be a whole number >= 1 or 'auto', not {bags!r}")

    def n_bags(self, n_rows: int) -> int:
        """Nets to average. `auto`: bag_rows // n_rows, between 1 and 5. Each net early-stops on
        its own inner split (inner_frac), which on a small catalogue is a few dozen rows and picks a noisy
        stopping point; averaging nets over several splits removes that noise. Cost grows with rows
        x nets, so the bound keeps a bagged small fit below one large fit (ozon: 1 net a fold fit)."""
        if self.bags != "auto":
            return int(self.bags)
        return int(np.clip(self.bag_rows // max(n_rows, 1), 1, 5))

    def _net(self, n_feat, seed):
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self, f, h):
                super().__init__()
                self.linear = nn.Linear(f, 1)
                self.mlp = nn.Sequential(nn.Linear(f, h), nn.ReLU(), nn.Linear(h, 1)) if h else None

            def forward(self, x):  # x: batch x top x F -> batch x top
                z = self.linear(x)
                return (z + self.mlp(x) if self.mlp is not None else z).squeeze(-1)

        torch.manual_seed(seed)
        return Net(n_feat, self.hidden)

    def _train(self, Xt, target, seed):
        """One net, early-stopped on an inner split (drawn with `seed`) of the level-2 training rows
        (never the rows it will predict): the right number of steps differs by 10x between 1,000
        and 70,000 rows. Returns (net, steps, best inner loss)."""
        import torch

        net = self._net(Xt.shape[-1], seed)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(seed)
        is_val = rng.random(len(Xt)) < self.inner_frac
        tr, va = torch.from_numpy(np.flatnonzero(~is_val)), torch.from_numpy(np.flatnonzero(is_val))
        every = max(25, min(200, len(tr) // self.batch_size))
        best, best_state, bad, step = np.inf, None, 0, 0
        while step < self.max_steps and bad < self.patience:
            perm = tr[torch.from_numpy(rng.permutation(len(tr)))]
            for s in range(0, len(perm), self.batch_size):
                net.train()
                b = perm[s : s + self.batch_size]
                loss = torch.nn.functional.cross_entropy(net(Xt[b]), target[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step % every == 0 and len(va):
                    net.eval()
                    with torch.no_grad():
                        v = torch.nn.functional.cross_entropy(net(Xt[va]), target[va]).item()
                    if v < best - 1e-4:
                        best, bad = v, 0
                        best_state = {k: t.clone() for k, t in net.state_dict().items()}
                    else:
                        bad += 1
                if step >= self.max_steps or bad >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net.eval()
        return net, step, best

    def _group_codes(self, groups: np.ndarray | None, n: int) -> np.ndarray | None:
        if not self.groups:
            return None
        if groups is None or groups.ndim != 2 or groups.shape != (n, len(self.groups)):
            raise ValueError(
                f"stacker: groups {list(self.groups)} need an n x {len(self.groups)} code array, "
                f"got {None if groups is None else groups.shape}"
            )
        return groups

    def fit(
        self,
        probs: list[np.ndarray],
        y: np.ndarray,
        n_classes: int,
        extra: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        chunk: int = 8192,
        groups: np.ndarray | None = None,
        folds: np.ndarray | None = None,
    ):
        """Fit on `rows` (indices or a mask; default all) of probs / y / extra. Features are built
        chunk by chunk from views of the heads' matrices: no copy of an n x classes matrix.
        groups: n x len(self.groups) int codes (-1: none); folds: each row's fold, so a training
        row's group evidence leaves its own fold out (default: 5 seeded random parts)."""
        import torch

        t0 = time.time()
        rows = np.arange(len(y)) if rows is None else (np.flatnonzero(rows) if rows.dtype == bool else rows)
        cnt = np.bincount(y[rows], minlength=n_classes).astype(np.float64) + 1.0
        self.log_prior = np.log(cnt / cnt.sum()).astype(np.float32)
        groups = self._group_codes(groups, len(y))
        if groups is not None:
            if folds is None:
                folds = np.random.default_rng(self.seed).integers(0, 5, len(y))
            self.group_priors = [
                GroupPrior(self.group_alpha).fit(groups[rows, g], y[rows], folds[rows], n_classes, cnt / cnt.sum())
                for g in range(groups.shape[1])
            ]
        meta = np.concatenate(
            [
                row_meta([P[rows[s : s + chunk]] for P in probs], None if extra is None else extra[rows[s : s + chunk]])
                for s in range(0, len(rows), chunk)
            ]
        )
        self.meta_mean, self.meta_std = meta.mean(0), meta.std(0) + 1e-6
        meta = (meta - self.meta_mean) / self.meta_std
        parts, targets = [], []
        for s in range(0, len(rows), chunk):
            r = rows[s : s + chunk]
            part = [P[r] for P in probs]
            cand = candidates(part, self.top)
            hit = cand == y[r][:, None]
            keep = hit.any(1)
            gf = (
                []
                if groups is None
                else [
                    f
                    for g, gp in enumerate(self.group_priors)
                    for f in gp.features(groups[r[keep], g], cand[keep], folds[r[keep]])
                ]
            )
            parts.append(
                pair_features([P[keep] for P in part], cand[keep], meta[s : s + chunk][keep], self.log_prior, gf)
            )
            targets.append(hit[keep].argmax(1))
        X = np.concatenate(parts)
        del parts
        self.recall = float(len(X) / max(len(rows), 1))
        flat = X.reshape(-1, X.shape[-1])
        self.mean, self.std = flat.mean(0), flat.std(0) + 1e-6
        X -= self.mean
        X /= self.std
        Xt = torch.from_numpy(X)
        target = torch.from_numpy(np.concatenate(targets))
        fits = [self._train(Xt, target, self.seed + b) for b in range(self.n_bags(len(rows)))]
        self.nets, self.steps, self.inner_loss = (list(v) for v in zip(*fits))
        self.seconds = round(time.time() - t0, 2)
        return self

    def predict_proba(
        self,
        probs: list[np.ndarray],
        extra: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        batch: int = 8192,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities of `rows` (indices or a mask; default all), len(rows) x classes; groups
        as in fit. Their evidence is counted as for a training row, one training fold left out,
        and the probabilities are averaged over the folds left out."""
        import torch

        n_classes = probs[0].shape[1]
        groups = self._group_codes(groups, len(probs[0]))
        rows = np.arange(len(probs[0])) if rows is None else (np.flatnonzero(rows) if rows.dtype == bool else rows)
        out = np.zeros((len(rows), n_classes), np.float32)
        left_out = [None] if groups is None else list(self.group_priors[0].folds)
        for s in range(0, len(rows), batch):
            r = rows[s : s + batch]
            part = [np.asarray(P[r], np.float32) for P in probs]
            cand = candidates(part, self.top)
            meta = (row_meta(part, None if extra is None else extra[r]) - self.meta_mean) / self.meta_std
            p = 0.0
            for f in left_out:
                gf = (
                    []
                    if f is None
                    else [
                        x
                        for g, gp in enumerate(self.group_priors)
                        for x in gp.features(groups[r, g], cand, np.full(len(r), f))
                    ]
                )
                X = torch.from_numpy(
                    ((pair_features(part, cand, meta, self.log_prior, gf) - self.mean) / self.std).astype(np.float32)
                )
                with torch.no_grad():
                    p = p + sum(torch.softmax(net(X), 1) for net in self.nets).numpy() / len(self.nets)
            np.put_along_axis(out[s : s + batch], cand, p / len(left_out), 1)
        return out


def make_stacker(params: dict) -> Stacker:
    """A Stacker from config `blend.stack` params; an unknown key is a config error, not a traceback."""
    from ..data import DataError

    try:
        return Stacker(**params)
    except (TypeError, ValueError) as exc:
        raise DataError(f"config blend.stack: {exc}") from None


def fold_test_probs(test_probs, k: int) -> list[np.ndarray]:
    """Fold k's models' test probabilities, one n_test x C matrix a head, from each head's
    K x n_test x C array (test_folds.npy); a head given as one n_test x C matrix serves every fold."""
    return [np.asarray(T[k] if T.ndim == 3 else T, np.float32) for T in test_probs]


def cross_fit(
    probs, test_probs, y, folds, has, n_classes, params, extra=None, extra_test=None, groups=None, groups_test=None
):
    """The stacker's OOF and test probabilities, one stacker a fold: stacker k is fit on the OOF
    rows of the other folds, predicts fold k's rows, and predicts the test rows from fold k's
    models' test probabilities (`test_probs`: per head K x n_test x C, the fold order of `folds`);
    the test rows get the mean of the K stackers' outputs. Returns (oof with NaN rows, test, info)."""
    from tqdm import tqdm

    from .shift import fold_model_shift, shift_summary

    t_all = time.time()
    oof = np.full((len(y), n_classes), np.nan, np.float32)
    test = np.zeros((len(test_probs[0]) if test_probs[0].ndim == 2 else test_probs[0].shape[1], n_classes), np.float32)
    ks = sorted(set(folds[has].tolist()))
    bad = [T.shape[0] for T in test_probs if T.ndim == 3 and T.shape[0] != len(ks)]
    if bad:
        from ..data import DataError

        raise DataError(
            f"stacker: heads hold {bad[0]} fold models' test probabilities, the folds are {len(ks)} "
            "(rerun `make train`)"
        )
    info, recall = [], []
    for i, k in enumerate(tqdm(ks, desc="stacker folds", mininterval=1)):
        t0, fit_rows, val_rows = time.time(), has & (folds != k), has & (folds == k)
        st = make_stacker(params).fit(probs, y, n_classes, extra, rows=fit_rows, groups=groups, folds=folds)
        oof[val_rows] = st.predict_proba(probs, extra, rows=val_rows, groups=groups)
        test_k = st.predict_proba(fold_test_probs(test_probs, i), extra_test, groups=groups_test)
        test += test_k / len(ks)
        recall.append(st.recall)
        info.append(
            {
                "fold": int(k),
                "candidate_recall": round(st.recall, 4),
                "nets": len(st.nets),
                "seconds": round(time.time() - t0, 2),
                **fold_model_shift(oof[val_rows], y[val_rows], test_k),  # shift.py
            }
        )
    seconds = round(time.time() - t_all, 1)
    log.info(
        "stacker: candidates hold the true class for %.1f%% of OOF rows; %d fold fits (%s net(s) each), each "
        "scoring its fold's rows and its fold models' test probabilities, in %.0fs",
        100 * np.mean(recall),
        len(ks),
        "/".join(str(n) for n in sorted({f["nets"] for f in info})),
        seconds,
    )
    return (
        oof,
        test,
        {
            "folds": info,
            "shift": shift_summary(info),
            "candidate_recall": round(float(np.mean(recall)), 4),
            "seconds": seconds,
            "test_from": "each fold's stacker over its fold models' test probabilities, averaged",
        },
    )


def row_side(cfg: dict, groups=(), frames=None) -> tuple:
    """The stacker's row side information: (extra, extra_test, groups, groups_test). extra:
    has_image, log(1 + title chars), log(1 + description chars); groups: group_codes of the
    `groups` specs (None when there are none). `frames`: the (train, test) frames with their text
    parsed, when the caller has read them; else each split is read here."""
    from ..data import load_split

    if frames is None:
        frames = [load_split(cfg["data_dir"], split) for split in ("train", "test")]
    extra = []
    for df in frames:
        cols = [df["has_image"].to_numpy(np.float32)]
        for c in ("title", "description"):
            if c in df.columns:
                cols.append(np.log1p(df[c].fillna("").astype(str).str.len().to_numpy(np.float32)))
        extra.append(np.stack(cols, 1))
    return (*extra, *group_codes(frames, groups))


def group_codes(frames, names) -> tuple[np.ndarray | None, np.ndarray | None]:
    """n x len(names) int64 codes of group specs for the train and test frames, one code space over
    both; a missing value is -1; (None, None) when names is empty. A spec is a column (shop_id),
    column:n (its first n words, lower case: "title:1") or a*b (a joint key: "shop_id*title:1")."""
    import pandas as pd

    from ..data import DataError

    if isinstance(names, str) or not isinstance(names or [], (list, tuple)):
        raise DataError(f'config blend.stack.groups: a list of group specs (e.g. [shop_id, "title:1"]), not {names!r}')
    names = list(names or [])
    if not names:
        return None, None
    out = [np.empty((len(f), len(names)), np.int64) for f in frames]

    def values(name):
        col, _, words = name.partition(":")
        if any(col not in f.columns for f in frames) or (words and not words.isdigit()):
            raise DataError(
                f"config blend.stack.groups: {name!r} is not a column, nor column:n (its first n "
                f"words), nor a*b of those; columns: {', '.join(frames[0].columns)}"
            )
        v = pd.concat([f[col] for f in frames], ignore_index=True)
        if words:
            v = v.fillna("").astype(str).str.lower().str.findall(r"\w+").str[: int(words)].str.join(" ")
            v = v.where(v != "")
        return v

    for j, name in enumerate(names):
        parts = [values(p) for p in str(name).split("*")]
        joint = parts[0].astype("string")
        for p in parts[1:]:
            joint = joint + "\x1f" + p.astype("string")  # NA in any part: NA
        codes, _ = pd.factorize(joint, use_na_sentinel=True)
        out[0][:, j], out[1][:, j] = codes[: len(frames[0])], codes[len(frames[0]) :]
    return out[0], out[1]

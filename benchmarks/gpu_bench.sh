#!/usr/bin/env bash
# The GPU path on a real catalogue, timed stage by stage (issue 13):
#   1. image throughput: the bare EfficientNet forward against the per-image and the decode-once
#      pipelines (benchmarks/image_throughput.py);
#   2. folds as jobs: `folds`, the label-free feature sets (`--fold shared`), then one job per fold
#      (`features --fold k` + `train --fold k`, k = 0..K-1 and -1, the full fit), each timed;
#   3. `bench` on the same OUT: it assembles the per-fold files (no refitting), blends, scores every
#      head and the blend on DATA/solution.csv, and fits the TF-IDF peers.
# Same as `make folds features FOLD=shared`, `make features train FOLD=$k` for each k, `make bench`.
#
#   bash benchmarks/gpu_bench.sh DATA [OUT] [CONFIG] [config overrides...]
#   N_IMG=8192 (images for the throughput bench; 0 skips it), PY=.venv/bin/python
set -uo pipefail
DATA=${1:?usage: gpu_bench.sh DATA [OUT] [CONFIG] [overrides...]}
OUT=${2:-runs/gpu-$(basename "$DATA")}
CONFIG=${3:-configs/gpu-offline.yaml}
shift $(( $# < 3 ? $# : 3 ))
PY=${PY:-.venv/bin/python}
N_IMG=${N_IMG:-8192}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
T="$OUT/gpu_bench_timings.tsv"
printf "step\tseconds\texit\n" > "$T"
SP=(-m smart_product)
ARGS=(--config "$CONFIG" --data "$DATA" "out_dir=$OUT" "$@")

step() {  # step NAME CMD...: run, time, record; a failing step is recorded and the script goes on
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$@"
  local rc=$?
  awk -v a="$t0" -v b="$EPOCHREALTIME" -v n="$name" -v rc="$rc" 'BEGIN{printf "%s\t%.1f\t%d\n", n, b - a, rc}' >> "$T"
  echo "== $name: exit $rc" >&2
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$N_IMG" -gt 0 ]; then
  size=$(PYTHONPATH=src $PY -c "from smart_product.config import load_config
print(load_config('$CONFIG', [a for a in sys.argv[1:]])['features']['sets']['image']['image_size'])" "$@")
  step throughput $PY benchmarks/image_throughput.py --data "$DATA" --n "$N_IMG" --size "$size" \
      --out "$OUT/throughput.json" 2>&1 | grep -v "it/s\]"
fi

K=$(PYTHONPATH=src $PY -c "from smart_product.config import load_config
print(load_config('$CONFIG', sys.argv[1:])['folds']['k'])" "$@")
step folds $PY "${SP[@]}" folds "${ARGS[@]}" -q
step "features shared" $PY "${SP[@]}" features "${ARGS[@]}" --fold shared -q
for k in $(seq 0 $((K - 1))) -1; do
  step "features fold $k" $PY "${SP[@]}" features "${ARGS[@]}" --fold "$k" -q
  step "train fold $k" $PY "${SP[@]}" train "${ARGS[@]}" --fold "$k" -q
done
# assemble + blend + score + peers (features and heads are cached: nothing is refitted)
step bench $PY "${SP[@]}" bench "${ARGS[@]}" bench.ablation=false 2>&1 | grep -v "it/s\]"
echo; cat "$T"
grep -h '"seconds"\|"rate_per_s"' "$OUT"/features/{image,text}/fold0/meta.json 2>/dev/null || true

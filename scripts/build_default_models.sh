#!/usr/bin/env bash
# Rebuild every default model bundle in resources/models/ from the public data, with cxr-train.
#
#   scripts/build_default_models.sh                       # everything, CPU recipe (~1.5 h on 2 busy cores)
#   scripts/build_default_models.sh --data-dir /data/cxr --runs /scratch/runs \
#       --train-flags "--accelerator gpu --devices 4 --image-size 224 --max-epochs 30 --max-time 00:02:00:00"
#   scripts/build_default_models.sh --steps "pneumonia cards"   # some steps only (later steps reuse earlier runs)
#
# Steps, in order (each one's recipe is configs/recipes/<step>.yaml):
#   data       manifests + seeded patient-level splits of every labelled set; the SSL manifest
#              (every image except each set's TEST patients) and one combined split file
#   ssl        reconstruction pre-training of the shared resnet18 encoder          -> ssl-encoder-resnet18
#   pneumonia  Kermany fine-tune from the SSL encoder; Youden on val; test with CIs -> pneumonia-kermany-resnet18
#   compare    SSL vs random initialisation, same recipe, same split, 10% of labels (model card numbers)
#   nih14      NIH-14 multi-label fine-tune from the SSL encoder                     -> nih14-resnet18
#   segment    report-conditioned U-Net (lungs, zones, TB lesions from boxes)       -> report-segmenter-resnet18
#   tb         image-level TB lesion score from the segmenter: threshold for 0.90 sensitivity on
#              validation TBX11K, localisation + sensitivity on test (no specificity: no negatives)
#   cards      model_card.md and notes for every bundle (configs/recipes/cards/*.yaml)
#
# --train-flags is appended to every training command, so it overrides the YAML recipes
# (flags beat --config). The held-out TEST splits are only read by the evaluate steps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${CXR_DATA_DIR:-$ROOT/../shared/data}"
RUNS="runs"
OUT="resources/models"
TRAIN_FLAGS="${TRAIN_FLAGS:---accelerator auto}"
EVAL_FLAGS="--bootstrap 1000 --seed 0"
STEPS="data ssl pneumonia compare nih14 segment tb cards"
SEED=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --train-flags) TRAIN_FLAGS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

cd "$ROOT"
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
R=configs/recipes
D="$RUNS/data"
mkdir -p "$D" "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
timed() {  # timed NAME CMD...: run, and record the wall time in $RUNS/walltime.tsv
  local name="$1"; shift
  local t0; t0=$(date +%s)
  "$@"
  echo -e "$name\t$(( $(date +%s) - t0 ))" >> "$RUNS/walltime.tsv"
}
# shellcheck disable=SC2086
train() { cxr-train "$@" $TRAIN_FLAGS; }

# ---------------------------------------------------------------- data
if want data; then
  log "manifests and splits from $DATA_DIR"
  for pair in nih14:nih14 kermany:pneumonia_kermany tbx11k:tbx11k covid:covid_ieee8023 shenzhen:shenzhen_sample; do
    adapter="${pair%%:*}"; folder="${pair#*:}"
    cxr-train data build --adapter "$adapter" --root "$DATA_DIR/$folder" --out "$D/$adapter.csv"
    cxr-train data split --manifest "$D/$adapter.csv" --out "$D/$adapter-splits.csv" --seed "$SEED"
  done
  python scripts/make_ssl_manifest.py --out "$D/ssl.csv" --split-out "$D/all-splits.csv" \
    "$D/nih14.csv:$D/nih14-splits.csv" "$D/kermany.csv:$D/kermany-splits.csv" \
    "$D/tbx11k.csv:$D/tbx11k-splits.csv" "$D/covid.csv:$D/covid-splits.csv" "$D/shenzhen.csv:$D/shenzhen-splits.csv"
fi

SSL="$RUNS/ssl-recon/bundle"

# ---------------------------------------------------------------- SSL encoder
if want ssl; then
  log "SSL reconstruction pre-training"
  timed ssl train pretrain recon --config $R/ssl-recon.yaml --manifest "$D/ssl.csv" --runs-dir "$RUNS" --name ssl-recon
  cxr-train export --bundle "$SSL" --out "$OUT/ssl-encoder-resnet18" --name ssl-encoder-resnet18 --version 0.1.0
fi

# ---------------------------------------------------------------- classifiers
# finetune_eval NAME MANIFEST SPLITS RECIPE EXPORT_NAME CAL_ARGS [extra finetune flags...]
finetune_eval() {
  local name="$1" manifest="$2" splits="$3" recipe="$4" export_name="$5" cal="$6"; shift 6
  timed "$name" train finetune --config "$recipe" --manifest "$manifest" --split-file "$splits" \
    --runs-dir "$RUNS" --name "$name" "$@"
  # shellcheck disable=SC2086
  timed "$name-calibrate" cxr-train calibrate --bundle "$RUNS/$name/bundle" --manifest "$manifest" --split val $cal
  # shellcheck disable=SC2086
  timed "$name-evaluate" cxr-train evaluate --bundle "$RUNS/$name/bundle" --manifest "$manifest" --split test \
    --out "$RUNS/$name/eval" $EVAL_FLAGS --gallery 2
  if [[ -n "$export_name" ]]; then
    cxr-train export --bundle "$RUNS/$name/bundle" --metrics "$RUNS/$name/eval/metrics.json" \
      --out "$OUT/$export_name" --name "$export_name" --version 0.1.0 --golden "${GOLDEN[@]}"
    mkdir -p "$OUT/$export_name/evaluation"
    cp "$RUNS/$name/eval/report.md" "$RUNS/$name/eval/"*.png "$OUT/$export_name/evaluation/"
  fi
}
GOLDEN=(resources/samples/nih_chest.png)

if want pneumonia; then
  log "pneumonia (Kermany) from the SSL encoder"
  finetune_eval pneumonia "$D/kermany.csv" "$D/kermany-splits.csv" $R/pneumonia.yaml \
    pneumonia-kermany-resnet18 "--method youden" --init "$SSL"
fi

if want compare; then
  log "SSL vs random initialisation at 10% of the Kermany labels"
  for init in ssl random; do
    src="$SSL"; [[ $init == random ]] && src=random
    timed "compare-$init" train finetune --config $R/compare.yaml --manifest "$D/kermany.csv" \
      --split-file "$D/kermany-splits.csv" --runs-dir "$RUNS" --name "compare-$init" --init "$src"
  done
  timed compare-paired python scripts/compare_inits.py --a "$RUNS/compare-ssl/bundle" --b "$RUNS/compare-random/bundle" \
    --manifest "$D/kermany.csv" --split-file "$D/kermany-splits.csv" --out "$RUNS/compare.json" --seed "$SEED"
fi

if want nih14; then
  log "NIH-14 from the SSL encoder"
  finetune_eval nih14 "$D/nih14.csv" "$D/nih14-splits.csv" $R/nih14.yaml nih14-resnet18 "--method youden" --init "$SSL"
fi

# ---------------------------------------------------------------- segmentation and TB
SEG_OUT="$OUT/report-segmenter-resnet18"
if want segment; then
  log "report-conditioned segmentation"
  timed segment train segment --config $R/segment.yaml --data-root "$DATA_DIR" --split-file "$D/all-splits.csv" \
    --encoder "$SSL" --runs-dir "$RUNS" --name segment
  cxr-train export --bundle "$RUNS/segment/bundle" --out "$SEG_OUT" --name report-segmenter-resnet18 --version 0.1.0
fi

if want tb; then
  log "TB lesion score from the segmenter"
  timed tb python scripts/tb_lesion_score.py --bundle "$SEG_OUT" --manifest "$D/tbx11k.csv" \
    --split-file "$D/tbx11k-splits.csv" --others "$D/nih14.csv:$D/nih14-splits.csv" --out "$RUNS/tb" --seed "$SEED"
fi

# ---------------------------------------------------------------- model cards
if want cards; then
  log "model cards"
  C=$R/cards
  [[ -d "$OUT/ssl-encoder-resnet18" ]] && python scripts/model_card.py "$OUT/ssl-encoder-resnet18" --notes $C/ssl-encoder.yaml \
    --extra-metrics "ssl_vs_random=$RUNS/compare.json"
  [[ -d "$OUT/pneumonia-kermany-resnet18" ]] && python scripts/model_card.py "$OUT/pneumonia-kermany-resnet18" \
    --notes $C/pneumonia.yaml --extra-metrics "ssl_vs_random=$RUNS/compare.json"
  [[ -d "$OUT/nih14-resnet18" ]] && python scripts/model_card.py "$OUT/nih14-resnet18" --notes $C/nih14.yaml
  [[ -d "$SEG_OUT" ]] && python scripts/model_card.py "$SEG_OUT" --notes $C/segment.yaml \
    --extra-metrics "tuberculosis_lesion_score=$RUNS/tb/tb_metrics.json" \
    --derived-findings "$RUNS/tb/derived_findings.json"
  du -sh "$OUT"
fi
log "done; wall times in $RUNS/walltime.tsv"

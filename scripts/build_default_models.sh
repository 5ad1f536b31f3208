#!/usr/bin/env bash
# Rebuild every default model bundle in resources/models/ from the public data, with cxr-train.
#
#   scripts/build_default_models.sh                       # everything, CPU recipe (about 3.5 h on 2 busy cores)
#   scripts/build_default_models.sh --data-dir /data/cxr --runs /scratch/runs \
#       --train-flags "--accelerator gpu --devices 4 --image-size 224 --max-epochs 30 --max-time 00:02:00:00"
#   scripts/build_default_models.sh --steps "pneumonia cards"   # some steps only (later steps reuse earlier runs)
#
# Steps, in order (each one's recipe is configs/recipes/<step>.yaml):
#   data       the one multi-source manifest with seeded patient-level splits (NIH split by patient
#              across nih14/ and nih14_extra/), the SSL manifest (every image but TEST patients), and
#              the TBX11K box manifest for localisation
#   ssl        reconstruction pre-training of the shared resnet18 encoder, 1 h at 128 px -> ssl-encoder-resnet18
#   chest      ONE chest model on every labelled source (NIH-14 findings, one Pneumonia finding from
#              children and adults, Abnormal; a film any source calls normal is negative for every
#              finding, other unlabelled findings masked; per-source loss weights), fine-tuned from
#              the current chest-resnet18 (CHEST_INIT; CHEST_INIT= starts from the SSL encoder at 160
#              then 224 px); per-label calibration (folded into the head), an age head and each
#              finding's validated population, thresholds from one false-alarm budget on validation;
#              held-out test with CIs                                              -> chest-resnet18
#              (CHEST_FINETUNE=0: no fine-tune, the CHEST_INIT weights calibrated again; 0.3.0 was built so)
#   localise   pointing game (TBX11K and NIH boxes) and ROAD faithfulness on true positives; then, with
#              the report segmenter, the lung-field study (dilation chosen on validation, test read once)
#   segment    report-conditioned U-Net (lungs, zones, TB lesions from boxes), finished at 256 px from
#              the current report-segmenter-resnet18 (SEG_INIT; SEG_INIT= trains at 128 px first) -> report-segmenter-resnet18
#   tb         TB lesion score from the segmenter: threshold for 0.85 sensitivity on validation TBX11K,
#              sensitivity + localisation on test, flag rate on held-out normals of every other source;
#              not validated -> a research overlay whose scale is the validation normals' scores
#   cards      model_card.md and notes for every bundle (configs/recipes/cards/*.yaml)
#
# --train-flags is appended to every training command, so it overrides the YAML recipes
# (flags beat --config). The held-out TEST splits are only read by the evaluate/localise/tb steps.
# Wall times of every step go to $RUNS/walltime.tsv and into the cards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${CXR_DATA_DIR:-$ROOT/../shared/data}"
RUNS="runs"
OUT="resources/models"
TRAIN_FLAGS="${TRAIN_FLAGS:---accelerator auto}"
EVAL_FLAGS="--bootstrap 1000 --seed 0"
STEPS="data ssl chest segment localise tb cards"
SEED=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --train-flags) TRAIN_FLAGS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
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
  log "multi-source manifest and splits from $DATA_DIR"
  python scripts/make_chest_manifest.py --data-dir "$DATA_DIR" --out "$D/chest.csv" --ssl-out "$D/ssl.csv" \
    --split-out "$D/all-splits.csv" --seed "$SEED" > "$D/chest-counts.json"
  cxr-train data build --adapter tbx11k --root "$DATA_DIR/tbx11k" --out "$D/tbx11k.csv"
  cxr-train data split --manifest "$D/tbx11k.csv" --out "$D/tbx11k-splits.csv" --seed "$SEED"  # = its rows in chest.csv
fi

SSL="$RUNS/chest-ssl/bundle"

# ---------------------------------------------------------------- SSL encoder
if want ssl; then
  log "SSL reconstruction pre-training (every image but the test patients)"
  timed ssl train pretrain recon --config $R/chest-ssl.yaml --manifest "$D/ssl.csv" --runs-dir "$RUNS" --name chest-ssl
  cxr-train export --bundle "$SSL" --out "$OUT/ssl-encoder-resnet18" --name ssl-encoder-resnet18 --version 0.2.0
fi

# ---------------------------------------------------------------- the chest model
GOLDEN=(resources/samples/nih_chest.png)
CHEST_INIT="${CHEST_INIT-$OUT/chest-resnet18}"   # fine-tune from these weights; "" = from the SSL encoder
CHEST="$RUNS/chest-finetune/bundle"
CHEST_FINETUNE="${CHEST_FINETUNE-1}"            # 0: keep CHEST_INIT's weights, calibrate them again (how 0.3.0 was made)
SCALING=auto
if want chest; then
  if [[ "$CHEST_FINETUNE" == 0 && -f "$CHEST_INIT/manifest.json" ]]; then
    log "chest model: the weights of $CHEST_INIT, calibrated again (no training)"
    rm -rf "$RUNS/chest-recal" && mkdir -p "$RUNS/chest-recal" && cp -r "$CHEST_INIT" "$RUNS/chest-recal/bundle"
    CHEST="$RUNS/chest-recal/bundle"
    SCALING=none   # its scores are calibrated already (folded into the head); thresholds, age head and population are new
  elif [[ -n "$CHEST_INIT" && -f "$CHEST_INIT/manifest.json" ]]; then
    log "chest model, fine-tune stage (224 px) from $CHEST_INIT: normal means normal, per-source loss weights"
    timed chest-finetune train finetune --config $R/chest-finetune.yaml --manifest "$D/chest.csv" \
      --split-file "$D/all-splits.csv" --runs-dir "$RUNS" --name chest-finetune --init "$CHEST_INIT"
  else
    log "chest model, stage 1 (160 px) from the SSL encoder"
    timed chest-160 train finetune --config $R/chest.yaml --manifest "$D/chest.csv" --split-file "$D/all-splits.csv" \
      --runs-dir "$RUNS" --name chest-160 --init "$SSL"
    log "chest model, stage 2 (224 px)"
    timed chest-224 train finetune --config $R/chest-224.yaml --manifest "$D/chest.csv" --split-file "$D/all-splits.csv" \
      --runs-dir "$RUNS" --name chest-224 --init "$RUNS/chest-160/bundle"
    CHEST="$RUNS/chest-224/bundle"
  fi
  # calibration per label (cross-validated ECE on validation), the age head and each finding's validated
  # population, then ONE false-alarm budget: at most 0.5 POSITIVE badges per normal film (adults and
  # children separately) spent across the validated findings where it badges the most true findings,
  # holding at the 0.9 quantile of patient-bootstrap replicates of each group's validation normals (a
  # margin as wide as a small group's sampling error); the age head's child/adult cut-off is chosen on
  # validation films of known age; a threshold resting on fewer than 10 validation positives gets no
  # POSITIVE badge.
  timed chest-calibrate cxr-train calibrate --bundle "$CHEST" --manifest "$D/chest.csv" --split-file "$D/all-splits.csv" \
    --split val --scaling $SCALING --method budget --budget 0.5 --budget-confidence 0.9 --min-positives 10 --cache-dir "$RUNS/.cache"
  timed chest-evaluate cxr-train evaluate --bundle "$CHEST" --manifest "$D/chest.csv" --split-file "$D/all-splits.csv" \
    --split test --out "${CHEST%/bundle}/eval" $EVAL_FLAGS --gallery 2 --cache-dir "$RUNS/.cache"
  cxr-train export --bundle "$CHEST" --metrics "${CHEST%/bundle}/eval/metrics.json" \
    --out "$OUT/chest-resnet18" --name chest-resnet18 --version 0.3.0 --golden "${GOLDEN[@]}" --onnx
  mkdir -p "$OUT/chest-resnet18/evaluation"
  cp "${CHEST%/bundle}/eval/report.md" "${CHEST%/bundle}/eval/"*.png "$OUT/chest-resnet18/evaluation/"
fi

# ---------------------------------------------------------------- segmentation
SEG_OUT="$OUT/report-segmenter-resnet18"
SEG_INIT="${SEG_INIT-$SEG_OUT}"   # finish at 256 px from these weights; "" = train at 128 px from the SSL encoder first
if want segment; then
  if [[ -z "$SEG_INIT" || ! -f "$SEG_INIT/manifest.json" ]]; then
    log "report-conditioned segmentation, stage 1 (128 px) from the SSL encoder"
    timed segment train segment --config $R/segment.yaml --data-root "$DATA_DIR" --split-file "$D/all-splits.csv" \
      --encoder "$SSL" --runs-dir "$RUNS" --name segment
    SEG_INIT="$RUNS/segment/bundle"
  fi
  log "report-conditioned segmentation, 256 px stage from $SEG_INIT"
  timed segment-256 train segment --config $R/segment-256.yaml --data-root "$DATA_DIR" --split-file "$D/all-splits.csv" \
    --init "$SEG_INIT" --runs-dir "$RUNS" --name segment-256
  cxr-train export --bundle "$RUNS/segment-256/bundle" --out "$SEG_OUT" --name report-segmenter-resnet18 --version 0.2.0 --onnx
fi

# ---------------------------------------------------------------- localisation
if want localise; then
  log "localisation: pointing game and ROAD on held-out films"
  timed localise python scripts/localisation.py --bundle "$OUT/chest-resnet18" --manifest "$D/chest.csv" \
    --tbx11k "$D/tbx11k.csv" --tbx11k-splits "$D/tbx11k-splits.csv" \
    --bbox "$DATA_DIR/labels_only/BBox_List_2017.csv.gz" --out "$RUNS/localisation" --seed "$SEED"
  if [[ -d "$OUT/report-segmenter-resnet18" ]]; then
    timed lung-field python scripts/localisation.py --lung-field --bundle "$OUT/chest-resnet18" \
      --segmenter "$OUT/report-segmenter-resnet18" --manifest "$D/chest.csv" --tbx11k "$D/tbx11k.csv" \
      --split-file "$D/all-splits.csv" --out "$RUNS/localisation" --seed "$SEED"
  fi
fi

# ---------------------------------------------------------------- TB lesion score
if want tb; then
  log "TB lesion score from the segmenter"
  timed tb python scripts/tb_lesion_score.py --bundle "$SEG_OUT" --manifest "$D/tbx11k.csv" \
    --split-file "$D/tbx11k-splits.csv" --normals "$D/chest.csv" --out "$RUNS/tb" --seed "$SEED"
fi

# ---------------------------------------------------------------- model cards
if want cards; then
  log "model cards"
  C=$R/cards
  python -c 'import json, sys; rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]; json.dump({k: int(v) for k, v in rows}, open(sys.argv[2], "w"))' \
    "$RUNS/walltime.tsv" "$RUNS/walltime.json"
  [[ -d "$OUT/ssl-encoder-resnet18" ]] && python scripts/model_card.py "$OUT/ssl-encoder-resnet18" --notes $C/ssl-encoder.yaml \
    --extra-metrics "wall_time_s=$RUNS/walltime.json"
  [[ -d "$OUT/chest-resnet18" ]] && python scripts/model_card.py "$OUT/chest-resnet18" --notes $C/chest.yaml \
    --extra-metrics "localisation=$RUNS/localisation/localisation.json" --extra-metrics "wall_time_s=$RUNS/walltime.json" \
    $([[ -f "$RUNS/localisation/lung_field.json" ]] && echo --extra-metrics "lung_field=$RUNS/localisation/lung_field.json")
  [[ -d "$SEG_OUT" ]] && python scripts/model_card.py "$SEG_OUT" --notes $C/segment.yaml \
    --extra-metrics "tuberculosis_lesion_score=$RUNS/tb/tb_metrics.json" \
    $([[ -f "$RUNS/localisation/lung_field.json" ]] && echo --extra-metrics "lung_field=$RUNS/localisation/lung_field.json") \
    --derived-findings "$RUNS/tb/derived_findings.json"
  du -sh "$OUT"
fi
log "done; wall times in $RUNS/walltime.tsv"

#!/usr/bin/env bash
# Plain camera student vs camera student distilled from a LiDAR teacher, same schedule, several seeds,
# on the synthetic set at the small CPU config. Trains the LiDAR teacher first unless TEACHER names a
# checkpoint; evaluates every student's last checkpoint with the plain camera experiment's `-e`.
# Settings from the environment: ROOT, EPOCHS (students), TEACHER_EPOCHS, SEEDS, OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-data/synthetic}
EPOCHS=${EPOCHS:-20}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-8}
SEEDS=${SEEDS:-"0 1"}
OUT=${OUT:-outputs/distill_study}
DIR=exps/nuscenes/BEVFusion
LIDAR=$DIR/BEVFusion_nuscenes_centerhead_lidar_exp.py
CAMERA=$DIR/BEVFusion_nuscenes_centerhead_camera_exp.py
DISTILLED=$DIR/BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py
COMMON=(--data_root "$ROOT" -b 2)

[ -d "$ROOT/v1.0-mini" ] || python tools/create_data.py synthetic --root "$ROOT"
if [ -z "${TEACHER:-}" ]; then
    python "$LIDAR" "${COMMON[@]}" --max_epochs "$TEACHER_EPOCHS" --output_root "$OUT/teacher" \
        --exp_options model_size=small --check_val_every_n_epoch "$TEACHER_EPOCHS"
    TEACHER=$(readlink -f "$OUT/teacher/$(basename "$LIDAR" .py)/latest/checkpoints/last.ckpt")
fi

evaluate() {  # $1: checkpoint -> "mAP NDS" of the plain camera experiment's -e
    python "$CAMERA" -e --data_root "$ROOT" --ckpt_path "$1" --output_root "$OUT/eval" \
        --exp_options model_size=small | grep -ao '\(mAP\|NDS\): [0-9.]*' | awk '{print $2}' | paste -sd' '
}

echo "seed student mAP NDS" > "$OUT/results.txt"
for seed in $SEEDS; do
    python "$CAMERA" "${COMMON[@]}" --max_epochs "$EPOCHS" --seed "$seed" --output_root "$OUT/seed$seed" \
        --exp_options model_size=small --check_val_every_n_epoch "$EPOCHS"
    python "$DISTILLED" "${COMMON[@]}" --max_epochs "$EPOCHS" --seed "$seed" --output_root "$OUT/seed$seed" \
        --teacher_ckpt "$TEACHER" --exp_options model_size=small teacher_model_size=small \
        --check_val_every_n_epoch "$EPOCHS"
    for exp in "$CAMERA" "$DISTILLED"; do
        ckpt=$(readlink -f "$OUT/seed$seed/$(basename "$exp" .py)/latest/checkpoints/last.ckpt")
        echo "$seed $(basename "$exp" .py) $(evaluate "$ckpt")" >> "$OUT/results.txt"
    done
done
column -t "$OUT/results.txt"

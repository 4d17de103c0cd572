#!/usr/bin/env bash
# The main job on the embedded data: make the synthetic nuScenes-format set, train the LiDAR
# detector (small CPU config) on it, evaluate the last checkpoint with the nuScenes metric.
# EPOCHS, ROOT and DEVICES may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-data/synthetic}
EPOCHS=${EPOCHS:-8}
EXP=exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py
NAME=$(basename "$EXP" .py)

[ -d "$ROOT/v1.0-mini" ] || python tools/create_data.py synthetic --root "$ROOT"
python "$EXP" --data_root "$ROOT" --max_epochs "$EPOCHS" -b 2 --exp_options model_size=small --check_val_every_n_epoch "$EPOCHS"
CKPT=$(readlink -f "outputs/$NAME/latest/checkpoints/last.ckpt")
python "$EXP" -e --data_root "$ROOT" --ckpt_path "$CKPT" --exp_options model_size=small
echo "BEV pictures: outputs/$NAME/latest/vis/   logs: tensorboard --logdir outputs/$NAME"

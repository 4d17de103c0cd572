"""Plain vs distilled students of any pairing, N seeds, runs scheduled on the available devices:

    python tools/distill_study.py --pairing exps/nuscenes/BEVFusion/<pairing>.py --seeds 0 1 \
        --data_root data/nuscenes --version v1.0-trainval --model_size nuscenes -b 4

An ablation over distillation settings shares the teacher, pretraining and plain students:

    python tools/distill_study.py --seeds 0 1 2 --variants "feature=10" "feature=0 relation=40"

Results as the paired difference distilled - plain per seed (mean, 95% Student t interval, seeds improved;
one row per variant), mean and standard deviation, and every run's numbers in
outputs/distill_study/<timestamp>/report.{json,md,png} (see `unikd.study.study`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.study.cli import main  # noqa: E402

if __name__ == "__main__":
    main("distill_study", seeds=[0, 1], make_synthetic=False)

"""The distillation demo on the embedded synthetic data: build the set if absent (the synthetic trainval
variant, 400 + 100 samples), train the LiDAR teacher (or reuse a finished one), the plain and the
LiDAR-distilled camera student (small config, one seed), evaluate all three and write
outputs/distill_demo/<timestamp>/report.{json,md,png}.

    python tools/distill_demo.py            # about 30 minutes on 2 CPU cores
    python tools/distill_demo.py --quick    # a short schedule, within 8 minutes

It is tools/distill_study.py with these defaults; every option of that tool applies.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.study.cli import main  # noqa: E402

if __name__ == "__main__":
    main("distill_demo", seeds=[0], make_synthetic=True)

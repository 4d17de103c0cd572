"""`EvaluationTask`: what every evaluation task provides (`unikd.exps.tasks` registers them by name).

Its own module so that a task in another module (`unikd.exps.depth_task`) subclasses it and `tasks.py`'s
registry imports that task without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from unikd.evaluation.summary import write_metrics_summary

if TYPE_CHECKING:
    from unikd.exps.base_exp import BaseExp


class EvaluationTask:
    """The evaluation of one experiment (`unikd.exps.tasks`). Subclasses build the metric and score a batch."""

    name: ClassVar[str]
    reads_map_masks: ClassVar[bool] = False  # whether the datasets give the map targets `gt_masks_bev`

    def __init__(self, exp: BaseExp) -> None:
        self.exp = exp
        self._metric = None

    def check_settings(self) -> None:
        """Settings of the experiment this task cannot evaluate, refused when the experiment is built."""

    def prepare_data(self) -> None:
        """On the first process of each machine, before the others read it: what the evaluation reads."""

    def setup(self) -> None:
        """Build the metric on every process (an error naming what is missing, before any training)."""
        self.metric()

    def metric(self):
        """The validation metric, built once."""
        if self._metric is None:
            self._metric = self.build_metric().to(self.exp.device)
        return self._metric

    def build_metric(self):
        raise NotImplementedError

    def scores_whole_split(self) -> bool:
        """Whether every validation sample must be scored: --limit_val_batches evaluates a subset on purpose
        (an int counts batches: 1 means one batch)."""
        limit = self.exp.trainer.limit_val_batches
        return isinstance(limit, float) and limit == 1.0

    def on_validation_epoch_start(self) -> None:
        self.metric().reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        raise NotImplementedError

    def report(self, summary: dict, logged: dict[str, str], text: str, filename: str, meta: dict[str, Any]) -> None:
        """Log `summary[key]` as each `logged` name, keep it as the experiment's `last_metrics`, and on rank 0
        print `text` and write the summary to eval/<filename>_epoch<N>.json."""
        exp = self.exp
        for name, key in logged.items():
            exp.log(name, float(summary[key]), rank_zero_only=True)
        exp.last_metrics = summary
        if exp.trainer.is_global_zero:
            print(text)
            path = exp.run_dir() / "eval" / f"{filename}_epoch{exp.epoch_label}.json"
            write_metrics_summary(summary, path, meta=meta)
            print(f"metrics written to {path}")

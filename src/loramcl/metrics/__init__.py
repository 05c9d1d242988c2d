"""Evaluation metrics of K candidates per item (SPEC 7): captioning, translation, diversity, win rates.

Importing this package is cheap: aac-metrics (about 5 s to import) and the Java tools are loaded only
when `caption_metrics` runs. Metric keys, labels and directions live in `registry`; per task, the scoring function and its
primary sentence score live in `tasks`.
"""

from loramcl.metrics.captioning import caption_metrics, missing_fense_weights
from loramcl.metrics.diversity import diversity_metrics
from loramcl.metrics.jars import JavaError, default_cache_dir, java_major_version, stage_jars
from loramcl.metrics.result import MetricResult, best_per_item, higher_is_better, oracle_mean
from loramcl.metrics.tasks import TASKS, Task, score, task_for
from loramcl.metrics.translation import translation_metrics
from loramcl.metrics.wins import win_rates

__all__ = [
    "JavaError",
    "MetricResult",
    "TASKS",
    "Task",
    "best_per_item",
    "caption_metrics",
    "default_cache_dir",
    "diversity_metrics",
    "higher_is_better",
    "java_major_version",
    "missing_fense_weights",
    "oracle_mean",
    "score",
    "stage_jars",
    "task_for",
    "translation_metrics",
    "win_rates",
]

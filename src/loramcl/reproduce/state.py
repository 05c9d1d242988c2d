"""What of a table is already done: finished training runs (found by their config key) and finished
evaluations (found in MLflow by their group tag and decoding).

A training is *done* when a run folder whose saved config has its key holds the file the runner
writes last (metrics.json, or summary.json for the toy and bilingual runners); the table's own
folder `logs/<task_name>/runs/reproduce-<key>` is looked at first, then every other train.py run
folder under logs/ (a run trained by hand with the same config is reused). A folder with the key but
without that file is *partial*: training it again with `ckpt_path=auto` resumes it.

An evaluation is *done* when the table's MLflow experiment holds a FINISHED eval.py run tagged
`loramcl.reproduce.group=<its sweep>` with `eval.decoding=<decoding>`, computed with the table's decoding
settings and the current metric definitions (`evaluation_state`: else it is *stale* and runs again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


from loramcl.identity import EVAL_KEY_TAG, METRICS_VERSION, METRICS_VERSION_TAG, saved_key
from loramcl.reproduce.plan import Evaluation, Training
from loramcl.run_folders import CONFIG_FILE, training_runs

log = logging.getLogger(__name__)

SWEEP_TAG = "loramcl.reproduce.group"  # its value: Evaluation.sweep (the tag's name is kept: earlier runs carry it)
TABLE_TAG = "loramcl.reproduce.table"
SUPERSEDED_TAG = "loramcl.reproduce.superseded"  # on the evaluations of a training trained again: stale
CONFIG = CONFIG_FILE


@dataclass(frozen=True)
class TrainingState:
    status: str  # done | partial | missing
    run_dir: Optional[Path]  # the run folder (done, partial) or where it will be (missing)


class RunIndex:
    """Config keys of the run folders under logs/, read once (a folder's key never changes)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._keys: Optional[dict[Path, str]] = None

    def keys(self) -> dict[Path, str]:
        if self._keys is None:
            self._keys = {}
            for folder in training_runs(self.log_dir):
                try:
                    self._keys[folder] = saved_key(folder)
                except Exception as err:  # noqa: BLE001 - an unreadable config is not ours to judge here
                    log.debug("skipping %s: %s", folder, err)
        return self._keys

    def state(self, training: Training) -> TrainingState:
        own = training.run_dir(self.log_dir)
        if (own / training.finished_marker).is_file() and (own / CONFIG).is_file():
            return TrainingState("done", own)
        for folder, key in self.keys().items():
            if key == training.key and (folder / training.finished_marker).is_file():
                return TrainingState("done", folder)
        if (own / CONFIG).is_file():
            return TrainingState("partial", own)
        return TrainingState("missing", own)


def finished_evaluations(tracking_uri: str, experiment: str) -> dict[tuple[str, str], Any]:
    """{(group, decoding): the newest FINISHED eval run} of the table's MLflow experiment."""
    from loramcl.utils.mlflow_store import all_pages, open_store

    client = open_store(tracking_uri)
    exp = client.get_experiment_by_name(experiment) if client is not None else None
    if exp is None:
        return {}
    found: dict[tuple[str, str], Any] = {}
    for run in all_pages(client.search_runs, experiment_ids=[exp.experiment_id],
                         filter_string="attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"]):
        group = run.data.tags.get(SWEEP_TAG)
        decoding = run.data.params.get("eval.decoding")
        if group and decoding:
            found[(group, decoding)] = run  # ascending start time: the newest wins
    return found


def evaluation_state(evaluation: Evaluation, finished: dict[tuple[str, str], Any]) -> str:
    """done, missing, or stale: the newest finished run was computed by an older metric definition
    (METRICS_VERSION; runs from before the tag count as older), with other decoding / generation
    settings than the table's now (its eval key; runs from before the tag are not judged on it), or
    of a model since trained again (`SUPERSEDED_TAG`)."""
    run = finished.get((evaluation.sweep, evaluation.decoding))
    if run is None:
        return "missing"
    tags = run.data.tags
    if tags.get(SUPERSEDED_TAG):  # its training was trained again (retrain_other_code)
        return "stale"
    if tags.get(METRICS_VERSION_TAG) != str(METRICS_VERSION):
        return "stale"
    if evaluation.key and tags.get(EVAL_KEY_TAG, evaluation.key) != evaluation.key:
        return "stale"
    return "done"


def evaluation_done(evaluation: Evaluation, finished: dict[tuple[str, str], Any]) -> bool:
    return evaluation_state(evaluation, finished) == "done"

"""MLflow helpers: a safe sqlite store shared by parallel jobs, parent/child runs, artifacts.

MLflow 3.17's sqlite store races when several processes create its schema at once, so the first
touch of a store happens under an exclusive file lock next to the database. Runs are created with
an explicit artifact location (the experiment's), never MLflow's cwd-relative default.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

MAX_PARAM_LENGTH = 6000


def sqlite_path(tracking_uri: str) -> Optional[Path]:
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


EVAL_FILTER = "tags.`loramcl.kind` = 'eval'"  # eval.py's runs


def open_store(tracking_uri: str) -> Optional[Any]:
    """A client of the store, or None when it is a sqlite file that does not exist (MlflowClient
    would silently create an empty one). The first touch runs under the store's lock: it may create
    or migrate the schema, which must never race a writer. Backend errors propagate."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return None
    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        client.search_experiments(max_results=1)
    return client


def all_pages(search: Any, **kwargs: Any) -> list:
    """Every result of an MLflow search (`client.search_experiments`, `client.search_runs`), page by page."""
    found, token = [], None
    while True:
        page = search(max_results=1000, page_token=token, **kwargs)
        found.extend(page)
        token = page.token
        if not token:
            return found


def artifact_dir(run: Any) -> Optional[Path]:
    """The local folder of an MLflow run's artifacts (None for a remote artifact store)."""
    from urllib.parse import unquote, urlparse

    uri = str(getattr(run.info, "artifact_uri", "") or "")
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri) if uri.startswith("/") else None


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive lock on `<db>.lock` for sqlite stores (no-op for other stores)."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_experiment_id(tracking_uri: str, experiment_name: str, artifact_location: str) -> str:
    """Create the store (schema) and the experiment if needed, race-free; return its id. A sqlite
    store is locked meanwhile; a tracking server serialises nothing, so an experiment that another
    job created between our look and our create is read back instead."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is not None:
            return exp.experiment_id
        Path(artifact_location).mkdir(parents=True, exist_ok=True)
        try:
            return client.create_experiment(experiment_name, artifact_location=str(Path(artifact_location).resolve()))
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(experiment_name)
            if exp is None:
                raise
            return exp.experiment_id


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} with values cut to MLflow's parameter length."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:MAX_PARAM_LENGTH]
    return out


RUN_DIR_TAG = "loramcl.run_dir"  # the train.py run folder a run writes to


def close_abandoned_runs(tracking_uri: str, experiment_id: str, run_dirs: list[str], keep: Optional[str] = None,
                         status: str = "KILLED") -> list[str]:
    """Mark the runs still RUNNING that wrote to one of `run_dirs` (their job was killed, e.g. by
    SIGKILL, before it could close them) as `status`, except `keep`; returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    closed = []
    for run_dir in dict.fromkeys(run_dirs):
        value = run_dir.replace("'", "\\'")
        for run in client.search_runs([experiment_id], f"tags.`{RUN_DIR_TAG}` = '{value}' and attributes.status = 'RUNNING'"):
            if run.info.run_id != keep:
                client.set_terminated(run.info.run_id, status)
                closed.append(run.info.run_id)
    return closed


class MLflowRun:
    """A run in a (sqlite) store, optionally nested under a parent run."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_location: str, run_name: str,
                 parent_run_id: Optional[str] = None, tags: Optional[Mapping[str, str]] = None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_id = get_experiment_id(tracking_uri, experiment_name, artifact_location)
        self.client = MlflowClient(tracking_uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags["mlflow.runName"] = run_name
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id

    @classmethod
    def reopen(cls, tracking_uri: str, run_id: str) -> Optional["MLflowRun"]:
        """The existing run `run_id` of this store set RUNNING again (a resumed training run), or
        None when the store does not have it."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        try:
            info = client.get_run(run_id).info
        except MlflowException:
            return None
        run = cls.__new__(cls)
        run.tracking_uri, run.experiment_id, run.client, run.run_id = tracking_uri, info.experiment_id, client, run_id
        client.update_run(run_id, status="RUNNING")
        return run

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log `params`; keys the run already has keep their first value (MLflow params are immutable)."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tag(self, key: str, value: Any) -> None:
        self.client.set_tag(self.run_id, key, str(value))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            if value is not None:
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

"""Many jobs, one tracking store: 16 SLURM array tasks log at once to a running MLflow server.

The server is scripts/mlflow_server.sh (SQLite behind it, any free port, its address published in a
file); the cluster is a local one that offers 16 CPUs on this machine's cores (LOCAL_CLUSTER_CPUS),
so that the 16 tasks really run together. Each task logs a run the way train.py does
(bench/tracking_concurrency.py); every run, parameter and metric value must arrive. Before the fix
in `get_experiment_id`, tasks that raced to create the experiment on the server failed
(RESOURCE_ALREADY_EXISTS: 10 of 16 here). A train.py run logs through `logger.mlflow.tracking_uri`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import ROOT, run_train, timeout
from slurm_cluster import own_cluster, wait_until

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow_server")
    env = dict(os.environ, STORE_DIR=str(store), PORT="0", WORKERS="2", MLFLOW=str(Path(sys.executable).parent / "mlflow"))
    with open(store / "server.log", "w") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "mlflow_server.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        uri = wait_until(lambda: (store / "uri").is_file() and (store / "uri").read_text().strip(), timeout=120,
                         what="the server's address")
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert not (store / "uri").exists()  # the address is withdrawn when the server stops


@pytest.fixture(scope="module")
def wide_cluster(tmp_path_factory):
    """A local cluster whose node offers 16 CPUs (16 one-CPU jobs at once)."""
    with own_cluster(tmp_path_factory.mktemp("wide"), LOCAL_CLUSTER_CPUS="16") as env:
        yield env


def test_sixteen_array_tasks_log_everything_to_one_server(server, wide_cluster, tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tracking_concurrency.py"), "--uri", server,
                           "--tasks", "16", "--params", "30", "--metrics", "4", "--steps", "20",
                           "--sbatch-arg=--partition=debug", "--json", str(out)],
                          env={**wide_cluster, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=timeout(900))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert (row["runs finished"], row["params arrived"], row["metric values arrived"], row["failed tasks"]) == \
        (16, "480/480", "1280/1280", 0), row


@pytest.mark.slow  # suite time (40 s)
def test_a_training_logs_to_the_server_through_its_logger_config(server, tmp_path):
    proc = run_train("task=finetune", "data.num_val_sequences=32", "extras.print_config=false", "trainer.max_steps=3",
                     "task_name=served", f"logger.mlflow.tracking_uri={server}", log_dir=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(server)
    (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["trainer.max_steps"] == "3"
    assert "train/loss_epoch" in run.data.metrics
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the default SQLite file

"""The project's SLURM paths against a real single-node SLURM (the `slurm` fixture, tests/conftest.py).

On the CPU demos with tiny settings: the batch scripts of scripts/slurm/ (their #SBATCH lines for a
GPU cluster are overridden on the sbatch command line: partition, gres, cpus, memory), a job that
SLURM is told to requeue (USR1, as before a time limit, or `scontrol requeue`) checkpoints, is
requeued, resumes by itself and ends with the adapters of an uninterrupted run in one MLflow run,
a 2-task srun DDP job trains as one process with the doubled batch, and a Hydra multirun through the
submitit launcher runs its jobs as an array.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from helpers import ROOT, TRANSLATION_DEMO, run_train, timeout
from slurm_cluster import job_info, run, submit, wait_for, wait_until

pytestmark = pytest.mark.slurm

SCRIPTS = ROOT / "scripts" / "slurm"
# the scripts ask for a GPU partition; the test cluster has one CPU partition and no GRES
TEST_CLUSTER = ["--partition=debug", "--gres=none", "--cpus-per-task=1", "--mem=2G"]
# the toy task as a finetune run (K = 2, seconds); no lr schedule, so that runs of any length agree
TOY = ["task=finetune", "data.num_val_sequences=32", "extras.print_config=false", "optim.scheduler=null",
       "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=2"]


def adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "K2" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


# adapters of N processes against one: the all-reduce sums in another order, which Adam's 1 / sqrt(v)
# amplifies (up to 8.6e-6 after 6 steps on a 2-core x86 machine, with the code before issue 21 too)
DDP_NOISE = 2e-5


def assert_same(a: dict, b: dict, tol: float = 0.0, atol: float | None = None) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol if atol is None else atol, msg=k)


def mlflow_runs(log_dir: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def job_env(slurm: dict, **extra: str) -> dict:
    """The submitting environment (the job inherits it): the test cluster, the project's venv python."""
    return {**slurm, "PROJECT_DIR": str(ROOT), "PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", **extra}


def sbatch(script: str, env: dict, sbatch_args: list[str], script_args: list[str], cwd: Path) -> str:
    """`sbatch <sbatch_args> scripts/slurm/<script> <script_args>` from `cwd`; the job id."""
    return submit([*sbatch_args, str(SCRIPTS / script), *script_args], env, cwd=cwd)


def output(tmp_path: Path, job: str) -> str:
    files = list(tmp_path.glob(f"slurm-*-{job}.out"))
    return files[0].read_text(errors="replace") if files else ""


def assert_trained_as_one(log_dir: Path, job: str) -> None:
    """The 2-process job's run ("two") has the per-step losses and the adapters of the 1-process run
    ("one", batch 8)."""
    client = MlflowClient(f"sqlite:///{log_dir}/mlflow.db")
    losses = {}
    for name in ("one", "two"):
        (mlrun,) = mlflow_runs(log_dir, name)
        losses[name] = [m.value for m in sorted(client.get_metric_history(mlrun.info.run_id, "train/loss"),
                                                 key=lambda m: m.step)]
    assert len(losses["one"]) == 6 and losses["two"] == pytest.approx(losses["one"], rel=1e-5)
    (one_run,) = (log_dir / "one" / "runs").iterdir()
    assert_same(adapters(one_run), adapters(log_dir / "two" / "runs" / f"slurm-{job}"), tol=1e-5, atol=DDP_NOISE)


def interrupted_train_job(slurm: dict, tmp_path: Path, interrupt: list[str]) -> tuple[str, Path, Path, Path]:
    """train.sh on the toy (100 steps); `interrupt + [job id]` once its first last.ckpt exists; an
    uninterrupted reference run while SLURM restarts the job. Returns (job id, the job's run folder,
    the reference's run folder, the job's log folder) once the job COMPLETED after one restart."""
    steps = ["trainer.max_steps=100", "trainer.val_check_interval=50", "data.batch_size=8"]
    logs = tmp_path / "logs"
    job = sbatch("train.sh", job_env(slurm), TEST_CLUSTER, [*TOY, *steps, "task_name=requeued", f"paths.log_dir={logs}"],
                 tmp_path)
    run_dir = logs / "requeued" / "runs" / f"slurm-{job}"
    wait_until(lambda: (run_dir / "checkpoints" / "K2" / "last.ckpt").exists(), timeout=timeout(300),
               poll=0.05, what="the first last.ckpt")
    run([*interrupt, job], slurm)
    reference = run_train(*TOY, *steps, "task_name=reference", log_dir=tmp_path / "ref", timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (ref_run,) = (tmp_path / "ref" / "reference" / "runs").iterdir()
    assert wait_for(job, slurm, timeout=600, restarts=1) == "COMPLETED", output(tmp_path, job)[-3000:]
    return job, run_dir, ref_run, logs


def test_every_sbatch_line_comes_before_the_first_command():
    """sbatch stops reading #SBATCH lines at the first command: a later one would be ignored."""
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert {p.name for p in scripts} >= {"train.sh", "train_ddp.sh", "eval_sweep.sh", "train_then_eval.sh"}
    for script in scripts:
        seen_command = False
        for number, line in enumerate(script.read_text().splitlines()[1:], start=2):
            if line.startswith("#SBATCH"):
                assert not seen_command, f"{script.name}:{number}: #SBATCH after a command is ignored by sbatch"
            elif line.strip() and not line.lstrip().startswith("#"):
                seen_command = True


def sbatch_options(script: Path) -> dict[str, str]:
    """The script's active #SBATCH options, {name: value}."""
    found = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH --"):
            name, _, value = line[len("#SBATCH --"):].split()[0].partition("=")
            found[name] = value
    return found


def test_the_sbatch_scripts_agree_with_the_one_home_of_the_slurm_defaults():
    """configs/cluster/slurm.yaml holds the defaults; the shipped scripts' #SBATCH lines, the submitit
    launcher and reproduce.py's job headers say the same (time limits, memory per process, cpus,
    the warning signal and its delay)."""
    import loramcl  # noqa: F401  (the resolvers)
    from loramcl.cluster import minutes, slurm_defaults
    from loramcl.reproduce.slurm import Shape, sbatch_header
    from omegaconf import OmegaConf

    from helpers import compose_train

    home = slurm_defaults()
    memory = int(home["mem_per_task_gb"])
    warning = f"{home['signal']}@{home['signal_delay_s']}"
    train, ddp, sweep = (sbatch_options(SCRIPTS / name) for name in ("train.sh", "train_ddp.sh", "eval_sweep.sh"))
    assert minutes(train["time"]) == minutes(ddp["time"]) == minutes(home["time_train"])
    assert minutes(sweep["time"]) == minutes(home["time_eval"])
    assert train["mem"] == sweep["mem"] == f"{memory}G"
    assert ddp["mem"] == f"{memory * int(ddp['ntasks-per-node'])}G"  # per node: one process per GPU
    assert {train["cpus-per-task"], ddp["cpus-per-task"], sweep["cpus-per-task"]} == {str(home["cpus_per_task"])}
    assert train["signal"] == sweep["signal"] == f"B:{warning}" and ddp["signal"] == warning  # exec'd python / every srun task
    launcher = compose_train("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", hydra_cfg=True).hydra.launcher
    assert (launcher.timeout_min, launcher.mem_gb, launcher.cpus_per_task) == (minutes(home["time_train"]), 4 * memory,
                                                                               home["cpus_per_task"])
    assert (launcher.signal_delay_s, launcher.max_num_timeout) == (home["signal_delay_s"], home["max_requeues"])
    slurm = OmegaConf.create({**home, "gpus": 1, "extra": []})
    one = "\n".join(sbatch_header(slurm, "t", "o", home["time_train"], requeue=True))
    four = "\n".join(sbatch_header(slurm, "t", "o", home["time_train"], shape=Shape(2, 4), requeue=True))
    assert f"--signal=B:{warning}" in one and f"--mem={memory}G" in one and "--ntasks=1" in one
    assert f"--signal={warning}" in four and f"--mem={4 * memory}G" in four and "--gres=gpu:4" in four
    assert "--nodes=2" in four and "--ntasks-per-node=4" in four


def signal_at_first_batch(signum: str = "SIGUSR1") -> list[str]:
    """Overrides: the job's python sends itself `signum` when it trains its first batch (each start)."""
    import signal

    return ["+callbacks.signal_at._target_=signal_callbacks.SignalAt", "+callbacks.signal_at.batch=-1",
            f"+callbacks.signal_at.signum={int(getattr(signal, signum))}"]


def env_with_test_callbacks(slurm: dict, **extra: str) -> dict:
    return job_env(slurm, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT / 'src'}", **extra)


def test_a_job_stops_requeueing_itself_at_the_cap(slurm, tmp_path):
    """Every start gets SLURM's warning (USR1) at its first batch: the first is requeued and resumes,
    the second (restart 1, LORAMCL_MAX_REQUEUES=1) saves and stops with one line instead of being
    requeued for ever."""
    logs = tmp_path / "logs"
    job = sbatch("train.sh", env_with_test_callbacks(slurm, LORAMCL_MAX_REQUEUES="1"), TEST_CLUSTER,
                 [*TOY, "trainer.max_steps=100", "data.batch_size=8", "task_name=capped", f"paths.log_dir={logs}",
                  *signal_at_first_batch()], tmp_path)
    assert wait_for(job, slurm, timeout=600, restarts=1) == "FAILED", output(tmp_path, job)[-3000:]
    info, log = job_info(job, slurm), output(tmp_path, job)
    assert info["Restarts"] == "1" and info["ExitCode"] == "138:0", info  # 128 + SIGUSR1
    assert f"SLURM job {job} requeued: it resumes" in log, log[-3000:]
    assert re.search(rf"stopped by SIGUSR1 after step \d+: checkpoint .*last\.ckpt; SLURM job {job} was requeued "
                     r"1 time\(s\) already \(max_requeues 1, LORAMCL_MAX_REQUEUES\): not requeued again; resume with: "
                     r"python train\.py", log), log[-3000:]
    saved = torch.load(logs / "capped" / "runs" / f"slurm-{job}" / "checkpoints" / "K2" / "last.ckpt",
                       map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2  # one step per start


def test_a_run_that_cannot_resume_is_not_requeued(slurm, tmp_path):
    """The toy runner trains its two models from scratch: SLURM's warning stops it with a line that
    says so, and the job is not requeued (it would start over and be warned again)."""
    job = sbatch("train.sh", env_with_test_callbacks(slurm), TEST_CLUSTER,
                 ["experiment=transition1", "trainer.max_steps=50", "extras.print_config=false", "task_name=toyjob",
                  f"paths.log_dir={tmp_path / 'logs'}", *signal_at_first_batch()], tmp_path)
    assert wait_for(job, slurm, timeout=300) == "FAILED", output(tmp_path, job)[-3000:]
    info, log = job_info(job, slurm), output(tmp_path, job)
    assert info["Restarts"] == "0" and info["ExitCode"] == "138:0", info
    assert re.search(r"stopped by SIGUSR1 after step 1: .*; this run trains from scratch and cannot resume, so the "
                     r"SLURM job is not requeued: run the same command again", log), log[-3000:]
    assert "requeued: it resumes" not in log and "resuming" not in log


@pytest.mark.slow  # suite time (93 s); the reproduce eval job's requeue is tested by a slow test too
def test_a_sweep_started_again_runs_only_the_methods_not_finished(translation_runs, tmp_path):
    """eval_sweep.sh (run here with bash, as its requeued start would run): the second start finds
    the method the first finished in MLflow and decodes only the other one."""
    run, logs = translation_runs["mcl"], tmp_path / "logs"
    args = ["max_items=4", "generation.max_new_tokens=8", "metrics.oracle_nll=false", f"paths.log_dir={logs}"]

    def sweep(decodings: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PROJECT_DIR=str(ROOT), PYTHON=sys.executable, DECODINGS=decodings, PYTHONUNBUFFERED="1")
        return subprocess.run(["bash", str(SCRIPTS / "eval_sweep.sh"), str(run), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout(600))

    first = sweep("mcl_beam1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = sweep("mcl_beam1,mcl_beam2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 method(s) done before, running the rest" in second.stdout, second.stdout[-2000:]
    client = MlflowClient(f"sqlite:///{logs}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("eval_")]
    finished = [r.data.params["eval.decoding"] for r in client.search_runs([experiment.experiment_id])
                if r.info.status == "FINISHED"]
    assert sorted(finished) == ["mcl_beam1", "mcl_beam2"]  # mcl_beam1 once


def test_train_job_requeued_before_its_limit_resumes_exactly(slurm, tmp_path):
    """USR1 (what `--signal=B:USR1@300` sends before the time limit, here at once with scancel):
    last.ckpt at the next step, the job requeues itself, restarts (same job id, SLURM_RESTART_COUNT=1)
    in the same run folder, resumes it without ckpt_path, and ends with the adapters of an
    uninterrupted run, in one MLflow run."""
    job, run_dir, ref_run, logs = interrupted_train_job(slurm, tmp_path, ["scancel", "--signal=USR1", "--batch"])
    info = job_info(job, slurm)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
    log = output(tmp_path, job)
    assert re.search(r"stopped by SIGUSR1 after step \d+: checkpoint .*last\.ckpt; SLURM job "
                     f"{job} requeued", log), log[-3000:]
    assert "restart 1: train.py" in log and "SLURM restart 1 of this job: ckpt_path=auto" in log
    assert sorted(p.name for p in (logs / "requeued" / "runs").iterdir()) == [f"slurm-{job}"]
    assert_same(adapters(ref_run), adapters(run_dir))
    (mlrun,) = mlflow_runs(logs, "requeued")
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["loramcl.resumes"] == "1"


@pytest.mark.slow
def test_scontrol_requeue_of_a_running_job_resumes_exactly(slurm, tmp_path):
    """An administrator's `scontrol requeue` (SIGTERM to the job, then a restart): the run saves at
    the next step, exits 143, and the restarted job resumes it to the uninterrupted adapters."""
    job, run_dir, ref_run, logs = interrupted_train_job(slurm, tmp_path, ["scontrol", "requeue"])
    assert "stopped by SIGTERM" in output(tmp_path, job)
    assert_same(adapters(ref_run), adapters(run_dir))
    (mlrun,) = mlflow_runs(logs, "requeued")
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["loramcl.resumes"] == "1"


@pytest.mark.slow
def test_two_task_srun_ddp_trains_as_one_process_with_the_doubled_batch(slurm, tmp_path):
    """train_ddp.sh with 2 tasks (srun starts the ranks, Lightning's SLURMEnvironment picks them up,
    gloo): the per-step losses and the final adapters of 1 process with batch 8."""
    common = [*TOY, "trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks.model_checkpoint.every_n_train_steps=1"]
    reference = run_train(*common, "data.batch_size=8", "data.num_train_batches=6", "task_name=one",
                          log_dir=tmp_path, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    job = sbatch("train_ddp.sh", job_env(slurm, TRAINER="ddp_cpu"),
                 ["--partition=debug", "--gres=none", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G"],
                 [*common, "data.batch_size=4", "data.num_train_batches=12", "task_name=two", f"paths.log_dir={tmp_path}"],
                 tmp_path)
    assert wait_for(job, slurm, timeout=600) == "COMPLETED", output(tmp_path, job)[-3000:]
    log = output(tmp_path, job)
    assert "2 tasks on 1 node(s)" in log
    assert_trained_as_one(tmp_path, job)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A local cluster of two nodes (one slurmd each on this machine: Debian's slurmd runs several)."""
    from slurm_cluster import own_cluster

    with own_cluster(tmp_path_factory.mktemp("two_nodes"), LOCAL_CLUSTER_NODES="2") as env:
        yield env


@pytest.mark.slow
def test_two_node_ddp_job_trains_as_one_process_with_the_doubled_batch(two_nodes, tmp_path):
    """train_ddp.sh on 2 nodes x 1 task (num_nodes follows SLURM_JOB_NUM_NODES): the losses and
    adapters of 1 process with batch 8. The nodes' names do not resolve here: MASTER_ADDR=127.0.0.1."""
    common = [*TOY, "trainer.max_steps=6", "trainer.val_check_interval=3", "callbacks.model_checkpoint.every_n_train_steps=1"]
    reference = run_train(*common, "data.batch_size=8", "data.num_train_batches=6", "task_name=one",
                          log_dir=tmp_path, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    job = sbatch("train_ddp.sh", job_env(two_nodes, TRAINER="ddp_cpu", MASTER_ADDR="127.0.0.1"),
                 ["--partition=debug", "--gres=none", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                  "--mem=4G"],
                 [*common, "trainer.devices=1", "data.batch_size=4", "data.num_train_batches=12", "task_name=two",
                  f"paths.log_dir={tmp_path}"], tmp_path)
    assert wait_for(job, two_nodes, timeout=600) == "COMPLETED", output(tmp_path, job)[-3000:]
    assert "2 tasks on 2 node(s)" in output(tmp_path, job)
    assert_trained_as_one(tmp_path, job)


@pytest.mark.slow
def test_hydra_multirun_through_submitit_runs_an_array(slurm, tmp_path, monkeypatch):
    """`train.py -m hydra/launcher=slurm ... seed=0,1`: one SLURM array of 2 jobs, both runs in MLflow."""
    for key, value in job_env(slurm).items():
        monkeypatch.setenv(key, value)
    proc = run_train("-m", "hydra/launcher=slurm", *TOY, "trainer.max_steps=4", "trainer.val_check_interval=2",
                     "data.batch_size=4", "task_name=sweep", "seed=0,1", "hydra.launcher.gpus_per_node=0",
                     "hydra.launcher.tasks_per_node=1", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2",
                     "hydra.launcher.timeout_min=10", "hydra.launcher.partition=debug", log_dir=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = mlflow_runs(tmp_path, "sweep")
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert len(list(tmp_path.glob("sweep/multiruns/*/*/checkpoints/K2/last.ckpt"))) == 2


@pytest.mark.slow
def test_train_then_eval_pipeline(slurm, tmp_path, translation_assets):
    """train_then_eval.sh: a training job and its decoding sweep with --dependency=afterok; the
    evaluation starts after the training and logs its metrics."""
    logs = tmp_path / "logs"
    env = job_env(slurm, RUN_DIR=str(tmp_path / "pipeline"), DECODINGS="mcl_beam1",
                  TRAIN_SBATCH_ARGS=" ".join(TEST_CLUSTER), EVAL_SBATCH_ARGS=" ".join(TEST_CLUSTER),
                  EVAL_ARGS=f"max_items=4 generation.max_new_tokens=8 metrics.oracle_nll=false paths.log_dir={logs}")
    done = subprocess.run(["bash", str(SCRIPTS / "train_then_eval.sh"), "experiment=demo_translation_mcl",
                           *TRANSLATION_DEMO, f"paths.data_dir={translation_assets}", f"paths.log_dir={logs}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout(60))
    assert done.returncode == 0, done.stderr
    train_job, eval_job = re.findall(r"job (\d+)", done.stdout)[:2]
    assert wait_for(train_job, slurm, timeout=900) == "COMPLETED", output(tmp_path, train_job)[-3000:]
    assert wait_for(eval_job, slurm, timeout=900) == "COMPLETED", output(tmp_path, eval_job)[-3000:]
    assert int(job_info(eval_job, slurm)["StartTime"].replace("-", "").replace(":", "").replace("T", "")) >= \
        int(job_info(train_job, slurm)["EndTime"].replace("-", "").replace(":", "").replace("T", ""))
    assert (tmp_path / "pipeline" / "checkpoints" / "K3" / "last.ckpt").exists()
    assert list(logs.glob("eval/multiruns/*/*/metrics.json")), output(tmp_path, eval_job)[-3000:]


@pytest.mark.slow
def test_submitit_job_requeued_by_its_signal_resumes_exactly(slurm, tmp_path):
    """A sweep job of the submitit launcher gets USR2 (submitit's `--signal=USR2@signal_delay_s`):
    last.ckpt at the next step, then submitit's own handler requeues the job with its pickled call;
    the restart resumes by itself and ends with the uninterrupted adapters, in one MLflow run."""
    steps = ["trainer.max_steps=100", "trainer.val_check_interval=50", "data.batch_size=8"]
    reference = run_train(*TOY, *steps, "task_name=reference", log_dir=tmp_path / "ref", timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (ref_run,) = (tmp_path / "ref" / "reference" / "runs").iterdir()
    logs = tmp_path / "logs"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", f"paths.log_dir={logs}", *TOY, *steps,
           "task_name=sweep", "seed=0", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10",
           "hydra.launcher.partition=debug"]
    sweep = subprocess.Popen(cmd, cwd=ROOT, env=job_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        last = wait_until(lambda: next(iter(logs.glob("sweep/multiruns/*/0/checkpoints/K2/last.ckpt")), None),
                          timeout=timeout(300), poll=0.05, what="the first last.ckpt")
        (job,) = run(["squeue", "-h", "-o", "%i"], slurm).split()
        run(["scancel", "--signal=USR2", job], slurm)
        out, _ = sweep.communicate(timeout=timeout(600))
    finally:
        sweep.kill()
    assert sweep.returncode == 0, out[-3000:]
    assert int(job_info(job, slurm)["Restarts"]) == 1
    assert_same(adapters(ref_run), adapters(last.parents[2]))
    (mlrun,) = mlflow_runs(logs, "sweep")
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["loramcl.resumes"] == "1"


@pytest.mark.slow
def test_ddp_job_requeued_before_its_limit_resumes_exactly(slurm, tmp_path):
    """train_ddp.sh on 2 tasks gets USR1 in every task (`--signal=USR1@300`): all ranks stop at the
    same step, rank 0 saves and requeues, the restarted 2-task job resumes, and the adapters are those
    of an uninterrupted 2-task job (the same all-reduce order; against 1 process with the doubled
    batch, Adam amplifies the reduction-order noise to ~3e-4 over 100 steps)."""
    common = [*TOY, "trainer.max_steps=100", "trainer.val_check_interval=50", "data.batch_size=4",
              "data.num_train_batches=200"]
    logs = tmp_path / "logs"
    two_tasks = ["--partition=debug", "--gres=none", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G"]
    job = sbatch("train_ddp.sh", job_env(slurm, TRAINER="ddp_cpu"), two_tasks,
                 [*common, "task_name=two", f"paths.log_dir={logs}"], tmp_path)
    run_dir = logs / "two" / "runs" / f"slurm-{job}"
    wait_until(lambda: (run_dir / "checkpoints" / "K2" / "last.ckpt").exists(), timeout=timeout(300),
               poll=0.05, what="the first last.ckpt")
    run(["scancel", "--signal=USR1", job], slurm)
    reference = sbatch("train_ddp.sh", job_env(slurm, TRAINER="ddp_cpu"), two_tasks,  # runs once the cores are free
                       [*common, "task_name=reference", f"paths.log_dir={logs}"], tmp_path)
    assert wait_for(job, slurm, timeout=600, restarts=1) == "COMPLETED", output(tmp_path, job)[-3000:]
    assert wait_for(reference, slurm, timeout=600) == "COMPLETED", output(tmp_path, reference)[-3000:]
    log = output(tmp_path, job)
    assert f"SLURM job {job} requeued: it resumes" in log and "restart 1: train.py" in log, log[-3000:]
    assert_same(adapters(logs / "reference" / "runs" / f"slurm-{reference}"), adapters(run_dir), tol=1e-6)
    (mlrun,) = mlflow_runs(logs, "two")
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["loramcl.resumes"] == "1"
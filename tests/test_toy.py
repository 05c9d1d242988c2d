"""The toy experiment end to end (paper Figures 1 and 4) against the issue's acceptance thresholds.

The default suite runs the default command shortened to 50 steps (it runs, writes and logs);
`-m slow` runs the default job in full against the thresholds and the whole matrix: transition1
and transition2 (relaxed-wta and wta) for seeds 0, 1, 2.

One job trains two models for 1000 steps each: about 3 minutes on 2 CPU cores, many more on a busy
machine; the subprocess limit is 40 minutes (times LORAMCL_TEST_TIMEOUT_SCALE, see helpers.py).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from loramcl.toy.acceptance import check_summary
from helpers import run_train

MATRIX = [(exp, mode, seed) for seed in (0, 1, 2)
          for exp, mode in (("transition1", None), ("transition2", None), ("transition2", "wta"))]


def _run_and_check(tmp_path, experiment, mode, seed, logged=False):
    overrides = [f"experiment={experiment}", f"seed={seed}", "extras.print_config=false", "callbacks=none"]
    if not logged:
        overrides.append("logger=none")
    if mode:
        overrides.append(f"mcl.mode={mode}")
    proc = run_train(*overrides, log_dir=tmp_path, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(tmp_path.glob(f"{experiment}/runs/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    failures = {k: detail for k, (ok, detail) in check_summary(summary).items() if not ok}
    assert not failures, failures
    assert (run_dir / "loss.png").stat().st_size > 10_000 and (run_dir / "matrices.png").stat().st_size > 10_000
    return summary


def test_default_command_runs_and_logs(tmp_path):
    """`python train.py` (shortened to 50 steps a model): both models train, the figures and the
    summary are written, MLflow holds one run per job with a nested run per model."""
    proc = run_train("trainer.max_steps=50", "extras.print_config=false", "callbacks=none", log_dir=tmp_path,
                     timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next(tmp_path.glob("transition1/runs/*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    mcl = summary["models"]["mcl"]
    assert len(mcl["win_rates"]) == 2 and all(0.2 < r < 0.8 for r in mcl["win_rates"])  # both hypotheses used
    assert (run_dir / "loss.png").stat().st_size > 10_000 and (run_dir / "matrices.png").stat().st_size > 10_000
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = dict(db.execute("select name, run_uuid from runs").fetchall())
        parent_tags = dict(db.execute("select key, value from tags where run_uuid = ?", (runs["mcl"],)).fetchall())
        logged = dict(db.execute("select key, value from latest_metrics where run_uuid = ?",
                                 (runs["transition1_seed0"],)).fetchall())
    assert set(runs) == {"transition1_seed0", "mle", "mcl"}
    assert parent_tags["mlflow.parentRunId"] == runs["transition1_seed0"]
    assert abs(logged["mcl/eval_wta_loss"] - mcl["eval_wta_loss"]) < 1e-9
    artifacts = {p.name for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()}
    assert {"summary.json", "loss.png", "matrices.png"} <= artifacts
    assert list(tmp_path.glob("transition1/runs/*/tensorboard/summary/events.out.tfevents.*"))


@pytest.mark.slow
def test_default_job_transition1_seed0(tmp_path):
    """The default job in full (1000 steps a model, ~7 min here) against the acceptance thresholds."""
    summary = _run_and_check(tmp_path, "transition1", None, 0)
    assert all(0.3 < r < 0.7 for r in summary["models"]["mcl"]["win_rates"])  # no collapse


@pytest.mark.slow
@pytest.mark.parametrize("experiment,mode,seed", MATRIX)
def test_toy_matrix(tmp_path, experiment, mode, seed):
    _run_and_check(tmp_path, experiment, mode, seed)


def test_runner_receives_settings_and_checks_once_per_run(tmp_path, monkeypatch):
    """The runner gets the validated settings (not the raw config), and the preflight checks run
    once for the run's two models; the MLE model gets K = 1 and the run's own numbers."""
    import loramcl.preflight
    import loramcl.toy.runner as runner
    import loramcl.training as training
    from helpers import compose_train
    from loramcl.schema import TrainSettings, validate_train

    cfg = compose_train("trainer.max_steps=3", "logger=none", "callbacks=none", "extras.print_config=false",
                        "extras.flush_denormal=false", "extras.num_threads=1",
                        f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}")
    settings = validate_train(cfg)
    calls = {"preflight": 0, "check_config": 0}
    fits = []
    original_preflight, original_check, original_fit = loramcl.preflight.preflight, loramcl.preflight.check_config, \
        training.fit_model

    def counted_preflight(*args, **kwargs):
        calls["preflight"] += 1
        return original_preflight(*args, **kwargs)

    def counted_check(*args, **kwargs):
        calls["check_config"] += 1
        return original_check(*args, **kwargs)

    def recorded_fit(s, name, num_hypotheses=None, **kwargs):
        assert isinstance(s, TrainSettings)
        fits.append((name, num_hypotheses, s.lora.r))
        return original_fit(s, name, num_hypotheses=num_hypotheses, **kwargs)

    monkeypatch.setattr(runner, "preflight", counted_preflight)
    monkeypatch.setattr(training, "preflight", counted_preflight)
    monkeypatch.setattr(loramcl.preflight, "check_config", counted_check)
    monkeypatch.setattr(training, "fit_model", recorded_fit)
    metrics = runner.run_toy(settings)
    assert calls == {"preflight": 1, "check_config": 1}
    assert fits == [("mle", 1, settings.lora.r), ("mcl", settings.mcl.num_hypotheses, settings.lora.r)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["seed"] == settings.top.seed and [len(m["win_rates"]) for m in summary["models"].values()] == [1, 2]
    assert metrics["val/wta_loss"] == summary["models"]["mcl"]["eval_wta_loss"]

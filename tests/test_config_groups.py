"""Every config file composes, and the decoding config group and the decoding-method registry agree.

Globs, not lists: a new experiment or decoding file is covered the moment it is added.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from helpers import CONFIGS, compose_train
from loramcl.config import validated_configs
from loramcl.decoding.methods import METHODS, DecodingSpec
from loramcl.errors import ConfigError
from loramcl.schemes import Scheme

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIGS) / "experiment").glob("*.yaml"))
DECODINGS = sorted(p.stem for p in (Path(CONFIGS) / "decoding").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    mcl, lora = validated_configs(cfg)  # every value passes the dataclass checks
    assert cfg.task_name == experiment  # runs land in logs/<experiment>/
    assert Scheme.of_config(cfg).kind in ("mle", "mcl", "moe")
    assert cfg.task.runner and cfg.model and cfg.data


def _decoding(name: str) -> DecodingSpec:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("eval", overrides=[f"decoding={name}", "ckpt_path=unused"])
    return DecodingSpec.from_config(cfg.decoding)  # every key validated


@pytest.mark.parametrize("name", DECODINGS)
def test_every_decoding_config_is_a_registered_method(name):
    spec = _decoding(name)
    assert spec.name == name  # the name logged to MLflow is the file's
    assert spec.method in METHODS
    for K in (2, 3, 5):  # every method decodes something, but test_loss (teacher-forced NLL only)
        assert spec.forward_passes(K) >= (0 if spec.method == "teacher_forced" else 1) and spec.describe(K)


def test_registry_and_config_group_name_the_same_methods():
    configured = {_decoding(name).method for name in DECODINGS}
    assert configured == set(METHODS), (f"registered without a config: {set(METHODS) - configured}; "
                                        f"configured but not registered: {configured - set(METHODS)}")


def test_unknown_decoding_key_is_an_error():
    with pytest.raises(ConfigError, match=r"decoding has no key 'num_beam' \(did you mean num_beams\?\)"):
        DecodingSpec.from_config({"name": "x", "method": "beam", "num_beam": 3})


def test_the_schema_knows_every_decoding_method():
    from loramcl.decoding.methods import SAMPLERS
    from loramcl.schema import evaluation

    assert set(evaluation.METHODS) == set(METHODS) and set(evaluation.SAMPLERS) == set(SAMPLERS)


def test_slurm_launcher_takes_cluster_defaults_from_configs_local(tmp_path):
    """configs/local/slurm.yaml (git-ignored) sets the cluster's launcher values; the command line
    still wins; tasks_per_node follows gpus_per_node (one rank per GPU)."""
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "slurm.yaml").write_text("partition: a100\naccount: myproject\ngpus_per_node: 4\n")
    cfg = compose_train("hydra/launcher=slurm", f"hydra.searchpath=[file://{tmp_path}]", "hydra.launcher.account=other",
                        hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert (launcher.partition, launcher.account, launcher.tasks_per_node) == ("a100", "other", 4)
    assert launcher.signal_delay_s == 300 and launcher.max_num_timeout == 20

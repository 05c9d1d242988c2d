"""Settings and session-wide fixtures shared by the whole test suite.

Tiny bases and synthetic data sets are built once per test session into one data folder
(`demo_data`, filled by `translation_assets`, `audio_assets`, `bilingual_assets`), and the tiny demo
runs that several test files evaluate are trained once (`translation_runs`, `audio_mcl_run`). A test
that trains a demo passes `paths.data_dir=<demo_data>` with the matching asset overrides of helpers.py.
"""

import pytest
import torch

from helpers import (AUDIO_ASSETS, AUDIO_DEMO, BILINGUAL_ASSETS, TRANSLATION_ASSETS, TRANSLATION_DEMO,
                     build_demo_assets, train_demo)

# The tests run tiny models: one intra-op thread is faster there, and with two threads on the
# 2-core machines every op stalls (suite 7 s -> 50 s) as soon as another process takes a core.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _process_wide_torch_settings():
    """A test that runs a runner in process (apply_extras) may switch on flush-to-zero, which is
    process-wide: later tests (hypothesis' subnormal floats) would see it. Restored after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """One data folder for the whole session; the `*_assets` fixtures fill it."""
    return tmp_path_factory.mktemp("demo_data")


@pytest.fixture(scope="session")
def translation_assets(demo_data, tmp_path_factory):
    """`demo_data` holding the synthetic translation set and tiny ALMA base (TRANSLATION_ASSETS)."""
    return build_demo_assets("demo_translation_mcl", TRANSLATION_ASSETS, demo_data,
                             tmp_path_factory.mktemp("build_translation"))


@pytest.fixture(scope="session")
def audio_assets(demo_data, tmp_path_factory):
    """`demo_data` holding the synthetic audio set and tiny Qwen2-Audio base (AUDIO_ASSETS)."""
    return build_demo_assets("demo_audio_mcl", AUDIO_ASSETS, demo_data, tmp_path_factory.mktemp("build_audio"))


@pytest.fixture(scope="session")
def bilingual_assets(demo_data, tmp_path_factory):
    """`demo_data` holding the full bilingual shapes set and tiny LLaVA-NeXT base (600 steps: minutes)."""
    return build_demo_assets("demo_bilingual_mcl", BILINGUAL_ASSETS, demo_data,
                             tmp_path_factory.mktemp("build_bilingual"), seconds=3600)


@pytest.fixture(scope="session")
def translation_runs(translation_assets, tmp_path_factory) -> dict:
    """Tiny translation runs (MCL K = 3, MLE, MoE 3 experts) sharing one data folder and base."""
    root = tmp_path_factory.mktemp("translation_runs")
    return {scheme: train_demo(f"demo_translation_{scheme}", TRANSLATION_DEMO, translation_assets, root)
            for scheme in ("mcl", "mle", "moe")}


@pytest.fixture(scope="session")
def audio_mcl_run(audio_assets, tmp_path_factory):
    """A tiny audio-captioning LoRA-MCL run (K = 3, tiny Qwen2-Audio)."""
    return train_demo("demo_audio_mcl", AUDIO_DEMO, audio_assets, tmp_path_factory.mktemp("audio_runs"))


from slurm_cluster import ClusterError, cluster_dir, start_cluster, stop_cluster  # noqa: E402


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster for the session (scripts/slurm/local_cluster.sh, in a fresh
    temp folder): yields the env dict to run sbatch / squeue / submitit with (SLURM_CONF, PATH with
    the `sacct` stand-in); stopped at the end, even on failure. Installs SLURM when missing (root)."""
    folder = cluster_dir(tmp_path_factory.mktemp("slurm"))
    try:
        env, error = start_cluster(folder), None
    except ClusterError as e:
        env, error = None, str(e)
    if error is not None:
        try:
            stop_cluster(folder)  # whatever did start
        except ClusterError:
            pass
        pytest.fail(f"the test SLURM cluster did not start: {error}\ndeselect them with -m 'not slow and not slurm'", pytrace=False)
    try:
        yield env
    finally:
        stop_cluster(folder)


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Selenium) for the tests that open pages (browser_driver.py)."""
    from browser_driver import chromium

    yield from chromium()

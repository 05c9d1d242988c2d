"""Settings and session-wide fixtures shared by the whole test suite.

Tiny bases and synthetic data sets are built once per test session (`demo_data`) and the tiny demo
runs that several test files evaluate are trained once (`translation_runs`, `audio_mcl_run`).
"""

import pytest
import torch

from helpers import AUDIO_DEMO, TRANSLATION_DEMO, train_demo

# The tests run tiny models: one intra-op thread is faster there, and with two threads on the
# 2-core machines every op stalls (suite 7 s -> 50 s) as soon as another process takes a core.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """One data folder for the whole session: synthetic sets and tiny bases are built on first use."""
    return tmp_path_factory.mktemp("demo_data")


@pytest.fixture(scope="session")
def translation_runs(demo_data, tmp_path_factory) -> dict:
    """Tiny translation runs (MCL K = 3, MLE, MoE 3 experts) sharing one data folder and base."""
    root = tmp_path_factory.mktemp("translation_runs")
    return {scheme: train_demo(f"demo_translation_{scheme}", TRANSLATION_DEMO, demo_data, root)
            for scheme in ("mcl", "mle", "moe")}


@pytest.fixture(scope="session")
def audio_mcl_run(demo_data, tmp_path_factory):
    """A tiny audio-captioning LoRA-MCL run (K = 3, tiny Qwen2-Audio)."""
    return train_demo("demo_audio_mcl", AUDIO_DEMO, demo_data, tmp_path_factory.mktemp("audio_runs"))

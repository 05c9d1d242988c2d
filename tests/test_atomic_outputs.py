"""Safe by construction: a built artifact appears under its final name only when complete, and a
results file is never replaced by one with fewer complete lines.

Interruptions are real: a child process is SIGKILLed right after the first file of a build is saved
(the crash trigger is the only thing patched, in the child) or while it streams an HDF5 split. The
artifacts are real (tiny bases pre-trained by `loramcl.tiny_base`, HDF5 splits, peft exports of a
tiny Llama) and so are the results (a sqlite MLflow store filled with evaluation runs, the
`reproduce.py` and `collect_results.py` command lines).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import pytest
import torch

from helpers import ROOT, run_script, timeout

TESTS = Path(__file__).resolve().parent


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder`."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def partials(folder: Path, name: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{name}.partial-*"))


def run_python(code: str, seconds: float = 300) -> subprocess.CompletedProcess:
    """`python -c code` with the tests folder importable (tiny_models)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(ROOT / "src")]), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout(seconds))


# Code run in a child before the build: the first save of the kind named is the last thing it does.
DIE_AFTER_FIRST_MODEL_SAVE = """
import os, signal, transformers
_save = transformers.PreTrainedModel.save_pretrained
def _save_then_die(self, *args, **kwargs):
    _save(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
transformers.PreTrainedModel.save_pretrained = _save_then_die
"""
DIE_AFTER_FIRST_SAFETENSORS = """
import os, signal, safetensors.torch
_save = safetensors.torch.save_file
def _save_then_die(*args, **kwargs):
    _save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = _save_then_die
"""


# ----------------------------------------------------------------------------------------------------
# The primitives: a second builder never clobbers; stale partials of dead processes are removed


def test_a_second_builder_keeps_the_first_ones_artifact(tmp_path):
    from loramcl.data.hdf5 import AudioCaptionH5, AudioCaptionWriter
    from loramcl.utils.atomic import staged

    final = tmp_path / "base"
    first, second = staged(final).__enter__(), staged(final).__enter__()  # two builders at once
    (first.path / "weights").write_text("first")
    (second.path / "weights").write_text("second")
    first.__exit__(None, None, None)  # the first one finishes first
    second.__exit__(None, None, None)
    assert first.placed and not second.placed
    assert (final / "weights").read_text() == "first" and partials(tmp_path, "base") == []

    target = tmp_path / "toy_train.hdf5"  # the same for an HDF5 split written by two processes
    a = AudioCaptionWriter(target, dataset="toy", split="train")
    b = AudioCaptionWriter(target, dataset="toy", split="train")
    a.add("a.wav", torch.ones(4).numpy(), ["first"])
    b.add("b.wav", torch.ones(4).numpy(), ["second"])
    a.close()
    with pytest.raises(FileExistsError, match=r"toy_train.hdf5 already exists; pass overwrite=True"):
        b.close()
    assert AudioCaptionH5(target).ids == ["a.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "toy_train.hdf5"]


def test_only_partials_of_dead_processes_are_removed(tmp_path, caplog):
    from loramcl.utils.atomic import partial_path, remove_stale_partials

    final = tmp_path / "alma"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        mine = partial_path(final)
        live = Path(str(mine).replace(f"-{os.getpid()}-", f"-{sleeper.pid}-"))
        other_host = mine.with_name(f"alma.partial-elsewhere-{sleeper.pid}-0123abcd")
        for folder in (mine, live, other_host):
            folder.mkdir()
        assert remove_stale_partials(final) == []  # this process, a live one, another machine's
        sleeper.kill()
        sleeper.wait()
        with caplog.at_level(logging.WARNING, logger="loramcl.utils.atomic"):
            assert remove_stale_partials(final) == [live]
        assert caplog.messages == [f"removed {live}, left by process {sleeper.pid} which no longer runs "
                                   f"(an interrupted build)"]
        assert mine.is_dir() and other_host.is_dir() and not live.exists()
    finally:
        sleeper.kill()


# ----------------------------------------------------------------------------------------------------
# Tiny bases


@pytest.fixture(scope="module")
def translation_data(tmp_path_factory) -> Path:
    from loramcl.data.synthetic import make_translation

    root = tmp_path_factory.mktemp("translation")
    make_translation(root, sizes=(32, 4, 4))
    return root


def auto_pretrain(data: Path) -> dict:
    return {"function": "loramcl.tiny_base.pretrain_alma", "data_root": str(data), "name": "synth_en_de",
            "steps": 2, "batch_size": 8, "vocab_size": 300, "seed": 0}


def test_tiny_base_killed_after_its_first_save_is_rebuilt(translation_data, tmp_path, caplog):
    from loramcl.backbones import check_available, from_pretrained
    from loramcl.tiny_base import incomplete_reason

    out = tmp_path / "tiny_bases" / "alma"
    args = {k: v for k, v in auto_pretrain(translation_data).items() if k != "function"}
    proc = run_python(DIE_AFTER_FIRST_MODEL_SAVE + f"""
from loramcl.tiny_base import pretrain_alma
pretrain_alma(out_dir={str(out)!r}, **{args!r})
""")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()  # nothing under the final name
    (left,) = partials(out.parent, "alma")
    assert {"config.json", "model.safetensors"} <= {p.name for p in left.iterdir()}
    assert incomplete_reason(left) == "no tiny_base.json"
    check_available(str(out), auto_pretrain(translation_data))  # absent: will be built

    with caplog.at_level(logging.INFO):
        model = from_pretrained(str(out), auto_pretrain=auto_pretrain(translation_data))  # the next run
    assert type(model).__name__ == "LlamaForCausalLM"
    assert [m for m in caplog.messages if "no longer runs" in m] == [
        f"removed {left}, left by process {left.name.split('-')[-2]} which no longer runs (an interrupted build)"]
    assert incomplete_reason(out) is None and partials(out.parent, "alma") == []
    assert json.loads((out / "tiny_base.json").read_text())["steps"] == 2


def test_incomplete_tiny_base_is_named_and_never_used(translation_data, tmp_path):
    from loramcl.backbones import check_available, from_pretrained

    data_dir = tmp_path / "data"
    out = data_dir / "tiny_bases" / "alma"
    proc = run_python(DIE_AFTER_FIRST_MODEL_SAVE + f"""
from loramcl.tiny_base import pretrain_alma
pretrain_alma(out_dir={str(out)!r}, data_root={str(translation_data)!r}, name="synth_en_de", steps=2, batch_size=8,
              vocab_size=300)
""")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    (left,) = partials(out.parent, "alma")
    left.rename(out)  # what a build that saves in place left behind: config and weights, no marker
    before = tree(out)
    message = (f"tiny base {out} is incomplete (no tiny_base.json; tiny_base.json is written last: an interrupted "
               f"pre-training?): delete that folder and run again to rebuild it")
    for attempt in (lambda: check_available(str(out), auto_pretrain(translation_data)),
                    lambda: from_pretrained(str(out), auto_pretrain=auto_pretrain(translation_data))):
        with pytest.raises(FileNotFoundError) as err:
            attempt()
        assert str(err.value) == message
    (out / "model.safetensors").rename(tmp_path / "weights")  # without auto_pretrain: the weights are required
    with pytest.raises(FileNotFoundError, match=r"alma is incomplete: config.json but no weights \(model.safetensors, "):
        check_available(str(out))
    (tmp_path / "weights").rename(out / "model.safetensors")
    assert tree(out) == before

    # the command line says the same in one line, and rebuilds it with --overwrite
    script = [ROOT / "scripts" / "pretrain_tiny_base.py", "alma", "--data", translation_data, "--out", out,
              "--steps", "2"]
    proc = run_script(script, seconds=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {out} holds an incomplete tiny base (no tiny_base.json: an interrupted pre-training?); "
        f"pass overwrite=True (--overwrite) to rebuild it, or delete it"]
    assert tree(out) == before
    proc = run_script([*script, "--overwrite"], seconds=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "tiny_base.json").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["alma"]


def test_train_refuses_an_incomplete_tiny_base_in_one_line(translation_data, tmp_path):
    data_dir = tmp_path / "data"
    out = data_dir / "tiny_bases" / "alma"
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    proc = run_script([ROOT / "train.py", "experiment=demo_translation_mcl", "model.auto_pretrain.steps=10",
                       "data.auto_prepare.sizes=[64,8,8]", "debug=fdr", "logger=none", f"paths.data_dir={data_dir}",
                       f"paths.log_dir={tmp_path / 'logs'}"], seconds=600)
    assert proc.returncode != 0
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: tiny base {out} is incomplete (no model.safetensors or tiny_base.json; "
                     f"tiny_base.json is written last: an interrupted pre-training?): delete that folder and run "
                     f"again to rebuild it"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # neither used nor replaced


# ----------------------------------------------------------------------------------------------------
# Prepared splits


def test_split_generation_killed_midway_leaves_no_file_and_is_redone(tmp_path, caplog):
    from loramcl.data.hdf5 import check_split_files
    from loramcl.data.synthetic import make_audio

    out = tmp_path / "audio"
    child = subprocess.Popen(
        [sys.executable, "-c", f"from loramcl.data.synthetic import make_audio; "
                               f"make_audio({str(out)!r}, sizes=(5000, 1, 1))"],
        env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout(120)
        while not partials(out, "synth_audio_train.hdf5") and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few clips written
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
    finally:
        child.kill()
        child.wait()
    (left,) = partials(out, "synth_audio_train.hdf5")
    assert left.stat().st_size > 0 and not list(out.glob("*.hdf5"))  # nothing under a final name

    with caplog.at_level(logging.WARNING, logger="loramcl.utils.atomic"):
        paths = make_audio(out, sizes=(6, 2, 2))
    assert [m for m in caplog.messages if "no longer runs" in m] == [
        f"removed {left}, left by process {child.pid} which no longer runs (an interrupted build)"]
    assert check_split_files(out, "synth_audio") == {s: paths[s] for s in ("train", "val", "test")}
    assert sorted(p.name for p in out.iterdir()) == [f"synth_audio_{s}.hdf5" for s in ("test", "train", "val")]


def test_incomplete_split_is_named_never_used_or_replaced(tmp_path, capsys):
    from loramcl.data.modules import TranslationDataModule
    from loramcl.data.synthetic import make_translation

    make_translation(tmp_path, sizes=(8, 2, 2))
    train = tmp_path / "synth_en_de_train.hdf5"
    with h5py.File(train, "a") as f:  # the layout without the attribute the writers set last
        del f.attrs["num_items"]
    before = sha256(train)
    spec = importlib.util.spec_from_file_location("prepare_data_cli", ROOT / "scripts" / "prepare_data.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    hint = "python scripts/prepare_data.py ..."
    assert cli.main(["check", "--root", str(tmp_path), "--name", "synth_en_de"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {train}: the file is incomplete (no num_items attribute, which is written last: an "
        f"interrupted preparation?); delete it and prepare it again with: {hint}"]
    module = TranslationDataModule(root=str(tmp_path), name="synth_en_de", processor="unused",
                                   auto_prepare={"function": "make_translation", "sizes": [8, 2, 2]},
                                   prepare_hint="python scripts/prepare_data.py synthetic-translation")
    with pytest.raises(ValueError, match=r"synth_en_de_train.hdf5: the file is incomplete \(no num_items attribute"):
        module.check()
    assert sha256(train) == before

    train.unlink()  # a missing split is generated again by the DataModule, as a full generation writes it
    module.check()
    assert len(module.reader(train)) == 8 and not partials(tmp_path, "synth_en_de_train.hdf5")


# ----------------------------------------------------------------------------------------------------
# peft exports


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_llama

    folder = tmp_path_factory.mktemp("base")
    tiny_llama().save_pretrained(str(folder))
    return folder


MCL_MODEL = """
import torch
from transformers import AutoModelForCausalLM
from loramcl import LoRAConfig, MCLConfig, MCLModel

def mcl_model(base_dir, seed=0):
    lora = LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
    model = MCLModel(AutoModelForCausalLM.from_pretrained(str(base_dir)), MCLConfig(num_hypotheses=3), lora)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()
"""
namespace: dict = {}
exec(MCL_MODEL, namespace)
mcl_model = namespace["mcl_model"]


def test_export_killed_after_its_first_adapter_leaves_nothing_and_is_redone(base_dir, tmp_path, caplog):
    from loramcl.peft_io import export_all, load_peft_state

    out = tmp_path / "export"
    proc = run_python(MCL_MODEL + DIE_AFTER_FIRST_SAFETENSORS + f"""
from loramcl.peft_io import export_all
export_all(mcl_model({str(base_dir)!r}), {str(out)!r})
""")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    (left,) = partials(tmp_path, "export")
    assert [p.name.split(".partial-")[0] for p in left.iterdir()] == ["hyp_0"]  # hyp_0 itself still partial

    model = mcl_model(base_dir)
    with caplog.at_level(logging.WARNING, logger="loramcl.utils.atomic"):
        paths = export_all(model, out)
    assert [m for m in caplog.messages if "no longer runs" in m] == [
        f"removed {left}, left by process {left.name.split('-')[-2]} which no longer runs (an interrupted build)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert sorted(p.name for p in out.iterdir()) == ["hyp_0", "hyp_1", "hyp_2", "mcl_export.json"]
    _, pairs = load_peft_state(paths[2])
    name = model.target_names[0]
    assert torch.equal(pairs[name][1], model.base_model.get_submodule(name).lora_B[2])


def test_incomplete_adapter_folder_is_named_never_loaded(base_dir, tmp_path):
    from loramcl.peft_io import export_all, import_peft_adapters, load_peft_state

    out = tmp_path / "export"
    export_all(mcl_model(base_dir), out)
    (out / "hyp_1" / "adapter_model.safetensors").unlink()  # an adapter folder saved in place, cut short
    before = tree(out)
    incomplete = (f"{out / 'hyp_1'} is an incomplete peft adapter (adapter_config.json but no "
                  f"adapter_model.safetensors: an interrupted export?); export it again "
                  f"(scripts/export_peft.py ... --overwrite)")
    with pytest.raises(FileNotFoundError) as err:
        load_peft_state(out / "hyp_1")
    assert str(err.value) == incomplete
    with pytest.raises(FileNotFoundError) as err:
        import_peft_adapters(mcl_model(base_dir), [out / f"hyp_{k}" for k in range(3)])
    assert str(err.value) == incomplete
    with pytest.raises(FileExistsError) as err:
        export_all(mcl_model(base_dir, seed=1), out, hypotheses=[1])
    assert str(err.value) == (f"{out / 'hyp_1'} is not empty; pass overwrite=True (--overwrite) to replace it (it "
                              f"holds an incomplete adapter: adapter_config.json but no adapter_model.safetensors, "
                              f"from an interrupted export?)")
    assert tree(out) == before
    export_all(mcl_model(base_dir, seed=1), out, hypotheses=[1], overwrite=True)
    assert load_peft_state(out / "hyp_1")[1] and sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# ----------------------------------------------------------------------------------------------------
# Results: reproduce.py --collect


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_reproduce_collect_never_replaces_results_by_fewer(tmp_path, capsys):
    from loramcl.reproduce.main import collect, compose_all, main
    from loramcl.identity import EVAL_KEY_TAG, METRICS_VERSION, METRICS_VERSION_TAG
    from loramcl.reproduce.state import SWEEP_TAG

    def current(ev) -> dict:  # computed now: the table's settings, today's metric definitions
        return {EVAL_KEY_TAG: ev.key, METRICS_VERSION_TAG: str(METRICS_VERSION)}
    from loramcl.utils.mlflow_store import MLflowRun

    log_dir, results = tmp_path / "logs", tmp_path / "results"
    cfg, table = compose_all(ROOT, ["table=audio_loss_vs_k", f"paths.log_dir={log_dir}", f"results_dir={results}"])
    ours = {"mle_r8/Clotho": 2.9, "mcl_k5/Clotho": 2.5, "mcl_k5/AudioCaps": 2.1}
    for row in table.rows:
        if row.id in ours:
            (ev,) = row.evaluations
            run = MLflowRun(str(cfg.mlflow_uri), table.experiment, str(log_dir / "mlartifacts"), row.id,
                            tags={SWEEP_TAG: ev.sweep, "loramcl.kind": "eval", **current(ev)})
            run.log_params({"eval.decoding": ev.decoding, "eval.method": "Test loss (teacher-forced)"})
            run.log_metrics({"oracle_nll": ours[row.id]})
            run.finish()
    collect(table, cfg, log_dir, echo=lambda *a: None)
    folder = results / "audio_loss_vs_k"
    table_csv = folder / "audio_loss_vs_k.csv"
    assert sum(r["status"] == "done" for r in read_csv(table_csv)) == 3 and len(read_csv(table_csv)) == 14
    before = tree(folder)

    wrong = tmp_path / "wrong_logs"
    args = [ROOT / "scripts" / "reproduce.py", "table=audio_loss_vs_k", f"paths.log_dir={wrong}",
            f"results_dir={results}", "--collect"]
    proc = run_script(args, seconds=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {table_csv} holds 3 complete line(s), the new results only 0 (of 14): not replaced, nothing "
        f"written (read from paths.log_dir={wrong} and mlflow_uri=sqlite:///{wrong}/mlflow.db: are they right?); "
        f"pass --force to replace it anyway (the current files are then kept in {folder / 'previous'}/<time>/)"]
    assert tree(folder) == before and not wrong.exists()  # byte for byte, and nothing created

    # --force replaces them, keeping the previous files
    assert main([str(a) for a in args[1:]] + ["--force"], root=ROOT) == 0
    capsys.readouterr()
    assert sum(r["status"] == "done" for r in read_csv(table_csv)) == 0
    (kept,) = (folder / "previous").iterdir()
    assert tree(kept) == {name: digest for name, digest in before.items() if "/" not in name}
    # the right log folder again: 3 >= 0 complete lines, replaced without --force (the forced files kept too)
    assert main(["table=audio_loss_vs_k", f"paths.log_dir={log_dir}", f"results_dir={results}", "--collect"],
                root=ROOT) == 0
    assert "3/14 lines complete" in capsys.readouterr().out
    assert sha256(table_csv) == before["audio_loss_vs_k.csv"]
    assert len(list((folder / "previous").iterdir())) == 2
    assert not [p for p in folder.iterdir() if ".partial-" in p.name]


# ----------------------------------------------------------------------------------------------------
# Results: collect_results.py


def test_collect_results_never_replaces_results_by_fewer(tmp_path, capsys):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from loramcl.utils.mlflow_store import get_experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = "eval_fake"
    client = MlflowClient(uri)
    exp_id = get_experiment_id(uri, experiment, str(tmp_path / "artifacts"))
    run_ids = []
    for i, (scheme, decoding) in enumerate((("LoRA-MLE", "mle_beam"), ("LoRA-MCL", "mcl_beam1"),
                                           ("LoRA-MCL", "mcl_beam3"))):
        run = client.create_run(exp_id, start_time=1_700_000_000_000 + i, tags={"loramcl.kind": "eval"})
        params = {"eval.scheme": scheme, "eval.decoding": decoding, "eval.method": decoding,
                  "eval.num_hypotheses": "3", "eval.task_type": "translation"}
        client.log_batch(run.info.run_id, metrics=[Metric("oracle_bleu", 30.0 + i, 0, 0),
                                                   Metric("pairwise_bleu", 50.0 - i, 0, 0)],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id, "FINISHED")
        run_ids.append(run.info.run_id)
    spec = importlib.util.spec_from_file_location("collect_results_cli", ROOT / "scripts" / "collect_results.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "results"
    argv = ["--tracking-uri", uri, "--experiment", experiment, "--out", str(out)]
    assert cli.main(argv) == 0
    table_csv = out / f"{experiment}.csv"
    assert len(read_csv(table_csv)) == 3
    before = tree(out)
    capsys.readouterr()

    client.delete_run(run_ids[1])  # e.g. another store, or runs deleted since: 1 complete line left
    client.delete_run(run_ids[2])
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {table_csv} holds 3 complete line(s), the new results only 1 (of 1): not replaced, nothing "
        f"written (read from the experiment {experiment!r} of the MLflow store: is it the right store?); pass "
        f"--force to replace it anyway (the current files are then kept in {out / 'previous'}/<time>/)"]
    assert tree(out) == before

    assert cli.main(argv + ["--force"]) == 0
    assert len(read_csv(table_csv)) == 1
    (kept,) = (out / "previous").iterdir()
    assert tree(kept) == before
    assert not [p for p in out.iterdir() if ".partial-" in p.name]

"""predict.py on the demo runs: an audio clip given as a file path, translation sources from a text
file; its answers are eval.py's for the same inputs with the same decoding (the run's natural one
by default: K hypotheses for LoRA-MCL, beam K for LoRA-MLE)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import eval_predictions, run_eval, run_script


def _predict(run, tmp_path, *overrides):
    out = tmp_path / "answers.jsonl"
    proc = run_script(["predict.py", f"ckpt_path={run}", f"output={out}", f"paths.log_dir={tmp_path}",
                       "generation.max_new_tokens=12", *overrides], seconds=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


@pytest.mark.slow  # 30 s; predict.py == eval.py stays in the default suite through the hand-written text task
def test_an_audio_clip_path_gets_the_evaluations_answers(audio_mcl_run, tmp_path):
    """The first test clip written as a WAV file: predict.py input=<clip.wav> gives the candidates
    eval.py decoded for that clip from the HDF5 split (mcl_beam1, the MCL run's natural decoding)."""
    import soundfile as sf

    from loramcl.data.hdf5 import AudioCaptionH5
    from loramcl.runs import RunFolder

    data = RunFolder(audio_mcl_run).config().data
    clip = AudioCaptionH5.from_split(data.root, data.name, "test")[0]
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.asarray(clip["audio"], dtype=np.float32), 16000, subtype="FLOAT")  # bit-exact samples
    ev = run_eval(f"ckpt_path={audio_mcl_run}", "decoding=mcl_beam1", "max_items=1", "metrics.semantic=false",
                  "metrics.oracle_nll=false", log_dir=tmp_path / "eval_logs")
    assert ev.returncode == 0, ev.stderr[-3000:]
    (records,) = eval_predictions(tmp_path / "eval_logs")
    answers, printed = _predict(audio_mcl_run, tmp_path, f"input={wav}")
    assert len(answers) == 1 and answers[0]["decoding"] == "mcl_beam1"
    assert answers[0]["answers"] == [c["text"] for c in records[0]["candidates"]]
    assert [c["hypothesis"] for c in answers[0]["candidates"]] == [0, 1, 2]
    assert f"[1] {wav}" in printed


@pytest.mark.slow  # about 1 min (two evaluations, two predictions); the default suite keeps the audio one
def test_translation_sources_from_a_text_file_with_the_mle_runs_beam_search(translation_runs, tmp_path):
    from loramcl.data.hdf5 import TranslationH5
    from loramcl.runs import RunFolder

    run = translation_runs["mle"]
    data = RunFolder(run).config().data
    test = TranslationH5.from_split(data.root, data.name, "test")
    sources = tmp_path / "sources.txt"
    sources.write_text("\n".join(test[i]["source"] for i in range(2)) + "\n\n")  # a blank line is no input
    ev = run_eval(f"ckpt_path={run}", "decoding=mle_beam", "max_items=2", "metrics.semantic=false",
                  "metrics.oracle_nll=false", log_dir=tmp_path / "eval_logs")
    assert ev.returncode == 0, ev.stderr[-3000:]
    (records,) = eval_predictions(tmp_path / "eval_logs")
    answers, _ = _predict(run, tmp_path, f"input_file={sources}", "batch_size=1")
    assert [a["decoding"] for a in answers] == ["mle_beam", "mle_beam"]
    assert [a["answers"] for a in answers] == [[c["text"] for c in r["candidates"]] for r in records]
    assert all(len(a["answers"]) == 3 for a in answers)  # the run's num_candidates
    # sampling: the same seed and batches draw the same candidates in both
    ev = run_eval(f"ckpt_path={run}", "decoding=mle_sampling_nucleus", "max_items=2", "batch_size=2", "seed=5",
                  "metrics.semantic=false", "metrics.oracle_nll=false", log_dir=tmp_path / "sampled")
    assert ev.returncode == 0, ev.stderr[-3000:]
    (sampled,) = eval_predictions(tmp_path / "sampled")
    (tmp_path / "answers.jsonl").unlink()
    answers, _ = _predict(run, tmp_path, f"input_file={sources}", "decoding=mle_sampling_nucleus", "batch_size=2",
                          "seed=5")
    assert [a["answers"] for a in answers] == [[c["text"] for c in r["candidates"]] for r in sampled]


@pytest.mark.slow  # about 1 min: a tiny LLaVA-NeXT is pre-trained for this test
def test_images_by_path_one_and_a_file_of_them(tmp_path):
    """A tiny image-captioning run (LLaVA-NeXT): test images written as PNG files give eval.py's
    candidates, one by `input=`, two by an `input_file` of paths."""
    import io

    from PIL import Image

    from helpers import run_train
    from loramcl.data.hdf5 import ImageCaptionH5

    data = [f"paths.data_dir={tmp_path / 'data'}"]
    proc = run_train("experiment=demo_bilingual_mcl", "task=finetune", "model.auto_pretrain.steps=5",
                     "data.auto_prepare.sizes=[16,4,4]", "trainer.max_steps=2", "callbacks=model_checkpoint",
                     "logger=none", "extras.print_config=false", *data, log_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "demo_bilingual_mcl" / "runs" / "latest"
    test = ImageCaptionH5.from_split(tmp_path / "data" / "synthetic" / "shapes", "shapes_bilingual_canonical", "test")
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"image{i}.png")
        Image.open(io.BytesIO(test.image_bytes(i))).save(paths[-1])
    ev = run_eval(f"ckpt_path={run}", "decoding=mcl_beam1", "max_items=2", "metrics.semantic=false",
                  "metrics.oracle_nll=false", *data, log_dir=tmp_path / "eval_logs")
    assert ev.returncode == 0, ev.stderr[-3000:]
    (records,) = eval_predictions(tmp_path / "eval_logs")
    one, _ = _predict(run, tmp_path, f"input={paths[0]}", *data)
    assert one[0]["answers"] == [c["text"] for c in records[0]["candidates"]] and len(one[0]["answers"]) == 2
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    (tmp_path / "answers.jsonl").unlink()
    both, _ = _predict(run, tmp_path, f"input_file={listing}", *data)
    assert [a["answers"] for a in both] == [[c["text"] for c in r["candidates"]] for r in records]

"""predict.py on the demo runs: an audio clip given as a file path, translation sources from a text
file; its answers are eval.py's for the same inputs with the same decoding (the run's natural one
by default: K hypotheses for LoRA-MCL, beam K for LoRA-MLE)."""

from __future__ import annotations

import json

import numpy as np

from helpers import eval_predictions, run_eval, run_script


def _predict(run, tmp_path, *overrides):
    out = tmp_path / "answers.jsonl"
    proc = run_script(["predict.py", f"ckpt_path={run}", f"output={out}", f"paths.log_dir={tmp_path}",
                       "generation.max_new_tokens=12", *overrides], seconds=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()], proc.stdout


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

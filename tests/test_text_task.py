"""A task of one's own (data=text): hand-written files through train.py, eval.py and predict.py,
the same rows as JSON Lines / CSV / Parquet, one-line errors on malformed files, the text metrics
against sacrebleu and pycocoevalcap, the answer-mode report, the demo's generated styles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import run_eval, run_script, run_train

# Written by hand, as a user would: references as a list or a single string, an id field, a second
# field the prompt uses, a blank line (skipped)
HAND_WRITTEN = """\
{"id": "q1", "input": "the cat sat", "tone": "calm", "references": ["a cat is sitting", "the cat rests", "cat on a mat"]}
{"id": "q2", "input": "a dog ran", "tone": "lively", "references": ["the dog is running", "a dog runs fast"]}

{"id": "q3", "input": "birds sing", "tone": "calm", "references": "some birds are singing"}
{"id": "q4", "input": "rain falls", "tone": "grey", "references": ["it is raining", "the rain falls down", "wet day"]}
{"id": "q5", "input": "the sun rose", "tone": "bright", "references": ["morning has come", "the sun is up"]}
{"id": "q6", "input": "a ship sails", "tone": "calm", "references": ["a boat at sea", "the ship is sailing"]}
"""
PROMPT = "Rewrite ({tone}): {input} =>"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """The hand-written splits and two tiny bases built from them by the real script (one with a chat template)."""
    root = tmp_path_factory.mktemp("own_task")
    files = {split: write(root / "data" / f"{split}.jsonl", HAND_WRITTEN) for split in ("train", "val", "test")}
    bases = {}
    for name, extra in (("plain", []), ("chat", ["--chat-template"])):
        bases[name] = root / "bases" / name
        proc = run_script(["scripts/pretrain_tiny_base.py", "text", "--data", files["train"], "--out", bases[name],
                           "--steps", "20", "--prompt", PROMPT, *extra], seconds=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return {"root": root, "files": files, "bases": bases}


def data_overrides(files: dict, base: Path) -> list[str]:
    return [f"data.splits.{split}={path}" for split, path in files.items()] + [f"model.name_or_path={base}"]


TRAIN = ["experiment=text", "trainer=cpu", "trainer.max_steps=6", "data.batch_size=2", "extras.print_config=false",
         "callbacks=model_checkpoint", "logger=none"]


def _train_eval_predict(task: dict, logs: Path, base: str, *extra: str) -> dict:
    proc = run_train(*TRAIN, *data_overrides(task["files"], task["bases"][base]), *extra, log_dir=logs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    latest = logs / "text" / "runs" / "latest"  # the README's form: the newest run of the task
    ev = run_eval(f"ckpt_path={latest}", "decoding=mcl_beam1", "metrics.semantic=false", log_dir=logs)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (folder,) = sorted(logs.glob("eval/runs/*"))
    records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((folder / "metrics.json").read_text())
    pred_file = write(logs / "inputs.jsonl", "".join(json.dumps({"input": r["input"], "tone": r["tone"]}) + "\n"
                                                     for r in map(json.loads, HAND_WRITTEN.split("\n")[:2])))
    out = logs / "answers.jsonl"
    pr = run_script(["predict.py", f"ckpt_path={latest}", f"input_file={pred_file}", f"output={out}",
                     f"paths.log_dir={logs}", "generation.max_new_tokens=12"], seconds=600)
    assert pr.returncode == 0, pr.stderr[-3000:]
    return {"train": proc.stdout + proc.stderr, "records": records, "metrics": metrics, "predict": pr.stdout,
            "answers": [json.loads(line) for line in out.read_text().splitlines()]}


def _check_pipeline(result: dict) -> None:
    from sacrebleu.metrics import CHRF

    records = result["records"]
    assert [r["id"] for r in records] == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert all(len(r["candidates"]) == 3 for r in records)
    assert records[2]["references"] == ["some birds are singing"]  # a single string is one reference
    # the evaluation's oracle chrF is sacrebleu's sentence chrF, best of the 3 per item, mean over items
    chrf = CHRF()
    oracle = np.mean([max(chrf.sentence_score(c["text"], r["references"]).score for c in r["candidates"])
                      for r in records])
    m = result["metrics"]
    assert m["task_type"] == "text" and m["metrics"]["oracle_chrf"] == pytest.approx(oracle, abs=1e-9)
    assert {"oracle_bleu", "oracle_rouge_l", "div_2", "mbleu_4", "win_rate_hyp2", "oracle_nll"} <= set(m["metrics"])
    # predict.py gives the evaluation's answers for the same inputs (same model, decoding, prompt)
    answers = result["answers"]
    assert [a["answers"] for a in answers] == [[c["text"] for c in r["candidates"]] for r in records[:2]]
    assert all(a["decoding"] == "mcl_beam1" for a in answers)
    assert "[1] the cat sat" in result["predict"] and "    2: " in result["predict"]


def test_hand_written_jsonl_with_a_prompt_template(task, tmp_path):
    result = _train_eval_predict(task, tmp_path, "plain", f"data.prompt='{PROMPT}'", "data.id_field=id")
    assert f"prompt: {PROMPT!r}" in result["train"] and "chat template" not in result["train"]
    _check_pipeline(result)


@pytest.mark.slow  # 35 s; the default suite checks the chat-template rows and the refusal without one
def test_hand_written_jsonl_with_the_tokenizers_chat_template(task, tmp_path):
    result = _train_eval_predict(task, tmp_path, "chat", f"data.prompt='{PROMPT}'", "data.id_field=id")
    assert "as the user turn of the tokenizer's chat template" in result["train"]
    _check_pipeline(result)


def _module(task: dict, base: str, files: dict | None = None, **kwargs):
    from loramcl.data.text import TextDataModule

    dm = TextDataModule(splits={k: str(v) for k, v in (files or task["files"]).items()},
                        processor=str(task["bases"][base]), prompt=PROMPT, id_field="id",
                        batch_size=2, val_batch_size=3, seed=0, **kwargs)
    dm.check()
    dm.setup("fit")
    return dm


def test_chat_template_rows_and_the_plain_prompt(task):
    """Training rows as the tokenizer renders them: the chat turn (BOS written once by the template)
    or the plain prompt; only the answer and EOS are scored."""
    for base, prefix in (("chat", "<s>[user] Rewrite (calm): the cat sat =>\n[assistant] a cat"),
                         ("plain", "Rewrite (calm): the cat sat => a cat")):
        dm = _module(task, base, references="first")
        batch = dm.collator(True, "first")([dm.sets["train"][0]])
        tok = dm.processor
        text = tok.decode(batch["input_ids"][0])
        if base == "plain":  # the tokenizer's own special tokens, as at generation time (this one adds none)
            prefix = tok.decode(tok("Rewrite (calm): the cat sat =>")["input_ids"]) + " a cat"
        assert text.startswith(prefix) and text.count("<s>") == (1 if base == "chat" else prefix.count("<s>")), text
        scored = tok.decode(batch["input_ids"][0][batch["labels"][0] != -100])
        assert scored == ("" if base == "chat" else " ") + "a cat is sitting</s>"  # the separator


def test_chat_template_required_but_absent_is_one_line_before_the_model(task, tmp_path):
    proc = run_train(*TRAIN, *data_overrides(task["files"], task["bases"]["plain"]), "data.chat_template=true",
                     log_dir=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert "data.chat_template=true but the tokenizer" in lines[0] and "Loading weights" not in proc.stderr


def test_csv_and_parquet_give_the_same_batches(task, tmp_path):
    """The hand-written rows as CSV (references in ragged columns, or one JSON-list column) and as
    Parquet (a list column) give the JSON Lines' batches exactly."""
    import pandas as pd

    rows = [json.loads(line) for line in HAND_WRITTEN.splitlines() if line.strip()]
    refs = [r["references"] if isinstance(r["references"], list) else [r["references"]] for r in rows]
    wide = pd.DataFrame([{"id": r["id"], "input": r["input"], "tone": r["tone"],
                          **{f"ref{j}": (x[j] if j < len(x) else "") for j in range(3)}} for r, x in zip(rows, refs)])
    wide.to_csv(tmp_path / "wide.csv", index=False)
    listed = pd.DataFrame([{"id": r["id"], "input": r["input"], "tone": r["tone"], "references": x}
                           for r, x in zip(rows, refs)])
    listed.assign(references=[json.dumps(x) for x in refs]).to_csv(tmp_path / "listed.csv", index=False)
    listed.to_parquet(tmp_path / "rows.parquet")

    def batches(files, **kw):
        dm = _module(task, "plain", {"train": files, "val": files, "test": files}, **kw)
        return list(dm.train_dataloader()) + list(dm.val_dataloader())

    reference = batches(task["files"]["train"])
    for path, kw in ((tmp_path / "wide.csv", {"reference_field": ["ref0", "ref1", "ref2"]}),
                     (tmp_path / "listed.csv", {}), (tmp_path / "rows.parquet", {})):
        got = batches(path, **kw)
        assert len(got) == len(reference) == 5
        for a, b in zip(got, reference):
            assert a["references"] == b["references"] and a["ids"] == b["ids"] and a["targets"] == b["targets"]
            for key in ("input_ids", "attention_mask", "labels"):
                assert torch.equal(a[key], b[key]), (path, key)


BAD_FILES = [  # (file name, content, what the one line must say)
    ("no_json.jsonl", '{"input": "a", "references": ["x"]}\n{"input": "b", references: ["y"]}\n',
     r"no_json\.jsonl:2: not a JSON object"),
    ("missing.jsonl", '{"input": "a", "references": ["x"]}\n\n{"references": ["y"]}\n',
     r"missing\.jsonl:3: field 'input' is missing"),
    ("empty_refs.jsonl", '{"input": "a", "references": []}\n', r"empty_refs\.jsonl:1: field 'references' holds no reference"),
    ("blank_ref.jsonl", '{"input": "a", "references": ["x", "  "]}\n', r"blank_ref\.jsonl:1: field 'references': reference 1 is empty"),
    ("number.jsonl", '{"input": 3, "references": ["x"]}\n', r"number\.jsonl:1: field 'input' must be a string"),
    ("not_object.jsonl", '["a", "b"]\n', r"not_object\.jsonl: item 0: a row must be a JSON object"),
    ("no_refs.csv", 'input,references\n"a, b",x\nc,\n', r"no_refs\.csv:3: field 'references' is empty"),
    ("cells.csv", 'input,references\na,x\nb,y,z\n', r"cells\.csv:3: 3 cells but the header names 2 fields"),
    ("empty_input.csv", 'input,references\n"multi\nline",x\n ,y\n', r"empty_input\.csv:4: field 'input' is empty"),
    ("tone.jsonl", '{"input": "a", "references": ["x"]}\n', r"tone\.jsonl:1: field 'tone' is missing \(data\.prompt"),
    ("nothing.jsonl", "\n\n", r"nothing\.jsonl: holds no rows"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_malformed_file_names_file_line_and_field(tmp_path, name, content, message):
    from loramcl.data.hdf5 import DataFormatError
    from loramcl.data.rows import TextSchema, validate_file

    schema = TextSchema(prompt="{input} ({tone})" if name == "tone.jsonl" else "{input}")
    with pytest.raises(DataFormatError) as err:
        validate_file(write(tmp_path / name, content), schema)
    assert re.search(message, str(err.value)) and "\n" not in str(err.value), str(err.value)


def test_a_malformed_file_stops_train_py_before_any_model(task, tmp_path):
    bad = write(tmp_path / "val.jsonl", HAND_WRITTEN.replace('"references": ["it is raining"', '"refs": ["it is raining"'))
    files = {**task["files"], "val": bad}
    proc = run_train(*TRAIN, *data_overrides(files, task["bases"]["plain"]), log_dir=tmp_path / "logs")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert f"{bad}:5: field 'references' is missing" in lines[0]
    assert "Loading weights" not in proc.stderr and not list((tmp_path / "logs").glob("text/runs/*/checkpoints"))


def test_text_metrics_against_sacrebleu_and_pycocoevalcap():
    from pycocoevalcap.rouge.rouge import Rouge
    from sacrebleu.metrics import BLEU, CHRF

    from loramcl.metrics.diversity import tokenize
    from loramcl.metrics.tasks import score, task_for

    cands = [["The cat sat on the mat.", "a dog barks", "cats sit"], ["it rains today", "sunny day!", "rain, rain"]]
    refs = [["the cat is on the mat", "a cat sits"], ["it is raining today"]]
    corpus, sentence, _ = score(task_for("text"), cands, refs, {"semantic": False})
    rouge = Rouge()
    for i in range(2):
        for k in range(3):
            expected = rouge.calc_score([" ".join(tokenize(cands[i][k]))], [" ".join(tokenize(r)) for r in refs[i]])
            assert sentence["rouge_l"][i, k] == pytest.approx(expected, abs=1e-9)
            assert sentence["chrf"][i, k] == pytest.approx(CHRF().sentence_score(cands[i][k], refs[i]).score)
    assert corpus["oracle_rouge_l"] == pytest.approx(100 * np.mean(sentence["rouge_l"].max(axis=1)))
    streams = [[refs[0][0], refs[1][0]], [refs[0][1], None]]
    assert corpus["bleu_hyp1"] == pytest.approx(BLEU().corpus_score([cands[0][1], cands[1][1]], streams).score)
    winners = sentence["chrf"].argmax(axis=1)  # win rates are decided by sentence chrF
    assert [corpus[f"win_rate_hyp{k}"] for k in range(3)] == pytest.approx([np.mean(winners == k) for k in range(3)])


def test_answer_modes_report():
    from loramcl.evaluation.modes import mode_report

    label = {"a1": "A", "a2": "A", "b": "B", "c": "C"}.get
    records = [{"references": ["a1", "b", "c"], "candidates": [{"text": "a1"}, {"text": "b"}, {"text": "b"}]},
               {"references": ["a2", "b"], "candidates": [{"text": "a2"}, {"text": "b"}, {"text": "c"}]}]
    r = mode_report(records, label)
    assert r["shares"] == {0: {"A": 1.0}, 1: {"B": 1.0}, 2: {"B": 0.5, "C": 0.5}}
    assert r["coverage"] == pytest.approx((2 / 3 + 1) / 2) and r["all_modes"] == 0.5 and not r["specialised"]
    r = mode_report(records[:1] * 3, {"a1": "A", "b": "B", "c": "C"}.get)
    assert r["dominant"] == {0: "A", 1: "B", 2: "B"} and not r["specialised"]  # two positions share B


def test_demo_styles_are_recognised_and_splits_disjoint(tmp_path):
    from loramcl.data.synthetic_text import COLORS, SIZES, STYLES, THINGS, answers, make_styles, style_of

    for s in SIZES:
        for c in COLORS:
            for t in THINGS:
                styles = answers(s, c, t)
                assert list(styles) == list(STYLES) and [len(p) for p in styles.values()] == [1, 2, 4]
                assert all(style_of(p) == style for style, phrasings in styles.items() for p in phrasings)
    assert style_of("a red ball") == "other"
    paths = make_styles(tmp_path, sizes=(20, 5, 5))
    rows = [[json.loads(line) for line in p.read_text().splitlines()] for p in paths]
    inputs = [{r["input"] for r in split} for split in rows]
    assert [len(i) for i in inputs] == [20, 5, 5] and not (inputs[0] & inputs[1]) and not (inputs[0] & inputs[2])
    assert all([style_of(x) for x in r["references"]] == list(STYLES) for r in rows[0])  # one phrasing per style
    assert all(len(r["references"]) == 7 for r in rows[2])  # the test rows: every phrasing
    before = paths[0].read_text()
    with pytest.raises(FileExistsError):
        make_styles(tmp_path, sizes=(20, 5, 5), seed=1)
    assert paths[0].read_text() == before


def test_dataset_names_from_file_names():
    from loramcl.config import file_stem

    assert file_stem("data/qa/train.jsonl") == "qa" and file_stem("/x/qa_pairs.csv") == "qa_pairs"
    assert file_stem("org/set") == "org_set"


def test_predict_refuses_before_the_model(tmp_path):
    """predict.py's inputs and output are checked before anything loads (one line each)."""
    out = write(tmp_path / "taken.jsonl", "kept\n")
    cases = [(["input=hello", f"output={out}"], "already exists"),
             ([], "give one of input"),
             (["input_file=/nowhere/inputs.txt"], "/nowhere/inputs.txt does not exist")]
    for extra, message in cases:  # checked before the run folder is even read
        proc = run_script(["predict.py", "ckpt_path=/nowhere/run", *extra, f"paths.log_dir={tmp_path}"], seconds=300)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], (extra, proc.stderr[-1500:])
    assert out.read_text() == "kept\n"


def test_a_manifest_of_clips_and_images_becomes_the_captioning_layout(tmp_path):
    """prepare_data.py manifest: every row and file checked first (a missing file: one line naming
    manifest, line and field, nothing written); then the clips / images with their captions, readable
    by the training readers exactly as listed."""
    import soundfile as sf
    from PIL import Image

    from loramcl.data.hdf5 import AudioCaptionH5, ImageCaptionH5

    media = tmp_path / "media"
    media.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(media / f"clip{i}.wav", (0.1 * rng.standard_normal(8000 + 1000 * i)).astype(np.float32), 16000)
        Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).save(media / f"im{i}.png")
    write(tmp_path / "clips.csv", 'path,caption_1,caption_2\nmedia/clip0.wav,a dog barks,barking\n'
          'media/clip1.wav,rain falls,\nmedia/clip2.wav,"a car, then silence",engine\n')
    write(tmp_path / "bad.csv", 'path,caption_1\nmedia/clip0.wav,a dog\nmedia/gone.wav,rain\n')
    write(tmp_path / "images.jsonl", "".join(json.dumps({"path": str(media / f"im{i}.png"), "captions": [f"shape {i}"]})
                                             + "\n" for i in range(3)))
    out = tmp_path / "out"
    proc = run_script(["scripts/prepare_data.py", "manifest", "--kind", "audio", "--manifest", tmp_path / "bad.csv",
                       "--caption-field", "caption_1", "--split", "train", "--name", "mine", "--out", out], seconds=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-1500:]
    assert f"{tmp_path / 'bad.csv'}:3: field 'path': media/gone.wav does not exist" in lines[0]
    assert not out.exists() or not list(out.iterdir())
    for kind, manifest, fields in (("audio", "clips.csv", ["caption_1", "caption_2"]), ("image", "images.jsonl", [])):
        proc = run_script(["scripts/prepare_data.py", "manifest", "--kind", kind, "--manifest", tmp_path / manifest,
                           *(["--caption-field", *fields] if fields else []), "--split", "test", "--name", kind,
                           "--out", out], seconds=300)
        assert proc.returncode == 0, proc.stderr[-1500:]
    clips = AudioCaptionH5.from_split(out, "audio", "test")
    assert clips.texts == [["a dog barks", "barking"], ["rain falls"], ["a car, then silence", "engine"]]
    expected, _ = sf.read(media / "clip1.wav", dtype="float32")
    assert np.allclose(clips[1]["audio"], expected, atol=1e-6)
    images = ImageCaptionH5.from_split(out, "image", "test")
    assert images.texts == [["shape 0"], ["shape 1"], ["shape 2"]]
    assert np.array_equal(np.asarray(images[2]["image"]), np.asarray(Image.open(media / "im2.png").convert("RGB")))


@pytest.mark.slow
def test_demo_each_hypothesis_takes_one_style_and_beam_search_does_not_cover_them(tmp_path):
    """The docs' demo commands: MCL's 3 hypotheses answer in 3 different styles (each on every test
    input); the MLE baseline's beam search returns the same style K times far more often."""
    from loramcl.data.synthetic_text import style_of
    from loramcl.evaluation.modes import evaluation_folders, mode_report

    data = [f"paths.data_dir={tmp_path / 'data'}"]
    for experiment in ("demo_text_mcl", "demo_text_mle"):
        proc = run_train(f"experiment={experiment}", "extras.print_config=false", *data, log_dir=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    reports = {}
    for experiment, methods in (("demo_text_mcl", "mcl_beam1,mcl_dbs"), ("demo_text_mle", "mle_beam,mle_dbs,mle_sampling_nucleus")):
        proc = run_eval("-m", f"ckpt_path={tmp_path / experiment / 'runs' / 'latest'}", f"decoding={methods}",
                        "metrics.semantic=false", *data, log_dir=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for folder in evaluation_folders([tmp_path / "eval"]):
        info = json.loads((folder / "metrics.json").read_text())
        records = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        reports[info["decoding"]] = mode_report(records, style_of)
    mcl = reports["mcl_beam1"]
    assert mcl["specialised"] and mcl["all_modes"] == 1.0, mcl
    assert reports["mle_beam"]["all_modes"] < 0.5, reports["mle_beam"]
    out = tmp_path / "answers.jsonl"
    proc = run_script(["predict.py", f"ckpt_path={tmp_path / 'demo_text_mcl' / 'runs' / 'latest'}",
                       "input=small red ball", f"output={out}", f"paths.log_dir={tmp_path}", *data], seconds=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (answer,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(style_of(a) for a in answer["answers"]) == ["exclaim", "question", "statement"], answer


def test_a_hub_dataset_that_cannot_be_read_is_one_line_before_the_model(task, tmp_path):
    proc = run_script(["train.py", f"paths.log_dir={tmp_path}", *TRAIN, "data.hub_dataset=nobody/no_such_set",
                       "data.splits.train=train", "data.splits.val=validation",
                       f"model.name_or_path={task['bases']['plain']}"], seconds=300, env={"HF_HUB_OFFLINE": "1"})
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-2000:]
    assert "data.hub_dataset=nobody/no_such_set: cannot load split 'train'" in lines[0]
    assert "Loading weights" not in proc.stderr

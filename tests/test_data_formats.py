"""HDF5 layouts, their validation, and preparation from (tiny, fake) user downloads.

Round trips for the three layouts; every bad-data case gives one clear error naming the file (and
item); writers are atomic and never overwrite silently; Clotho / AudioCaps / COCO / TextCaps /
parallel / Ott et al. inputs become the right HDF5; the bilingual mix is a random split of the
captions, not of the images.
"""

import io
import json
import pickle
import re

import h5py
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from loramcl.data import prepare
from loramcl.data.hdf5 import (
    AudioCaptionH5,
    AudioCaptionWriter,
    DataFormatError,
    ImageCaptionH5,
    ImageCaptionWriter,
    TranslationH5,
    TranslationWriter,
    check_split_files,
    split_path,
)

CORRUPT = re.escape("is not a readable HDF5 file (corrupt or truncated")


def png_bytes(colour, size=(8, 6), fmt="PNG"):
    rng = np.random.default_rng(sum(colour))
    pixels = (rng.integers(0, 255, (size[1], size[0], 3)) // 2 + np.array(colour) // 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue(), pixels


def write_audio_file(path, clips, split="train"):
    with AudioCaptionWriter(path, dataset="toy", split=split, max_seconds=30) as w:
        for name, audio, caps in clips:
            w.add(name, audio, caps)
    return path


@pytest.fixture
def audio_clips():
    rng = np.random.default_rng(0)
    return [(f"clip{i}.wav", rng.standard_normal(n).astype(np.float32) * 0.1, caps)
            for i, (n, caps) in enumerate([(1600, [f"cap {j}" for j in range(5)]), (800, ["only one"]), (2400, ["a", "b", "c"])])]


@pytest.fixture
def audio_file(tmp_path, audio_clips):
    return write_audio_file(tmp_path / "toy_train.hdf5", audio_clips)


# ============================================================================ round trips
def test_audio_round_trip(audio_file, audio_clips):
    ds = AudioCaptionH5(audio_file, split="train")
    assert len(ds) == 3
    for (name, audio, caps), item in zip(audio_clips, ds):
        assert item["id"] == name and item["captions"] == caps and item["sample_rate"] == 16000
        assert item["audio"].dtype == np.float32
        np.testing.assert_array_equal(item["audio"], audio)
    assert ds[-1]["id"] == "clip2.wav"
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a copy without the open handle
    np.testing.assert_array_equal(clone[1]["audio"], audio_clips[1][1])
    with pytest.raises(IndexError):
        ds[3]


def test_image_round_trip(tmp_path):
    png, pixels = png_bytes((200, 10, 10))
    jpg, _ = png_bytes((10, 10, 200), fmt="JPEG")
    path = tmp_path / "img_val.hdf5"
    with ImageCaptionWriter(path, dataset="img", split="val") as w:
        w.add("a", png, ["a red thing", "something red"], ["en", "en"])
        w.add(42, jpg, ["une chose bleue", "a blue thing", "blue"], ["fr", "en", "en"])
    ds = ImageCaptionH5(path)
    first, second = ds[0], ds[1]
    assert first["image"].mode == "RGB" and first["image"].size == (8, 6)
    np.testing.assert_array_equal(np.asarray(first["image"]), pixels)  # PNG: identical pixels
    assert ds.image_bytes(1) == jpg  # stored as downloaded
    assert second["id"] == "42" and second["languages"] == ["fr", "en", "en"] and len(second["captions"]) == 3


def test_translation_round_trip(tmp_path):
    path = tmp_path / "mt_test.hdf5"
    with TranslationWriter(path, dataset="mt", split="test", src_lang="en", tgt_lang="de") as w:
        w.add("0", "the cat sleeps", ["die Katze schläft", "die Katze pennt"])
        w.add("1", "I see three red cars", ["ich sehe drei rote Autos"])
    ds = TranslationH5(path)
    assert (ds.src_lang, ds.tgt_lang) == ("en", "de")
    assert ds[0] == {"id": "0", "source": "the cat sleeps", "references": ["die Katze schläft", "die Katze pennt"]}
    assert ds[1]["references"] == ["ich sehe drei rote Autos"]


# =========================================================================== bad data
def test_corrupt_and_truncated_files(tmp_path, audio_file):
    noise = tmp_path / "noise_train.hdf5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    half = tmp_path / "half_train.hdf5"
    raw = audio_file.read_bytes()
    half.write_bytes(raw[: len(raw) // 2])
    for path in (noise, half):
        with pytest.raises(ValueError, match=CORRUPT) as err:
            AudioCaptionH5(path)
        assert str(path) in str(err.value)


def test_missing_file_and_split(tmp_path, audio_file):
    with pytest.raises(FileNotFoundError, match="prepare_data.py clotho") as err:
        AudioCaptionH5(tmp_path / "nothing.hdf5", prepare_hint="python scripts/prepare_data.py clotho --root X")
    assert "nothing.hdf5" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"missing split file\(s\) val .*toy_val.hdf5.*test"):
        check_split_files(tmp_path, "toy")
    with pytest.raises(FileNotFoundError, match="split 'test' of dataset 'toy'"):
        AudioCaptionH5.from_split(tmp_path, "toy", "test")
    assert check_split_files(tmp_path, "toy", ["train"]) == {"train": audio_file}
    with pytest.raises(DataFormatError, match="holds split 'train', expected 'val'"):
        AudioCaptionH5(audio_file, split="val")


def test_check_split_files_reports_a_corrupt_split(tmp_path, audio_clips):
    for split in ("train", "val"):
        write_audio_file(split_path(tmp_path, "toy", split), audio_clips, split)
    split_path(tmp_path, "toy", "test").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match=CORRUPT) as err:
        check_split_files(tmp_path, "toy")
    assert "toy_test.hdf5" in str(err.value)


def test_missing_dataset_wrong_kind(tmp_path, audio_file):
    with h5py.File(audio_file, "a") as f:
        del f["captions"]
    with pytest.raises(DataFormatError, match=r"toy_train.hdf5: dataset\(s\) 'captions' missing"):
        AudioCaptionH5(audio_file)
    with pytest.raises(DataFormatError, match="holds 'audio_caption' data, expected 'image_caption'"):
        ImageCaptionH5(audio_file)


def test_item_without_caption_is_named(audio_file):
    with h5py.File(audio_file, "a") as f:
        f["caption_count"][1] = 0
    with pytest.raises(DataFormatError, match=r"toy_train.hdf5: item 1 \(id 'clip1.wav'\) has no caption"):
        AudioCaptionH5(audio_file)
    with h5py.File(audio_file, "a") as f:
        f["caption_count"][1] = 1
        f["captions"][2, 1] = "  "
    with pytest.raises(DataFormatError, match=r"item 2 \(id 'clip2.wav'\) has an empty caption \(number 1\)"):
        AudioCaptionH5(audio_file)


def test_writer_refuses_items_without_caption(tmp_path):
    with pytest.raises(DataFormatError, match=r"item 0 \(id 'x'\) has no caption"):
        with AudioCaptionWriter(tmp_path / "a.hdf5", dataset="d", split="train") as w:
            w.add("x", np.zeros(10, np.float32), [])
    assert list(tmp_path.iterdir()) == []


def test_wrong_sample_rate_is_named(audio_file):
    with h5py.File(audio_file, "a") as f:
        f.attrs["sample_rate"] = 44100
    with pytest.raises(DataFormatError, match=r"toy_train.hdf5: audio is stored at 44100 Hz.*16000 Hz.*prepare it again"):
        AudioCaptionH5(audio_file)


def test_overwrite_refused_and_file_intact(audio_file, audio_clips):
    before = audio_file.read_bytes()
    with pytest.raises(FileExistsError, match="toy_train.hdf5 already exists; pass overwrite=True"):
        write_audio_file(audio_file, audio_clips[:1])
    assert audio_file.read_bytes() == before
    with AudioCaptionWriter(audio_file, dataset="toy", split="train", overwrite=True) as w:
        w.add("new.wav", np.ones(5, np.float32), ["new"])
    assert AudioCaptionH5(audio_file)[0]["id"] == "new.wav"


def test_interrupted_write_leaves_no_file(tmp_path, audio_clips):
    target = tmp_path / "toy_train.hdf5"
    with pytest.raises(RuntimeError, match="killed"):
        with AudioCaptionWriter(target, dataset="toy", split="train") as w:
            w.add(*audio_clips[0])
            raise RuntimeError("killed in the middle")
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temporary file


# ========================================================================= preparation
def test_prepare_clotho_resamples_to_16k_mono(tmp_path):
    audio_dir = tmp_path / "development"
    audio_dir.mkdir()
    sr, durations = 44100, {"a tone.wav": 0.5, "b.wav": 0.73, "c.wav": 1.1}
    rows = []
    for k, (name, dur) in enumerate(durations.items()):
        t = np.arange(int(round(dur * sr))) / sr
        left = 0.5 * np.sin(2 * np.pi * 1000.0 * (k + 1) * t)
        sf.write(audio_dir / name, np.stack([left, 0.5 * left], axis=1), sr)  # stereo: mono = 0.75 * left
        rows.append([name] + [f"caption {j} of {name}" for j in range(5)])
    rows[1][3] = ""  # an empty cell is dropped, not stored
    csv_path = tmp_path / "clotho_captions_development.csv"
    csv_path.write_text("file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
                        + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")

    assert prepare.clotho_layout(tmp_path, "dev") == (audio_dir, csv_path)  # the layout `--root` expects
    out = prepare.prepare_clotho(audio_dir, csv_path, tmp_path / "out", split="development")
    assert out == tmp_path / "out" / "clotho_train.hdf5"
    ds = AudioCaptionH5(out)
    assert [it["id"] for it in ds] == list(durations)
    assert [len(it["captions"]) for it in ds] == [5, 4, 5]
    for k, (item, dur) in enumerate(zip(ds, durations.values())):
        assert item["audio"].ndim == 1 and item["audio"].dtype == np.float32
        assert item["audio"].size == round(dur * 16000)
        spectrum = np.abs(np.fft.rfft(item["audio"] * np.hanning(item["audio"].size)))
        peak = np.argmax(spectrum) * 16000 / item["audio"].size
        assert abs(peak - 1000.0 * (k + 1)) < 16000 / item["audio"].size  # within one FFT bin
        rms = np.sqrt(np.mean(item["audio"][1000:-1000] ** 2))
        assert abs(rms * np.sqrt(2) - 0.375) < 0.005  # channels averaged: amplitude (0.5 + 0.25) / 2

    cut = prepare.prepare_clotho(audio_dir, csv_path, tmp_path / "cut", split="train", max_seconds=0.6)
    lengths = [it["audio"].size for it in AudioCaptionH5(cut)]
    assert lengths == [8000, 9600, 9600]
    with h5py.File(cut) as f:
        assert f.attrs["num_truncated"] == 2 and f.attrs["max_seconds"] == 0.6


def test_prepare_clotho_errors(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    sf.write(audio_dir / "ok.wav", np.zeros(4410), 44100)
    (audio_dir / "broken.wav").write_bytes(b"RIFF not really a wave file")
    csv_path = tmp_path / "captions.csv"
    header = "file_name,caption_1,caption_2\n"
    csv_path.write_text(header + "ok.wav,a,b\nlost.wav,c,d\n")
    with pytest.raises(FileNotFoundError, match=r"captions.csv line 3 names audio file 'lost.wav', not found in .*audio"):
        prepare.prepare_clotho(audio_dir, csv_path, tmp_path / "out", split="train")
    csv_path.write_text(header + "ok.wav,a,b\nbroken.wav,c,d\n")
    with pytest.raises(DataFormatError, match=r"cannot read audio file .*broken.wav"):
        prepare.prepare_clotho(audio_dir, csv_path, tmp_path / "out", split="train")
    assert not (tmp_path / "out" / "clotho_train.hdf5").exists()
    csv_path.write_text(header + "ok.wav,,\n")
    with pytest.raises(DataFormatError, match=r"captions.csv line 2: clip 'ok.wav' has no caption"):
        prepare.prepare_clotho(audio_dir, csv_path, tmp_path / "out", split="train")


def test_prepare_audiocaps_groups_captions(tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    sf.write(audio_dir / "Yabc.wav", np.zeros(32000 * 2), 32000)  # AudioSet-style name, 32 kHz
    sf.write(audio_dir / "xyz_30.flac", np.zeros((32000 * 12, 2)), 32000)  # <id>_<start>, longer than 10 s
    csv_path = tmp_path / "test.csv"
    lines = ["audiocap_id,youtube_id,start_time,caption"]
    lines += [f"{k},abc,0,dog barks {k}" for k in range(5)] + ["9,xyz,30,a car passes"] + ["10,gone,0,lost clip"]
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"test.csv: audio of clip 'gone' not found in .*audio"):
        prepare.prepare_audiocaps(audio_dir, csv_path, tmp_path / "out", split="test")
    out = prepare.prepare_audiocaps(audio_dir, csv_path, tmp_path / "out", split="test", skip_missing=True)
    ds = AudioCaptionH5(out)
    assert [it["id"] for it in ds] == ["abc", "xyz"]
    assert ds[0]["captions"] == [f"dog barks {k}" for k in range(5)] and ds[1]["captions"] == ["a car passes"]
    assert ds[0]["audio"].size == 32000 and ds[1]["audio"].size == 160000  # 2 s; cut to 10 s


def test_prepare_coco_and_textcaps(tmp_path):
    images = tmp_path / "images"
    (images / "train").mkdir(parents=True)
    pix = {}
    for k in range(3):
        raw, pix[k] = png_bytes((80 * k, 50, 20))
        (images / "train" / f"img{k}.png").write_bytes(raw)
    coco = {"images": [{"id": k, "file_name": f"train/img{k}.png"} for k in range(3)],
            "annotations": [{"image_id": k, "caption": f"image {k} caption {j}"} for k in range(3) for j in range(k + 1)]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    ds = ImageCaptionH5(prepare.prepare_images(images, tmp_path / "coco.json", tmp_path / "out", split="val", name="coco"))
    assert [it["id"] for it in ds] == ["0", "1", "2"]
    assert [len(it["captions"]) for it in ds] == [1, 2, 3]
    np.testing.assert_array_equal(np.asarray(ds[2]["image"]), pix[2])

    textcaps = {"data": [{"image_id": f"t{k}", "image_path": f"train/img{k}.png", "caption_str": f"text {k}.{j}",
                          "reference_strs": [f"text {k}.{i}" for i in range(2)]} for k in range(2) for j in range(2)]
                + [{"image_id": "t2", "image_name": "img2", "reference_strs": ["ref a", "ref b"]}]}
    (tmp_path / "textcaps.json").write_text(json.dumps(textcaps))
    ds = ImageCaptionH5(prepare.prepare_images(images / "train", tmp_path / "textcaps.json", tmp_path / "out",
                                               split="train", name="textcaps", fmt="textcaps"))
    assert [it["captions"] for it in ds] == [["text 0.0", "text 0.1"], ["text 1.0", "text 1.1"], ["ref a", "ref b"]]

    coco["annotations"] = coco["annotations"][1:]  # image 0 loses its only caption
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(DataFormatError, match="bad.json: image '0' has no caption"):
        prepare.prepare_images(images, tmp_path / "bad.json", tmp_path / "out", split="test", name="coco")


def test_ott_multireference_reader(tmp_path):
    path = tmp_path / "multiref.txt"
    path.write_text("S-1\tThe cat sleeps.\nT-1\tDie Katze schläft.\nR2-1\tDie Katze pennt.\nR1-1\tEs schläft die Katze.\n"
                    "H-1\t-0.5\tDie Katze schläft.\nD-1\t-0.5\tDie Katze schläft.\n"
                    "S-0\tHello.\nT-0\tHallo.\nR1-0\tGuten Tag.\n", encoding="utf-8")
    items = prepare.read_ott_multiref(path)
    assert items == [
        {"id": "0", "source": "Hello.", "references": ["Hallo.", "Guten Tag."]},
        {"id": "1", "source": "The cat sleeps.", "references": ["Die Katze schläft.", "Es schläft die Katze.", "Die Katze pennt."]},
    ]
    copy = prepare.write_ott_multiref(tmp_path / "copy.txt", items)
    assert prepare.read_ott_multiref(copy) == items
    ds = TranslationH5(prepare.prepare_translation(tmp_path / "out", split="test", name="mt", ott=path))
    assert ds[1]["references"][2] == "Die Katze pennt."
    path.write_text("S-0\tHello.\nS-1\tAlone.\nT-0\tHallo.\n")
    with pytest.raises(DataFormatError, match=r"multiref.txt: source 1 \('Alone.'\) has no reference"):
        prepare.read_ott_multiref(path)


def test_parallel_reader(tmp_path):
    (tmp_path / "train.en").write_text("the cat sleeps\nthe dog runs\nthe cat sleeps\n")
    (tmp_path / "train.de").write_text("die Katze schläft\nder Hund läuft\ndie Katze pennt\n")
    assert prepare.read_parallel(tmp_path / "train.en", tmp_path / "train.de")[1] == ("the dog runs", "der Hund läuft")
    out = prepare.prepare_translation(tmp_path / "g", split="train", name="mt", src=tmp_path / "train.en",
                                      tgt=tmp_path / "train.de", group=True)
    assert TranslationH5(out)[0]["references"] == ["die Katze schläft", "die Katze pennt"]
    (tmp_path / "train.de").write_text("die Katze schläft\n")
    with pytest.raises(DataFormatError, match=r"train.en has 3 lines but .*train.de has 1"):
        prepare.read_parallel(tmp_path / "train.en", tmp_path / "train.de")


def test_bilingual_mix_is_random_over_captions():
    n_images = 200
    english = [[f"en {i}.{j}" for j in range(5)] for i in range(n_images)]
    french = [[f"fr {i}.{j}" for j in range(5)] for i in range(n_images)]
    mask = np.array(prepare.mix_bilingual(english, french, fraction=0.5, seed=3))
    assert mask.mean() == 0.5
    per_image = mask.sum(1)
    assert len(set(per_image.tolist())) >= 4  # the French share varies between images
    assert 0 < mask[:20].mean() < 1 and 0 < mask[-20:].mean() < 1  # both languages, first and last images
    assert abs(mask[: n_images // 2].mean() - mask[n_images // 2 :].mean()) < 0.1  # not a function of order
    np.testing.assert_array_equal(mask, prepare.mix_bilingual(english, french, fraction=0.5, seed=3))
    assert (mask != np.array(prepare.mix_bilingual(english, french, fraction=0.5, seed=4))).any()


def test_prepare_bilingual_from_two_caption_files(tmp_path):
    from loramcl.data.synthetic import make_shapes

    make_shapes(tmp_path / "hdf5", sizes={"train": 12}, export_coco=tmp_path / "raw")
    raw = tmp_path / "raw" / "train"
    out = prepare.prepare_bilingual(raw / "images", raw / "captions_en.json", raw / "captions_fr.json", tmp_path / "out",
                                    split="train", name="bi", seed=1)
    ds = ImageCaptionH5(out)
    en = prepare.read_caption_json(raw / "captions_en.json")
    fr = prepare.read_caption_json(raw / "captions_fr.json")
    langs = [lang for it in ds for lang in it["languages"]]
    assert langs.count("fr") == 30 and langs.count("en") == 30
    for it in ds:
        for j, (caption, lang) in enumerate(zip(it["captions"], it["languages"])):
            assert caption == (fr if lang == "fr" else en)[it["id"]][1][j]


def test_cli_writes_and_checks(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"
    spec = importlib.util.spec_from_file_location("prepare_data", script)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["synthetic-translation", "--out", str(tmp_path), "--train", "20", "--val", "4", "--test", "4"]
    assert cli.main(args) == 0
    assert "train: wrote 20 items to" in capsys.readouterr().out
    assert cli.main(args) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["check", "--root", str(tmp_path), "--name", "synth_en_de"]) == 0

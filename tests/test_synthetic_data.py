"""Synthetic sets: deterministic, in the real layouts, and their captions tell the truth.

Audio captions name exactly the events of their clip (checked against the generator's event list)
and the tones sit where the captions say (FFT); the named shape colours are in the pixels; the
bilingual split is random over captions; translation test items carry several references.
"""

import json

import h5py
import numpy as np
import pytest

from loramcl.data import synthetic as S
from loramcl.data.hdf5 import AudioCaptionH5, ImageCaptionH5, TranslationH5, check_split_files
from loramcl.data.prepare import read_ott_multiref


@pytest.fixture(scope="module")
def audio_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("audio")
    paths = S.make_audio(out, sizes=(24, 3, 3), seed=5)
    return out, paths


def _content(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


def test_audio_deterministic_for_a_seed(audio_set, tmp_path):
    out, paths = audio_set
    assert check_split_files(out, "synth_audio")
    again = S.make_audio(tmp_path / "again", sizes=(24, 3, 3), seed=5)
    other = S.make_audio(tmp_path / "other", sizes=(24, 3, 3), seed=6)
    a, b, c = _content(paths["train"]), _content(again["train"]), _content(other["train"])
    for key in a[0]:
        np.testing.assert_array_equal(a[0][key], b[0][key])
    assert a[0]["audio"].shape != c[0]["audio"].shape or not np.array_equal(a[0]["audio"], c[0]["audio"])


def test_audio_clips_and_captions_match_events(audio_set):
    _, paths = audio_set
    ds = AudioCaptionH5(paths["train"])
    events = S.read_events(paths["train"])
    counts = set()
    for item, ev in zip(ds, events):
        assert item["sample_rate"] == 16000 and item["audio"].dtype == np.float32
        assert 1.0 <= item["audio"].size / 16000 <= 4.0
        kinds = [e["kind"] for e in ev]
        counts.add(len(kinds))
        assert len(item["captions"]) == 5 and len(set(item["captions"])) == 5
        for caption in item["captions"]:
            for kind, phrases in S.EVENT_PHRASES.items():
                named = any(p in caption for p in phrases)
                assert named == (kind in kinds), (caption, kinds)
    assert counts == {1, 2, 3}


def test_tones_are_where_the_captions_say(audio_set):
    _, paths = audio_set
    ds = AudioCaptionH5(paths["train"])
    checked = 0
    for item, ev in zip(ds, S.read_events(paths["train"])):
        for e in ev:
            if e["kind"] not in S.TONE_RANGES:
                continue
            seg = item["audio"][int(e["start"] * 16000) : int(e["end"] * 16000)]
            spectrum = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
            peak = np.argmax(spectrum) * 16000 / seg.size
            lo, hi = S.TONE_RANGES[e["kind"]]
            assert lo - 5 <= peak <= hi + 5 and abs(peak - e["freq"]) < 2 * 16000 / seg.size
            assert all(any(p in c for p in S.EVENT_PHRASES[e["kind"]]) for c in item["captions"])
            checked += 1
    assert checked >= 3


def test_shapes_colours_in_pixels_and_deterministic(tmp_path):
    paths = S.make_shapes(tmp_path / "a", sizes=(16, 2, 2), seed=1)
    again = S.make_shapes(tmp_path / "b", sizes=(16, 2, 2), seed=1)
    ds, ds2 = ImageCaptionH5(paths["train"]), ImageCaptionH5(again["train"])
    with h5py.File(paths["train"]) as f:
        truth = [json.loads(s) for s in f["shapes"].asstr()[()]]
    for k, (item, shapes) in enumerate(zip(ds, truth)):
        assert item["captions"] == ds2[k]["captions"] and ds.image_bytes(k) == ds2.image_bytes(k)
        pixels = np.asarray(item["image"]).reshape(-1, 3)
        assert item["image"].size == (64, 64) and item["languages"] == ["en"] * 5
        assert len(set(item["captions"])) == 5
        for s in shapes:
            assert (pixels == S.COLOURS[s["colour"]]).all(1).sum() >= 30  # the named colour is drawn
            assert all(s["colour"] in c and s["shape"] in c for c in item["captions"])
        for colour in set(S.COLOURS) - {s["colour"] for s in shapes}:  # and no other colour
            assert not (pixels == S.COLOURS[colour]).all(1).any()
            assert not any(colour in c for c in item["captions"])


def test_bilingual_shapes_random_half_in_french(tmp_path):
    paths = S.make_shapes(tmp_path, sizes={"train": 60}, bilingual=True, seed=2)
    ds = ImageCaptionH5(paths["train"])
    langs = np.array([item["languages"] for item in ds]) == "fr"
    assert langs.mean() == 0.5
    assert 0 < langs[:10].mean() < 1 and 0 < langs[-10:].mean() < 1
    assert len(set(langs.sum(1).tolist())) >= 3
    french_words = ("cercle", "carré", "triangle")
    for item in ds:
        for caption, lang in zip(item["captions"], item["languages"]):
            assert (lang == "fr") == caption.startswith(("un ", "il y a", "deux formes", "une image"))
            if lang == "fr":
                assert any(w in caption for w in french_words)
    again = S.make_shapes(tmp_path / "again", sizes={"train": 60}, bilingual=True, seed=2)
    assert [it["languages"] for it in ImageCaptionH5(again["train"])] == [it["languages"] for it in ds]


def test_translation_multi_references(tmp_path):
    paths = S.make_translation(tmp_path, sizes=(200, 20, 20), seed=0)
    test, train = TranslationH5(paths["test"]), TranslationH5(paths["train"])
    assert (test.src_lang, test.tgt_lang) == ("en", "de")
    assert all(len(it["references"]) >= 2 for it in test)
    assert all(len(set(it["references"])) == len(it["references"]) for it in test)
    assert all(len(it["references"]) == 1 for it in train)
    pool = {}
    for it in train:
        pool.setdefault(it["source"], set()).update(it["references"])
    assert len(pool) < len(train)  # sources repeat in train, with one translation per row
    assert not set(pool) & {it["source"] for it in test}  # test sources are unseen
    assert read_ott_multiref(paths["test_multiref"]) == [test[i] for i in range(len(test))]
    again = S.make_translation(tmp_path / "again", sizes=(200, 20, 20), seed=0)
    assert [TranslationH5(again["train"])[i] for i in range(50)] == [train[i] for i in range(50)]


def test_german_templates_give_several_valid_translations():
    rng = np.random.default_rng(0)
    pairs = dict(S.translation_pair(rng) for _ in range(1000))
    assert all(len(refs) >= 2 for refs in pairs.values())
    assert set(pairs["The cat sleeps today."]) == {"Die Katze schläft heute.", "Die Katze pennt heute.",
                                                   "Heute schläft die Katze.", "Heute pennt die Katze."}
    # object first only where the article shows the case: never "Die Katze sieht das Kind" for its reverse
    assert "Den roten Ball sieht der Hund." in pairs["The dog sees the red ball."]
    assert pairs["The woman buys the black house."] == ["Die Frau kauft das schwarze Haus.", "Die Frau erwirbt das schwarze Haus."]
    likes = [refs for src, refs in pairs.items() if " likes " in src]
    assert likes and all(any(r.endswith(" gern.") for r in refs) for refs in likes)


def test_generators_refuse_to_overwrite(tmp_path):
    S.make_translation(tmp_path, sizes=(10, 2, 2))
    with pytest.raises(FileExistsError, match="synth_en_de_train.hdf5 already exists"):
        S.make_translation(tmp_path, sizes=(10, 2, 2))
    S.make_translation(tmp_path, sizes=(10, 2, 2), overwrite=True)


def test_canonical_phrasing_leaves_language_as_the_only_ambiguity():
    from loramcl.data.synthetic import draw_shapes, shape_captions

    rng = np.random.default_rng(0)
    for _ in range(20):
        _, shapes = draw_shapes(rng)
        en = shape_captions(shapes, "en", rng, 5, phrasing="canonical")
        fr = shape_captions(shapes, "fr", rng, 5, phrasing="canonical")
        assert len(set(en)) == 1 and len(set(fr)) == 1 and en[0] != fr[0]
        assert en[0].startswith("a ") and fr[0].startswith("un ")
        for s in shapes:  # the colours are named in both languages
            assert s["colour"] in en[0]
    with pytest.raises(ValueError, match="phrasing"):
        shape_captions(shapes, "en", rng, 5, phrasing="poetic")

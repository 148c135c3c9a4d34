"""The real-recording corpus: labelling rules, reserved packages, bad files, de-duplication and splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.data.generation import CorpusError
from training.data.manifest import read_manifest
from training.data.real_corpus import MANIFEST_NAME, SUMMARY_NAME, build_real_corpus, package_files
from training.data.real_rules import RESERVED_PACKAGES, Rules, RulesError, name_text, reserved_reason

# One sample path per package of the rules: (path, instrument name or None, class, extra fields expected).
SAMPLES = {
    "tuxpaint-stamps-default": [
        ("/usr/share/tuxpaint/stamps/animals/birds/duck.ogg", None, "Duck", {"split": "train"}),
        ("/usr/share/tuxpaint/stamps/animals/birds/duck_desc_es.ogg", None, "Speech", {"language": "Spanish"}),
        ("/usr/share/tuxpaint/stamps/animals/mammals/dogs/fox.ogg", None, "Canidae, dogs, wolves", {}),
    ],
    "fillets-ng-data-cs": [("/usr/share/games/fillets-ng/sound/airplane/cs/let-m-divna.ogg", None, "Speech",
                            {"language": "Czech", "sex": "female", "family": "fillets"})],
    "fillets-ng-data-nl": [("/usr/share/games/fillets-ng/sound/barrel/nl/bar-v-dost0.ogg", None, "Speech",
                            {"language": "Dutch", "sex": "male"})],
    "festvox-ru": [("/usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav/ru_0001.wav", None, "Speech",
                    {"language": "Russian", "sex": "male", "speaker": "msu_ru_nsh"})],
    "klettres-data": [("/usr/share/klettres/hu/alpha/a1.ogg", None, "Speech", {"language": "Hungarian"})],
    "ktuberling-data": [("/usr/share/ktuberling/sounds/nn/ball.opus", None, "Speech", {"language": "Norwegian"})],
    "qabcs-data": [
        ("/usr/share/qabcs/abcs/all/noises/rooster.ogg", None, "Chicken, rooster",
         {"family": "qabcs-noises", "split": "test"}),
        ("/usr/share/qabcs/abcs/all/noises/trumpet.ogg", None, "Brass instrument", {"split": "test"}),
        ("/usr/share/qabcs/abcs/uk/sounds/words/акордеон.ogg", None, "Speech",
         {"language": "Ukrainian", "split": "train"}),
    ],
    "gcin-voice": [("/usr/share/gcin-voice/ogg/ㄅㄚ1/5.ogg", None, "Speech", {"speaker": "gcin-5"})],
    "kajongg": [
        ("/usr/share/kajongg/voices/de/female2/b1.ogg", None, "Speech",
         {"language": "German", "sex": "female", "speaker": "kajongg-de/female2", "split": "test"}),
        ("/usr/share/kajongg/voices/male1/b1.ogg", None, "Speech", {"language": "English", "sex": "male"}),
    ],
    "asterisk-core-sounds-es-g722": [("/usr/share/asterisk/sounds/es_MX_f_Allison/agent-alreadyon.g722", None,
                                      "Speech", {"language": "Spanish", "sex": "female"})],
    "asterisk-core-sounds-fr-g722": [("/usr/share/asterisk/sounds/fr_CA_f_June/digits/7.g722", None, "Speech",
                                      {"language": "French"})],
    "asterisk-core-sounds-it-g722": [("/usr/share/asterisk/sounds/it_IT_m_Carlo/vm-goodbye.g722", None, "Speech",
                                      {"language": "Italian", "sex": "male"})],
    "asterisk-core-sounds-ru-g722": [("/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU/letters/a.g722", None,
                                      "Speech", {"language": "Russian"})],
    "asterisk-prompt-fr-armelle": [("/usr/share/asterisk/sounds/fr/digits/0.gsm", None, "Speech",
                                    {"split": "test", "sex": "female"})],
    "asterisk-prompt-es-co": [("/usr/share/asterisk/sounds/es/agent-alreadyon.gsm", None, "Speech",
                               {"split": "test"})],
    "asterisk-prompt-it-menardi-wav": [("/usr/share/asterisk/sounds/it_IT_f_Menardi/agent-incorrect.wav", None,
                                        "Speech", {"split": "valid"})],
    "pocketsphinx-testdata": [("/usr/share/pocketsphinx/test/data/cards/001.wav", None, "Speech",
                               {"language": "English", "split": "test"})],
    "hydrogen-drumkits": [
        ("/usr/share/hydrogen/data/drumkits/ForzeeStereo/Kick-0.wav", 'Kick (Tama Superstar 22")', "Bass drum",
         {"family": "hydrogen-ForzeeStereo", "split": "test"}),
        ("/usr/share/hydrogen/data/drumkits/BJA_Pacific/HH_08.aiff", "Hi Hat Closed", "Hi-hat", {"split": "test"}),
        ("/usr/share/hydrogen/data/drumkits/The Black Pearl 1.0/Snare_1.wav", None, "Snare drum",
         {"family": "avl-drums", "split": "train"}),
        ("/usr/share/hydrogen/data/drumkits/Millo-Drums_v.1/tom1_1.flac", "Tom Mid", "Drum", {"family": "hydrogen-millo"}),
        ("/usr/share/hydrogen/data/drumkits/ColomboAcousticDrumkit/crash16i__crash1.flac", "crash16inch", "Cymbal",
         {"split": "valid"}),
    ],
    "hydrogen-drumkits-effects": [("/usr/share/hydrogen/data/drumkits/belofilms_GuitarStrums/Amajor_00.flac", None,
                                   "Guitar", {})],
    "grandorgue-demo": [("/usr/share/GrandOrgue/packages/demo.orgue!Bourdon8/030-F#.wav", None, "Organ", {})],
    "lmms-common": [("/usr/share/lmms/samples/instruments/church_organ01.ogg", None, "Organ", {"split": "test"}),
                    ("/usr/share/lmms/samples/drums/snare_acoustic01.ogg", None, "Snare drum", {})],
    "widelands-data": [("/usr/share/games/widelands/data/sound/animals/bird1_00.ogg", None, "Bird", {"split": "test"}),
                       ("/usr/share/games/widelands/data/sound/farm/ox_00.ogg", None, "Cattle, bovinae", {})],
    "megaglest-data": [
        ("/usr/share/games/megaglest/techs/megapack/factions/egypt/units/chicken/sounds/chicken_die1.wav", None,
         "Chicken, rooster", {"split": "train"}),
        ("/usr/share/games/megaglest/techs/megapack/commondata/sounds/horseman_die2.wav", None, "Screaming", {}),
    ],
    "ufoai-sound": [("/usr/share/games/ufoai/base/0snd.pk3!sound/footsteps/grass1.ogg", None, "Walk, footsteps", {}),
                    ("/usr/share/games/ufoai/base/0snd.pk3!sound/soldiers/femaledeath1.ogg", None, "Screaming",
                     {"sex": "female"})],
    "wesnoth-1.16-data": [("/usr/share/games/wesnoth/1.16/data/core/sounds/horse-canter.wav", None, "Horse",
                           {"split": "test"})],
    "bucklespring-data": [("/usr/share/buckle/wav/1e-0.wav", None, "Computer keyboard", {})],
    "sound-icons": [("/usr/share/sounds/sound-icons/cembalo-1.wav", None, "Harpsichord", {"split": "test"})],
}


@pytest.fixture(scope="module")
def rules():
    return Rules()


def test_every_package_of_the_rules_has_a_sample_path():
    assert set(SAMPLES) == set(Rules().packages)


@pytest.mark.parametrize("package", sorted(SAMPLES))
def test_the_rules_give_the_expected_class_for_a_sample_path_of_each_package(rules, package):
    for path, instrument, cls, expected in SAMPLES[package]:
        label = rules.label(package, path, instrument)
        assert label is not None, path
        assert label.cls == cls, path
        for key, value in expected.items():
            assert getattr(label, key) == value, (path, key)


def test_files_the_rules_exclude_or_cannot_label_get_no_label(rules):
    assert rules.label("widelands-data", "/usr/share/games/widelands/data/sound/click.ogg") is None
    assert rules.label("widelands-data", "/usr/share/games/widelands/data/music/ingame_00.ogg") is None
    assert rules.label("lmms-common", "/usr/share/lmms/samples/basses/bass01.ogg") is None
    assert rules.label("tuxpaint-stamps-default", "/usr/share/tuxpaint/stamps/space/apollo_lander.ogg") is None
    assert rules.label("asterisk-core-sounds-ru-g722", "/usr/share/asterisk/sounds/ru_RU_f_IvrvoiceRU/silence/1.g722") is None


def test_the_keyword_table_reads_names_split_at_separators_and_case(rules):
    assert name_text("HiHatClosed-0") == "hi hat closed 0"
    assert name_text("worker_mine2") == "worker mine 2"
    assert rules.keyword_class("ZildjianSplash-Hard") == "Cymbal"  # a cymbal, not water
    assert rules.keyword_class("splash1") == "Water"
    assert rules.keyword_class("TomLow-3") == "Drum"
    assert rules.keyword_class("train_whistle") == "Train"  # not "rain"
    assert rules.keyword_class("flute01") == "Wind instrument, woodwind instrument"  # not "lute"


def test_every_class_has_yamnet_tags_from_audioset(rules):
    from training.models.yamnet import class_names

    names = set(class_names())
    assert set(rules.classes) - names == {"Sword"}  # named as AudioSet names them, but for blades
    for cls, entry in rules.classes.items():
        assert entry["audioset"], cls
        assert set(entry["audioset"]) <= names, (cls, set(entry["audioset"]) - names)


@pytest.mark.parametrize("package", RESERVED_PACKAGES)
def test_reserved_packages_are_refused_by_name(rules, package, tmp_path):
    with pytest.raises(RulesError, match="reserved"):
        rules.package(package)
    with pytest.raises(CorpusError, match="reserved"):
        build_real_corpus(tmp_path / "out", [package], info_dir=tmp_path, progress=False)
    with pytest.raises(CorpusError, match="reserved"):
        package_files(package, tmp_path)


def test_reserved_paths_are_refused_whatever_package_lists_them(tmp_path):
    assert reserved_reason(path="/usr/share/sounds/alsa/Front_Center.wav")
    assert reserved_reason(path="/usr/share/sonic-pi/samples/drum_heavy_kick.flac")
    assert reserved_reason(path="/usr/share/sounds/sound-icons/piano-3.wav") is None
    # A package of harmless name that lists a reserved file: refused before anything is read.
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(_RULES.format(root=tmp_path))
    info = tmp_path / "info"
    info.mkdir()
    (info / "fake-sounds.list").write_text("/usr/share/sounds/alsa/Front_Center.wav\n")
    with pytest.raises(CorpusError, match="/usr/share/sounds/alsa/Front_Center.wav.*reserved"):
        build_real_corpus(tmp_path / "out", ["fake-sounds"], rules_file, info, workers=1, progress=False)
    assert not (tmp_path / "out").exists()
    # A rules file that names a reserved package is refused as a whole.
    bad = tmp_path / "bad.toml"
    bad.write_text(_RULES.format(root=tmp_path).replace("fake-sounds", "lugaru-data"))
    with pytest.raises(RulesError, match="lugaru-data is reserved"):
        Rules(bad)


_RULES = """
[classes]
"Bird" = {{ audioset = ["Bird"] }}
"Dog" = {{ audioset = ["Dog"] }}
[[keywords]]
pattern = 'bird'
class = "Bird"
[[keywords]]
pattern = 'dog'
class = "Dog"
[families]
"kennel" = "test"
"aviary-b" = "valid"
[packages.fake-sounds]
licence = "CC0"
files = '^/'
family = "aviary"
overrides = [{{ pattern = '/kennel/', family = "kennel" }}, {{ pattern = '/b/', family = "aviary-b" }}]
"""


def _tone(path: Path, frequency: float, rate: int = 16000, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * frequency * t), rate)


@pytest.fixture()
def fake_corpus(tmp_path):
    """A fake package: three birds (one a copy in another family), two dogs, a corrupt and a silent file."""
    root = tmp_path / "pkg"
    files = {
        "a/bird1.wav": 440.0, "a/bird2.wav": 550.0, "b/bird3.wav": 660.0,
        "kennel/dog1.wav": 330.0, "kennel/dog2.wav": 220.0,
        "kennel/bird_copy.wav": 440.0,  # the same samples as a/bird1.wav, in the test family
    }
    for name, frequency in files.items():
        _tone(root / name, frequency)
    (root / "a/bird_broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    sf.write(root / "a/bird_silent.wav", np.zeros(8000), 16000)
    _tone(root / "a/unlabelled_cat.wav", 770.0)
    info = tmp_path / "info"
    info.mkdir()
    listed = sorted(str(path) for path in root.rglob("*.wav"))
    (info / "fake-sounds.list").write_text("\n".join([str(root), *listed]) + "\n")
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(_RULES.format(root=root))
    return tmp_path, rules_file, info


def _build(fake, capsys=None):
    tmp_path, rules_file, info = fake
    manifest = build_real_corpus(tmp_path / "out", ["fake-sounds"], rules_file, info, workers=1, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return manifest, rows


def test_a_bad_file_is_skipped_with_its_path_in_the_message(fake_corpus, capsys):
    manifest, rows = _build(fake_corpus)
    broken = str(fake_corpus[0] / "pkg/a/bird_broken.wav")
    silent = str(fake_corpus[0] / "pkg/a/bird_silent.wav")
    output = capsys.readouterr().out
    assert f"skipped {broken}: cannot decode it" in output
    assert f"skipped {silent}: it is silent" in output
    summary = json.loads((manifest.parent / SUMMARY_NAME).read_text())
    assert {entry["path"] for entry in summary["skipped"]} == {broken, silent}
    assert summary["packages"]["fake-sounds"]["unlabelled"] == 1
    assert all(not row["origin"].endswith(("broken.wav", "silent.wav", "cat.wav")) for row in rows)
    assert len(read_manifest(manifest).clips) == len(rows) == 5  # every written row reads back with its audio


def test_splits_are_disjoint_by_content_hash_and_by_family(fake_corpus):
    manifest, rows = _build(fake_corpus)
    splits_of_hash, splits_of_family = {}, {}
    for row in rows:
        splits_of_hash.setdefault(row["sha256"], set()).add(row["split"])
        splits_of_family.setdefault(row["family"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_hash.values())
    assert len(splits_of_hash) == len(rows)  # one row per recording
    assert splits_of_family == {"aviary": {"train"}, "aviary-b": {"valid"}, "kennel": {"test"}}
    # The copy of a training recording in the test family is dropped there, kept in train.
    assert not any(row["origin"].endswith("bird_copy.wav") for row in rows)
    summary = json.loads((manifest.parent / SUMMARY_NAME).read_text())
    assert summary["duplicates_dropped"] == 1
    assert summary["classes"]["test"] == {"Dog": {"clips": 2, "minutes": pytest.approx(1 / 60, abs=0.01),
                                                  "packages": ["fake-sounds"]}}
    table = (manifest.parent / "classes.md").read_text().splitlines()
    assert table[0] == "| class | train clips | train min | valid clips | valid min | test clips | test min | packages |"
    assert table[2].startswith("| Bird | 2 | ") and table[-1].startswith("| **all** | 2 | ")
    for row in rows:
        assert row["package"] == "fake-sounds" and row["licence"] == "CC0"
        assert row["keywords"] == [("Dog" if "dog" in row["origin"] else "Bird")]
        assert row["captions"] == [f"the sound of {row['keywords'][0].lower()}"]


def test_a_rerun_decodes_nothing_again_and_gives_the_same_manifest(fake_corpus, monkeypatch):
    manifest, _ = _build(fake_corpus)
    before = manifest.read_text()
    written = {path: path.stat().st_mtime_ns for path in (manifest.parent / "audio").rglob("*.flac")}
    import training.data.real_corpus as real_corpus

    def fail(job):
        raise AssertionError(f"decoded {job[0]} again")

    monkeypatch.setattr(real_corpus, "convert", fail)
    manifest, _ = _build(fake_corpus)
    assert manifest.read_text() == before
    assert {path: path.stat().st_mtime_ns for path in (manifest.parent / "audio").rglob("*.flac")} == written


def test_an_interrupted_build_finishes_the_files_it_had_not_written(fake_corpus):
    manifest, rows = _build(fake_corpus)
    scan = manifest.parent / "scan.jsonl"
    lines = scan.read_text().splitlines()
    scan.write_text("\n".join(lines[:2]) + '\n{"source": "cut sh')  # an interruption mid-line
    victim = manifest.parent / rows[-1]["path"]
    os.unlink(victim)
    manifest, again = _build(fake_corpus)
    assert again == rows
    assert victim.is_file()


# ---------------------------------------------------------------------------------------------- label audit

SPEECH_WAV = Path("/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav")


def test_judge_agrees_on_a_class_tag_in_the_top_five_and_flags_a_confident_contradiction():
    from training.data.label_audit import judge

    names = ["Speech", "Dog", "Bark", "Music", "Piano", "Bird", "Wind"]
    scores = np.array([0.9, 0.01, 0.005, 0.2, 0.1, 0.05, 0.04])
    assert judge(scores, names, ["Speech"])["agrees"]
    verdict = judge(scores, names, ["Dog", "Bark"])
    assert not verdict["agrees"] and verdict["flagged"] and verdict["top"][0] == ("Speech", 0.9)
    assert not judge(scores * 0.2, names, ["Dog", "Bark"])["flagged"]  # YAMNet unsure: not flagged


@pytest.mark.skipif(not SPEECH_WAV.is_file(), reason="pocketsphinx-testdata is not installed (make apt)")
def test_the_audit_reports_per_class_agreement_and_flags_a_wrong_label(tmp_path):
    from training.data.label_audit import DETAILS_NAME, REPORT_NAME, audit

    rows = [{"path": str(SPEECH_WAV), "keywords": [cls], "captions": [], "source": "t", "split": "test"}
            for cls in ("Speech", "Dog")]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = audit(tmp_path / "manifest.jsonl", tmp_path / "audit", progress=False)
    assert summary == {"Speech": {"clips": 1, "agree": 1, "flagged": 0}, "Dog": {"clips": 1, "agree": 0, "flagged": 1}}
    report = (tmp_path / "audit" / REPORT_NAME).read_text()
    assert f"| Dog | test | {SPEECH_WAV} | Speech" in report
    details = json.loads((tmp_path / "audit" / DETAILS_NAME).read_text())
    assert [clip["class"] for clip in details["clips"] if clip["flagged"]] == ["Dog"]


def test_the_audit_samples_speech_and_keeps_every_other_clip():
    from training.data.label_audit import audit_rows

    rows = [{"keywords": ["Speech"], "split": split, "path": f"{split}{i}"} for split in ("train", "test")
            for i in range(50)] + [{"keywords": ["Bird"], "split": "test", "path": "b"}]
    chosen = audit_rows(rows, speech_sample=10)
    assert sum(row["keywords"] == ["Speech"] for row in chosen) == 20
    assert {"path": "b", "keywords": ["Bird"], "split": "test"} in chosen
    assert audit_rows(rows, speech_sample=10) == chosen

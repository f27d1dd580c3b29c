"""`prepare_dataset` brings the user's own captions along and says what it did to them."""

import pytest

from charlora.dataset import build_plan, check_dataset, prepare_dataset
from charlora.errors import CharLoRAError
from charlora.params import defaults, normalize

from dataset_helpers import pattern, save


def config(img_dir, **overrides):
    values = dict(defaults(), train_data_dir=str(img_dir), max_resolution="64,64", min_bucket_reso=64,
                  max_bucket_reso=128, bucket_no_upscale=False, **overrides)
    return normalize(values).values


@pytest.fixture
def girl_folder(tmp_path):
    """14 images with the user's captions: 11 with the trigger word, 3 without; one of them as .caption."""
    src = tmp_path / "mine"
    for i in range(1, 15):
        caption = f"wwaa girl, pose {i}" if i > 3 else f"a girl, pose {i}"
        save(src / f"girl_{i:02d}.png", pattern(64, 64, i), caption, ext=".caption" if i == 5 else ".txt")
    (src / "girl_02.txt").write_text("a girl, pose 2\nsecond line kept\n", encoding="utf-8")
    (src / "girl_04.txt").write_text("WWAA girl, shouting\n", encoding="utf-8")  # case differs: still the word
    save(src / "solo.png", pattern(64, 64, 99))  # no caption of its own
    return src


@pytest.mark.parametrize("write_captions", [False, True])
def test_prepare_copies_the_users_captions_and_adds_the_trigger(girl_folder, tmp_path, write_captions):
    result = prepare_dataset(girl_folder, tmp_path / "project", "wwaa", "girl", 10, write_captions=write_captions)
    concept = result.concept_dir
    assert result.copied == 15 and result.captions_copied == 14
    assert result.trigger_added == ["girl_01.txt", "girl_02.txt", "girl_03.txt"]
    assert (concept / "girl_01.txt").read_text(encoding="utf-8") == "wwaa, a girl, pose 1\n"
    assert (concept / "girl_02.txt").read_text(encoding="utf-8") == "wwaa, a girl, pose 2\nsecond line kept\n"
    assert (concept / "girl_04.txt").read_text(encoding="utf-8") == "WWAA girl, shouting\n"
    assert (concept / "girl_05.txt").read_text(encoding="utf-8") == "wwaa girl, pose 5\n"  # .caption -> .txt
    assert (concept / "girl_14.txt").read_text(encoding="utf-8") == "wwaa girl, pose 14\n"
    # a starter caption only where the user had none
    assert result.captions_written == (1 if write_captions else 0)
    assert (concept / "solo.txt").exists() == write_captions
    assert "copied 14 captions" in result.summary_lines()
    assert "added the trigger word to 3 of them: girl_01.txt, girl_02.txt, girl_03.txt" in result.summary_lines()

    report = check_dataset(config(result.img_dir, caption_extension=".txt"))
    summary = report.as_dict()["concepts"][0]
    assert summary["captions_found"] == 14 + write_captions
    assert not [p for p in report.problems if "trigger word" in p.problem]
    captions = {item.path.name: item.caption for item in report.plan.concepts[0].images}
    assert captions["girl_01.png"] == "wwaa, a girl, pose 1"


def test_prepare_never_overwrites_a_caption_already_in_the_project(girl_folder, tmp_path):
    concept = tmp_path / "project" / "img" / "10_wwaa girl"
    concept.mkdir(parents=True)
    (concept / "girl_01.txt").write_text("edited by hand\n", encoding="utf-8")
    result = prepare_dataset(girl_folder, tmp_path / "project", "wwaa", "girl", 10)
    assert (concept / "girl_01.txt").read_text(encoding="utf-8") == "edited by hand\n"
    assert result.captions_copied == 13 and result.trigger_added == ["girl_02.txt", "girl_03.txt"]
    assert any("girl_01.txt already exists; not overwritten" in s for s in result.skipped)
    again = prepare_dataset(girl_folder, tmp_path / "project", "wwaa", "girl", 10)
    assert again.copied == 0 and again.captions_copied == 0 and len(again.skipped) == 15 + 14
    assert (concept / "girl_02.txt").read_text(encoding="utf-8").startswith("wwaa, a girl")  # not "wwaa, wwaa, "


def test_prepare_uses_the_configured_caption_extension(girl_folder, tmp_path):
    result = prepare_dataset(girl_folder, tmp_path / "p", "wwaa", "girl", 2, caption_extension="")
    assert (result.concept_dir / "girl_01.caption").read_text(encoding="utf-8") == "wwaa, a girl, pose 1\n"
    assert not list(result.concept_dir.glob("*.txt"))
    plan = build_plan(config(result.img_dir, caption_extension=""))  # "" is sd-scripts' ".caption"
    assert sum(c.captions_missing for c in plan.concepts) == 1  # only solo.png


def test_a_caption_that_is_not_utf8_is_copied_unchanged_and_reported(tmp_path):
    src = tmp_path / "mine"
    save(src / "a.png", pattern(64, 64, 1))
    (src / "a.txt").write_bytes("fille \xe9t\xe9".encode("latin-1"))
    result = prepare_dataset(src, tmp_path / "p", "wwaa", "girl", 1)
    assert (result.concept_dir / "a.txt").read_bytes() == (src / "a.txt").read_bytes()
    assert result.captions_copied == 1 and not result.trigger_added
    assert "a.txt is not UTF-8 text" in result.caption_problems[0]


@pytest.mark.parametrize("trigger, class_word, message", [
    ("", "girl", "enter a trigger word (one word, e.g. 'wwaa'): it is the word your prompts will use to call the "
                 "character"),
    ("  ", "girl", "enter a trigger word (one word"),
    ("wwaa", "", "enter a class word (one word, e.g. 'girl')"),
    ("two words", "girl", "trigger 'two words' must be one word without spaces, slashes or '_'"),
    ("wwaa", "cute_girl", "class word 'cute_girl' must be one word"),
])
def test_prepare_asks_for_the_trigger_and_class_words(tmp_path, trigger, class_word, message):
    src = tmp_path / "mine"
    save(src / "a.png", pattern(64, 64, 1))
    with pytest.raises(CharLoRAError) as caught:
        prepare_dataset(src, tmp_path / "p", trigger, class_word, 10)
    assert str(caught.value).startswith(message)
    assert "''" not in str(caught.value)
    assert not (tmp_path / "p").exists()


def test_prepare_strips_blanks_around_the_words(tmp_path):
    src = tmp_path / "mine"
    save(src / "a.png", pattern(64, 64, 1))
    result = prepare_dataset(src, tmp_path / "p", " wwaa ", "girl\n", 3)
    assert result.concept_dir.name == "3_wwaa girl"

"""Sample prompt lines a user gets wrong are used as far as they can be, with a warning naming the value."""

import pytest

from charlora.train.sampling import parse_prompts


@pytest.mark.parametrize("line, expected", [
    ("a girl --w abc", "--w abc: --w takes a width in pixels"),
    ("a girl --s -3", "--s -3: --s takes a number of steps"),
    ("a girl --l nan", "--l nan: --l takes a CFG scale"),
    ("a girl --d x1", "--d x1: --d takes a seed"),
    ("a girl --q 3", "--q 3 is not known; ignored"),
    ("a (((girl", "has 3 '(' and 0 ')'"),
])
def test_bad_sample_options_are_named(line, expected):
    (sample,) = parse_prompts(line)
    assert sample.prompt.startswith("a ")
    assert any(expected in w for w in sample.warnings), sample.warnings
    assert (sample.width, sample.steps, sample.cfg_scale) == (512, 30, 7.5)  # the bad value changed nothing


def test_good_lines_warn_nothing():
    (sample,) = parse_prompts("a (girl) smiling --w 64 --h 64 --s 2 --l 7 --d 1")
    assert sample.warnings == [] and (sample.width, sample.steps, sample.seed) == (64, 2, 1)

"""Threshold specs: syntax, refusals and which pattern wins."""

import pytest

from perfwatch.errors import UserError
from perfwatch.thresholds import DEFAULT_THRESHOLD, Thresholds, parse_threshold, parse_thresholds


@pytest.mark.parametrize("value, fraction", [
    ("5%", 0.05), (" 7.5 % ", 0.075), ("100%", 1.0), ("0.05", 0.05), (0.05, 0.05), ("0.5%", 0.005),
])
def test_accepted_syntax(value, fraction):
    assert parse_threshold(value) == pytest.approx(fraction)


@pytest.mark.parametrize("value, problem", [
    (5, "is ambiguous"), ("5", "is ambiguous"), (1.0, "is ambiguous"),
    (0, "must be above zero"), ("0%", "must be above zero"),
    ("-5%", "must be above zero"), (-0.05, "must be above zero"),
    ("150%", "is over 100%"), ("abc", "is not a number"), (True, "is not a number"), (None, "is not a number"),
    ("nan", "is not a finite number"), ("%", "is not a number"),
])
def test_refusals_name_the_pattern_and_the_syntax_in_one_line(value, problem):
    with pytest.raises(ValueError) as err:
        parse_threshold(value, "loader.*")
    message = str(err.value)
    assert problem in message and "'loader.*'" in message and "'5%'" in message and "\n" not in message
    assert isinstance(err.value, UserError)  # the CLI reports it with exit code 2


def test_spec_refusals():
    with pytest.raises(ValueError, match="threshold '5' for 'training.*' is ambiguous"):
        parse_thresholds({"loader.*": "5%", "training.*": "5"})
    with pytest.raises(ValueError, match="must be a table"):
        parse_thresholds(["5%"])
    with pytest.raises(ValueError, match="non-empty glob"):
        parse_thresholds({"": "5%"})


def test_most_specific_pattern_wins_whatever_the_declared_order():
    spec = {"*": "7%", "loader.*": "5%", "training.*": "8%", "training.*Transformer*": "10%"}
    for ordering in (spec, dict(reversed(list(spec.items())))):
        t = parse_thresholds(ordering)
        assert t.for_name("loader.iterate(workers=4)") == 0.05
        assert t.for_name("training.step(model=TransformerLM)") == 0.10
        assert t.for_name("training.step(model=ResNet18)") == 0.08
        assert t.for_name("other.bench") == 0.07


def test_equally_specific_patterns_go_to_the_first_declared():
    assert parse_thresholds({"a*": "1%", "*b": "2%"}).for_name("ab") == 0.01
    assert parse_thresholds({"*b": "2%", "a*": "1%"}).for_name("ab") == 0.02


def test_default_applies_when_nothing_matches_and_matching_is_case_sensitive():
    assert DEFAULT_THRESHOLD == 0.03
    assert parse_thresholds(None) == Thresholds()
    t = parse_thresholds({"loader.*": "2%"})
    assert t.for_name("Loader.iterate") == DEFAULT_THRESHOLD
    assert parse_thresholds({"loader.*": "2%"}, default=0.1).for_name("x") == 0.1

"""DAPO soft overlong punishment."""
import pytest

from rewards import overlong_penalty

OPTS = {"max_tokens": 100, "buffer_tokens": 20}


@pytest.mark.parametrize(
    "tokens, expected, reason",
    [
        (0, 0.0, "ok"),
        (80, 0.0, "ok"),
        (81, -0.05, "soft_overlong"),
        (90, -0.5, "soft_overlong"),
        (99, -0.95, "soft_overlong"),
        (100, -1.0, "overlong"),
        (5000, -1.0, "overlong"),
    ],
)
def test_linear_ramp_from_token_counts(tokens, expected, reason):
    r = overlong_penalty("ignored text", {"completion_tokens": tokens}, **OPTS)
    assert float(r) == pytest.approx(expected) and r.reason == reason


def test_penalty_scales_the_ramp():
    assert overlong_penalty("", {"completion_tokens": 90}, **OPTS, penalty=0.5) == pytest.approx(-0.25)
    assert overlong_penalty("", {"completion_tokens": 200}, **OPTS, penalty=0.5) == pytest.approx(-0.5)


def test_zero_buffer_is_a_hard_limit_past_max_tokens():
    # "0 if length <= max_tokens - buffer" comes first, so exactly max_tokens is still free.
    assert overlong_penalty("", {"completion_tokens": 100}, max_tokens=100, buffer_tokens=0) == 0.0
    assert overlong_penalty("", {"completion_tokens": 101}, max_tokens=100, buffer_tokens=0) == -1.0


def test_word_count_stands_in_for_missing_token_counts():
    assert overlong_penalty("w " * 80, {}, **OPTS) == 0.0
    assert overlong_penalty("w " * 90, {}, **OPTS) == pytest.approx(-0.5)
    assert overlong_penalty("w\n" * 150, {}, **OPTS) == -1.0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_tokens": 0, "buffer_tokens": 0}, "max_tokens must be a positive int"),
        ({"max_tokens": 100.0, "buffer_tokens": 10}, "max_tokens must be a positive int"),
        ({"max_tokens": True, "buffer_tokens": 0}, "max_tokens must be a positive int"),
        ({"max_tokens": 100, "buffer_tokens": 101}, "buffer_tokens must be an int in"),
        ({"max_tokens": 100, "buffer_tokens": -1}, "buffer_tokens must be an int in"),
        ({"max_tokens": 100, "buffer_tokens": 10, "penalty": -1}, "penalty must be a finite number"),
        ({"max_tokens": 100, "buffer_tokens": 10, "penalty": float("nan")}, "penalty must be a finite number"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        overlong_penalty("text", {}, **options)


def test_bad_token_count_in_sample():
    with pytest.raises(ValueError, match="completion_tokens"):
        overlong_penalty("text", {"completion_tokens": "90"}, **OPTS)

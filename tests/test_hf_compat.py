"""The hooks read the decoder's cache under both of its names (transformers < 5.24: past_key_values; >= 5.24: cache)."""
import pytest

from common.hf_compat import cache_arg, call_arg


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_cache_is_found_under_either_name(name):
    marker = object()
    assert cache_arg({name: marker, "attention_mask": None}) is marker


def test_no_cache_and_a_none_cache_read_as_none():
    assert cache_arg({}) is None
    assert cache_arg({"cache": None, "past_key_values": None}) is None


def test_call_arg_prefers_the_keyword_then_the_position():
    assert call_arg((1, 2), {"x": 3}, "x", 0) == 3
    assert call_arg((1, 2), {}, "x", 1) == 2
    assert call_arg((1,), {}, "x", 1) is None

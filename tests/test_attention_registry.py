"""common.attention_registry: one call registers a wrapped sdpa/eager pair with the stock mask builders."""
import pytest
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from common import attention, soft_mask
from common.attention_registry import register_wrapped_attention


def test_registers_each_base_wrapped_with_its_own_mask_builder():
    wrapped = []

    def wrap(base):
        wrapped.append(base)
        return lambda *a, **k: ("wrapped", base)

    names = register_wrapped_attention("test_registry", wrap)
    assert names == {"sdpa": "test_registry_sdpa", "eager": "test_registry_eager"}
    assert wrapped == [sdpa_attention_forward, eager_attention_forward]
    assert AttentionInterface()["test_registry_sdpa"]() == ("wrapped", sdpa_attention_forward)
    assert AttentionInterface()["test_registry_eager"]() == ("wrapped", eager_attention_forward)
    assert AttentionMaskInterface()["test_registry_sdpa"] is sdpa_mask
    assert AttentionMaskInterface()["test_registry_eager"] is eager_mask


def test_capture_and_key_bias_names_are_unchanged():
    assert (attention.SDPA_NAME, attention.EAGER_NAME) == ("tokenprune_sdpa", "tokenprune_eager")
    assert (soft_mask.SDPA_NAME, soft_mask.EAGER_NAME) == ("tokenprune_keybias_sdpa", "tokenprune_keybias_eager")
    for name in (attention.SDPA_NAME, attention.EAGER_NAME, soft_mask.SDPA_NAME, soft_mask.EAGER_NAME):
        assert name in AttentionInterface() and name in AttentionMaskInterface()


@pytest.mark.parametrize("prefix", ["", None])
def test_bad_prefix_names_the_argument(prefix):
    with pytest.raises(ValueError, match="prefix"):
        register_wrapped_attention(prefix, lambda base: base)

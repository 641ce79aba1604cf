"""papers/stf/modules.py and param_counts.py: shapes, Table 1 structure and parameter counts at LLaVA-1.5 size,
conv/locality equivalences, and the projector installed in a tiny random HF LLaVA (forward, generate, gradients)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from common.baselines.avgpool import avgpool_tokens
from common.baselines.tokenconcat import tokenconcat
from common.flops import stf_token_count
from common.models.tiny import make_batch, tiny_llava_config
from papers.stf import param_counts as pc
from papers.stf.modules import (KINDS, TABLE4_KE, VARIANTS, STFConfig, build_projector,
                                default_blocks, image_token_count, install_projector, projector_for_model,
                                vision_block_features)

C1, C3 = 8, 32  # small widths, C3 = 4 C1 as at LLaVA-1.5 size (stf.md §12)


def _feats(cfg: STFConfig, batch: int = 2) -> torch.Tensor:
    H, W = cfg.grid
    return torch.randn(batch, H * W, len(cfg.blocks) * cfg.vision_hidden)


# ------------------------------------------------------------------------------------------ blocks


def test_default_blocks_paper_and_released_code():
    assert default_blocks(24, 8, "paper") == (3, 6, 9, 12, 15, 18, 21, 24)  # l_i = i L / M (stf.md §3.3)
    assert default_blocks(24, 8, "code") == (-2, 21, 18, 15, 12, 9, 6, 3)  # clip_encoder.py feature_select
    assert default_blocks(4, 2) == (2, 4)
    assert STFConfig().blocks == (3, 6, 9, 12, 15, 18, 21, 24)
    assert STFConfig(kind="stf").blocks == (-2,)  # STF only / baselines read LLaVA's penultimate block
    with pytest.raises(ValueError, match="num_blocks"):
        default_blocks(4, 8)


# ------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k,E", TABLE4_KE)
def test_stf_shapes_for_every_table4_setting(k, E, variant):
    proj = build_projector("mbtf_stf", C1, C3, 8, k=k, E=E, variant=variant, num_vision_layers=4, num_blocks=4)
    y = proj(_feats(proj.config))
    assert y.shape == (2, (8 // k) ** 2 * E, C3)
    assert proj.num_tokens == stf_token_count(8, k, E) == y.shape[1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_shape_and_list_input(kind, variant):
    proj = build_projector(kind, C1, C3, (4, 6), variant=variant, num_vision_layers=4, num_blocks=2)
    x = _feats(proj.config)
    y = proj(x)
    n = 24 if KINDS[kind][1] == "none" else 6
    assert y.shape == (2, n, C3) and proj.num_tokens == n
    per_block = list(x.split(C1, dim=-1))  # the same features as one tensor per block
    assert torch.equal(proj(per_block), y)


@pytest.mark.parametrize("k,E,n", [(2, 1, 144), (3, 1, 64), (2, 2, 288), (4, 4, 144), (8, 32, 288), (6, 1, 16)])
def test_llava_scale_token_counts(k, E, n):
    cfg = STFConfig(k=k, E=E)  # 24x24 grid of CLIP ViT-L/14-336
    proj = pc.meta_projector(cfg)
    y = proj(torch.empty(1, 576, 8 * 1024, device="meta"))
    assert cfg.num_tokens == n and tuple(y.shape) == (1, n, 4096)


# ------------------------------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("kind,variant,params,printed", [
    ("stf", "paper", 151_019_520, "151.0M"),  # Table 1(b): 2x2 conv 1024->4096, 1x1 ->16384, 1x1 ->4096
    ("stf", "code", 134_238_208, "134.2M"),  # concat 2x2 -> Linear 4096->16384 -> Linear 16384->4096
    ("mbtf_stf", "paper", 188_773_376, "188.8M"),
    ("mbtf_stf", "code", 171_992_064, "172.0M"),
    ("mlp", "paper", 20_979_712, "21.0M"),  # LLaVA-1.5 mlp2x_gelu
    ("tokenconcat", "paper", 33_562_624, "33.6M"),  # 4096 -> 4096 -> 4096
    ("avgpool", "paper", 20_979_712, "21.0M"),
])
def test_param_counts_golden_at_llava15(kind, variant, params, printed):
    proj = pc.meta_projector(STFConfig(kind=kind, variant=variant))
    assert pc.count_params(proj) == params
    assert pc._m(params) == printed


@pytest.mark.parametrize("variant", VARIANTS)
def test_mbtf_params_and_flops_at_llava15(variant):
    proj = pc.meta_projector(STFConfig(variant=variant))
    assert pc.count_params(proj.mbtf) == 37_753_856 == pc.MBTF_PARAMS  # 8192->4096, 4096->1024 (stf.md §3.6)
    mbtf_only, stf_only = STFConfig(kind="mbtf", variant=variant), STFConfig(kind="stf", variant="paper")
    mlp = STFConfig(kind="mlp")
    # stf.md §3.6: MBTF ~ 43.5 GFLOPs (576 tokens), paper STF ~ 43.5 GFLOPs (144 tokens), both per image
    assert pc.projector_flops(mbtf_only) - pc.projector_flops(mlp) == 2 * 576 * (8192 * 4096 + 4096 * 1024)
    assert round(pc.projector_flops(stf_only) / 1e9, 1) == 43.5


def test_table4_param_growth_matches_k_squared_rule():
    rows = {(r["k"], r["E"]): r for r in pc.table4_rows(STFConfig())}
    # k x k conv C1 -> C2 = k^2 C1 (stf.md §3.5): 16,781,312 / 268,451,840 / 4,295,032,832 parameters
    for (k, E), conv in {(2, 1): 16_781_312, (4, 4): 268_451_840, (8, 16): 4_295_032_832}.items():
        c2 = k * k * 1024
        align = (c2 // E) * 16384 + 16384 + 16384 * 4096 + 4096
        assert rows[k, E]["stf_params"] == conv + align
        assert rows[k, E]["tokens"] == 144 and rows[k, 2 * E]["tokens"] == 288


def test_table1_structure_paper_and_code():
    def rows(variant):
        return [(r.module, r.output, r.kernel, r.stride, r.act)
                for r in pc.structure(STFConfig(variant=variant))]

    assert rows("paper") == [  # Table 1(a) + 1(b)
        ("MBTF", "24x24x4096", "1x1", 1, "GeLU"), ("MBTF", "24x24x1024", "1x1", 1, "GeLU"),
        ("STF", "12x12x4096", "2x2", 2, "GeLU"), ("STF", "12x12x16384", "1x1", 1, "GeLU"),
        ("STF", "12x12x4096", "1x1", 1, "GeLU")]
    assert rows("code") == [  # stf.md §3.7: no final GELUs, no learnable 2x2 layer to 4096
        ("MBTF", "24x24x4096", "1x1", 1, "GeLU"), ("MBTF", "24x24x1024", "1x1", 1, "-"),
        ("STF", "12x12x16384", "2x2", 2, "GeLU"), ("STF", "12x12x4096", "1x1", 1, "-")]


def test_param_counts_cli_prints_both_scales():
    text = pc.main([])
    assert "| stf | paper | 144 | 151,019,520 | 151.0M |" in text
    assert "| stf | code | 144 | 134,238,208 | 134.2M |" in text
    assert "## LLaVA-1.5-7B" in text and "## toy" in text
    assert "| 8 | 16 | 144 | 4,429,271,040" in text


# ------------------------------------------------------------------------------------------ equivalences


def test_stf_fusion_layer_is_a_kxk_stride_k_conv():
    k, H = 2, 4
    proj = build_projector("stf", C1, C3, H, k=k)
    lin = proj.stf.conv1[0]  # Linear(k^2 C1 -> C2) on windows concatenated row-major, channels last
    weight = lin.weight.reshape(-1, k, k, C1).permute(0, 3, 1, 2)  # [C2, C1, dy, dx]
    x = torch.randn(2, H * H, C1)
    conv = F.conv2d(x.transpose(1, 2).reshape(2, C1, H, H), weight, lin.bias, stride=k)  # Eq. (2)
    ref = F.gelu(conv).flatten(2).transpose(1, 2)
    assert torch.allclose(proj.stf.conv1(tokenconcat(x, (H, H), k)), ref, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k,E", [(2, 1), (2, 2), (4, 8)])
def test_each_window_feeds_only_its_own_E_tokens(k, E, variant):
    """Location-major output. paper: a patch feeds all E tokens of its window (the split comes after the learnable
    k x k fusion); code: the split groups the window's k^2 raw tokens, so a patch feeds exactly one of the E."""
    H = 8
    proj = build_projector("stf", C1, C3, H, k=k, E=E, variant=variant)
    x = torch.randn(1, H * H, C1)
    r, c = 5, 2
    x2 = x.clone()
    x2[0, r * H + c] += 1.0
    changed = (proj(x2) - proj(x)).abs().amax(-1)[0] > 0
    win = (r // k) * (H // k) + c // k
    expected = torch.zeros_like(changed)
    if variant == "paper":
        expected[win * E:(win + 1) * E] = True
    else:
        expected[win * E + ((r % k) * k + c % k) // (k * k // E)] = True
    assert torch.equal(changed, expected)


def test_avgpool_kind_is_llava_mlp_on_pooled_features():
    proj = build_projector("avgpool", C1, C3, 4)
    x = torch.randn(2, 16, C1)
    assert torch.allclose(proj(x), proj.mlp(avgpool_tokens(x, (4, 4), 2)))
    assert [type(m).__name__ for m in proj.mlp] == ["Linear", "GELU", "Linear"]


# ------------------------------------------------------------------------------------------ HF LLaVA


def _tiny_llava() -> LlavaForConditionalGeneration:
    cfg = tiny_llava_config(vision_layers=4, image_size=32, patch=4)  # 8x8 = 64 patch tokens, 4 CLIP blocks
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


def test_mlp_kind_reproduces_hf_llava_projector():
    model = _tiny_llava()
    hf = model.model.multi_modal_projector
    proj = projector_for_model(model, "mlp")
    proj.mlp[0].load_state_dict(hf.linear_1.state_dict())
    proj.mlp[2].load_state_dict(hf.linear_2.state_dict())
    x = torch.randn(2, 64, 32)
    assert torch.allclose(proj(x), hf(x), atol=1e-6)


def _projected(out) -> torch.Tensor:
    """The projector's output rows: transformers >= 5.24 returns them as a list with one tensor per image."""
    feats = out.image_hidden_states
    return torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats


@pytest.mark.parametrize("variant", VARIANTS)
def test_installed_stf_projector_runs_forward_and_generate(variant):
    model = _tiny_llava()
    proj = install_projector(model, projector_for_model(model, "mbtf_stf", num_blocks=4, variant=variant))
    assert model.config.vision_feature_layer == ([1, 2, 3, 4] if variant == "paper" else [-2, 3, 2, 1])
    assert image_token_count(model) == 16  # 8x8 grid -> 4x4
    tid = model.config.image_token_id
    batch = make_batch(2, n_image_tokens=16, image_token_id=tid, image_size=32)
    with torch.no_grad():
        out = model(**batch.inputs())
        feats = vision_block_features(model.model.vision_tower, batch.pixel_values, proj.config.blocks)
        assert [f.shape for f in feats] == [torch.Size([2, 64, 32])] * 4  # CLS dropped
        assert torch.allclose(_projected(out).reshape(2, 16, 64), proj(feats), atol=1e-6)
        gen = model.generate(**batch.inputs(), max_new_tokens=3, do_sample=False)
    assert gen.shape == (2, batch.input_ids.shape[1] + 3)
    full = make_batch(2, n_image_tokens=64, image_token_id=tid, image_size=32)
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**full.inputs())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_installs(kind):
    model = _tiny_llava()
    install_projector(model, projector_for_model(model, kind, num_blocks=2))
    n = image_token_count(model)
    batch = make_batch(1, n_image_tokens=n, image_token_id=model.config.image_token_id, image_size=32)
    with torch.no_grad():
        out = model(**batch.inputs())
    assert _projected(out).shape == (n, 64)


def test_gradients_reach_only_the_projector_when_tower_and_llm_frozen():
    model = _tiny_llava().train()
    install_projector(model, projector_for_model(model, "mbtf_stf", num_blocks=4))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)  # stage 1: MBTF + STF only (stf.md §5.1)
    batch = make_batch(2, n_image_tokens=16, image_token_id=model.config.image_token_id, image_size=32)
    labels = batch.input_ids.masked_fill(batch.input_ids == model.config.image_token_id, -100)
    model(**batch.inputs(), labels=labels).loss.backward()
    for name, p in model.named_parameters():
        if "multi_modal_projector" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,arg", [
    ({"kind": "mbtf_stf", "grid": 7}, "k"),  # 2x2 windows do not tile 7x7
    ({"kind": "tokenconcat", "grid": 6, "k": 4}, "k"),
    ({"kind": "stf", "grid": 8, "k": 2, "E": 3}, "E"),  # E must divide k^2
    ({"kind": "stf", "grid": 8, "k": 2, "E": 4}, "E"),  # E < k^2
    ({"kind": "avgpool", "grid": 8, "E": 2}, "E"),  # only STF splits windows
    ({"kind": "pixelshuffle", "grid": 8}, "kind"),
    ({"kind": "stf", "grid": 8, "variant": "github"}, "variant"),
    ({"kind": "stf", "grid": 8, "k": 0}, "k"),
    ({"kind": "stf", "grid": 8, "blocks": (2, 3)}, "blocks"),  # no MBTF to fuse two blocks
    ({"kind": "mbtf", "grid": 8, "blocks": (1, 99), "num_vision_layers": 4}, "blocks"),
    ({"kind": "stf", "grid": 8, "window": 2}, "knobs"),
])
def test_bad_config_raises_naming_the_argument(kwargs, arg):
    kind, grid = kwargs.pop("kind"), kwargs.pop("grid")
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        build_projector(kind, C1, C3, grid, **kwargs)


def test_bad_features_and_install_raise():
    proj = build_projector("mbtf_stf", C1, C3, 4, num_vision_layers=4, num_blocks=2)
    with pytest.raises(ValueError, match="^features:"):
        proj(torch.randn(1, 16, C1))  # one block where two are fused
    with pytest.raises(ValueError, match="^features:"):
        proj([torch.randn(1, 16, C1)] * 3)
    model = _tiny_llava()
    with pytest.raises(ValueError, match="^projector:"):
        install_projector(model, proj)  # widths and grid of another model
    with pytest.raises(TypeError, match="^model:"):
        install_projector(torch.nn.Linear(2, 2), proj)
    with pytest.raises(TypeError, match="^projector:"):
        install_projector(model, torch.nn.Linear(2, 2))

"""LLaVA-STF's published numbers (Tang & Shen 2025, "Learning Compact Vision Tokens for Efficient Large
Multimodal Models", arXiv:2506.07138), transcribed from shared/papers/stf.md §3.3-§3.4 (Table 1), §8 (Tables 2-5)
and §9 (Fig. 1). Nothing here is computed. Every model: CLIP ViT-L/14-336 + Vicuna-1.5-7B, LLaVA-1.5 recipe.
"""
from __future__ import annotations

from statistics import mean

MODEL = "LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-1.5-7B), LCS-558K + mix-665K"
BENCHMARKS = ("GQA", "SQA", "VQAT", "POPE", "MMB", "MMBCN", "VQAv2", "VisWiz")
Row = tuple[float | None, ...]  # scores in BENCHMARKS order; None = not reported


def avg(scores: Row) -> float:
    """The paper's "Avg." = unweighted mean of the reported columns (FastV: 7 of 8; stf.md §6)."""
    return mean(s for s in scores if s is not None)


# ------------------------------------------------------------------------------------------ Table 1
TABLE1_SOURCE = "LLaVA-STF Table 1 (a) MBTF, (b) STF, k=2, E=1 (stf.md §3.3-3.4)"
# (module, layer, output size, kernel, stride, act)
TABLE1: tuple[tuple[str, str, str, str, int, str], ...] = (
    ("MBTF", "conv1", "24x24x4096", "1x1", 1, "GeLU"),
    ("MBTF", "conv2", "24x24x1024", "1x1", 1, "GeLU"),
    ("STF", "conv1", "12x12x4096", "2x2", 2, "GeLU"),
    ("STF", "conv2", "12x12x16384", "1x1", 1, "GeLU"),
    ("STF", "conv3", "12x12x4096", "1x1", 1, "GeLU"),
)
# Derived in stf.md §3.6 [D] from Table 1 (the paper prints no parameter count).
TABLE1_PARAMS = {"MBTF": 37_753_856, "STF (paper)": 151_019_520, "STF (released code)": 134_238_208}

# ------------------------------------------------------------------------------------------ Table 2
TABLE2_SOURCE = "LLaVA-STF Table 2 (comparison with efficient LLaVA models, stf.md §8)"
# method -> (TFLOPs, scores); printed Avg. in TABLE2_AVG
TABLE2: dict[str, tuple[float, Row]] = {
    "LLaVA-1.5 (lora)": (7.6, (63.0, 68.4, 58.2, 86.4, 66.1, 58.9, 79.1, 47.8)),
    "LLaVA-1.5 (full tuning)": (7.6, (62.0, 66.8, 58.2, 85.9, 64.3, 58.3, 78.5, 50.0)),
    "LLaVolta": (5.0, (62.1, 70.5, 58.7, 86.3, 65.6, 59.9, 78.8, 48.3)),
    "PruMerge+": (1.9, (59.3, 68.3, 57.1, 84.0, 64.9, 53.2, 76.8, 49.8)),
    "FastV": (1.9, (60.3, None, 57.7, 83.2, 64.3, 58.0, 77.7, 50.8)),
    "YOPO": (1.9, (61.6, 69.0, 56.3, 86.8, 65.5, 59.6, 78.0, 49.9)),
    "LLaVA-Mini*": (1.9, (58.4, 67.2, 55.2, 83.2, 63.2, 55.3, 76.2, 48.2)),
    "LLaVA-1.5 (AvgPool)": (1.9, (62.1, 69.8, 55.5, 86.3, 65.0, 57.9, 77.0, 44.0)),
    "STC (ours) = MBTF+STF": (1.9, (61.9, 70.5, 57.4, 86.0, 66.2, 58.9, 78.1, 51.1)),
}
TABLE2_AVG = {"LLaVA-1.5 (lora)": 66.0, "LLaVA-1.5 (full tuning)": 65.5, "LLaVolta": 66.3, "PruMerge+": 64.2,
              "FastV": 64.6, "YOPO": 65.8, "LLaVA-Mini*": 63.4, "LLaVA-1.5 (AvgPool)": 64.7,
              "STC (ours) = MBTF+STF": 66.3}

# ------------------------------------------------------------------------------------------ Table 3
TABLE3_SOURCE = "LLaVA-STF Table 3 (effect of fusion modules, stf.md §8)"
TABLE3: dict[str, tuple[float, Row]] = {
    "LLaVA-1.5 (baseline)": (7.6, TABLE2["LLaVA-1.5 (full tuning)"][1]),
    "MBTF": (7.6, (63.2, 69.3, 58.9, 86.8, 65.3, 59.5, 79.4, 50.5)),
    "STF": (1.9, (61.8, 70.8, 56.7, 86.3, 64.9, 57.3, 77.8, 49.5)),
    "MBTF + STF (ours)": (1.9, TABLE2["STC (ours) = MBTF+STF"][1]),
}
TABLE3_AVG = {"LLaVA-1.5 (baseline)": 65.5, "MBTF": 66.6, "STF": 65.6, "MBTF + STF (ours)": 66.3}

# ------------------------------------------------------------------------------------------ Table 4
TABLE4_SOURCE = "LLaVA-STF Table 4 (kernel size k and #fused tokens E, stf.md §8)"
# (k, E) -> (TFLOPs, scores). (1, 1) is the plain LLaVA-1.5 baseline, (2, 1) the full method.
TABLE4: dict[tuple[int, int], tuple[float, Row]] = {
    (1, 1): (7.6, TABLE2["LLaVA-1.5 (full tuning)"][1]),
    (2, 1): (1.9, TABLE2["STC (ours) = MBTF+STF"][1]),
    (2, 2): (3.8, (62.7, 69.1, 56.2, 86.2, 65.6, 58.8, 77.9, 51.1)),
    (4, 4): (1.9, (61.2, 69.4, 52.0, 84.8, 64.2, 57.2, 77.1, 42.3)),
    (4, 8): (3.8, (60.4, 70.1, 53.2, 84.6, 64.9, 57.5, 77.2, 46.8)),
    (8, 16): (1.9, (58.6, 69.2, 49.8, 83.3, 63.4, 54.4, 75.8, 42.5)),
    (8, 32): (3.8, (59.2, 68.6, 48.9, 83.5, 62.7, 54.1, 75.6, 39.2)),
}
TABLE4_AVG = {(1, 1): 65.5, (2, 1): 66.3, (2, 2): 66.0, (4, 4): 63.5, (4, 8): 64.3, (8, 16): 62.1, (8, 32): 61.5}

# ------------------------------------------------------------------------------------------ Table 5
TABLE5_SOURCE = "LLaVA-STF Table 5 (fusion strategies; uncontrolled: STF row = MBTF+STF, stf.md §8, §11.11)"
TABLE5: dict[str, tuple[float, Row]] = {
    "AvgPool": (1.9, TABLE2["LLaVA-1.5 (AvgPool)"][1]),
    "TokenConcat": (1.9, (62.5, 69.7, 56.1, 85.9, 66.2, 59.2, 77.8, 46.3)),
    "STF (ours)": (1.9, TABLE2["STC (ours) = MBTF+STF"][1]),
}
TABLE5_AVG = {"AvgPool": 64.7, "TokenConcat": 65.4, "STF (ours)": 66.3}

# ------------------------------------------------------------------------------------------ Figure 1
FIG1_SOURCE = "LLaVA-STF Fig. 1 radar chart (values as Table 2; stf.md §9)"
FIG1_AXES = ("SQA", "GQA", "VQAv2", "MMBCN", "MMB", "POPE", "VQAT", "VisWiz")  # clockwise from the top
FIG1: dict[str, Row] = {  # in FIG1_AXES order
    "LLaVA1.5 (100% tokens)": (66.8, 62.0, 78.5, 58.3, 64.3, 85.9, 58.2, 50.0),
    "LLaVA1.5 (AvgPool, 25% tokens)": (69.8, 62.1, 77.0, 57.9, 65.0, 86.3, 55.5, 44.0),
    "Ours (25% tokens)": (70.5, 61.9, 78.1, 58.9, 66.2, 86.0, 57.4, 51.1),  # GQA 61.9 as the tables (§11.16)
}

# ------------------------------------------------------------------------------------------ Figure 3
FIG3_SOURCE = "LLaVA-STF Fig. 3 case study (qualitative; images and answers not in the text, stf.md §9)"
FIG3_CASES = (
    "blurred text: ours reads 'arrival', LLaVA-1.5 reads 'tri-vial'",
    "bar chart of expenditures: LLaVA-1.5 miscounts the bars, ours counts them and finds the lowest",
    "counting cows: ours is correct",
)

# ------------------------------------------------------------------------------------------ FLOPs
# What `reports.flops_tables` sets beside `common.flops`: the TFLOPs column of Tables 2-4 (above) by visual
# token count, and the relative cost stated in Sec. 4.3.
TFLOPS_BY_TOKENS = {576: TABLE3["MBTF"][0], 144: TABLE3["MBTF + STF (ours)"][0]}  # MBTF only vs MBTF+STF
TFLOPS_BY_KERNEL = {kE: flops for kE, (flops, _) in TABLE4.items()}  # (k, E) -> TFLOPs
SEC43_RELATIVE_FLOPS_PCT = 25.0  # MBTF+STF's FLOPs as a share of MBTF only's

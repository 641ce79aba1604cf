"""SparseVLM's published numbers, transcribed from shared/papers/sparsevlm.md §5-§6 (identical in the two
versions of the paper, [000] and arXiv 2410.04417 [001], except where noted). Each constant names its table
and rows; nothing here is computed, so a typo check is a plain comparison with the spec.
"""
from __future__ import annotations

# ------------------------------------------------------------------------------------------ Table 1
# "SparseLLaVA (LLaVA-1.5-7B) under different vision-token configurations"; 576 vanilla visual tokens.
TABLE1_SOURCE = "SparseVLM Table 1 (LLaVA-1.5-7B), sparsevlm.md §5"
TABLE1_BENCHMARKS = ("GQA", "MMB", "MME", "POPE", "SQA", "VQAv2", "TextVQA", "ConB")
# {(method, tokens): raw values in TABLE1_BENCHMARKS order}; MME is the total score (perception + cognition)
TABLE1_RAW: dict[tuple[str, int], tuple[float, ...]] = {
    ("Vanilla", 576): (61.9, 64.7, 1862, 85.9, 69.5, 78.5, 58.2, 19.8),
    ("ToMe", 192): (54.3, 60.5, 1563, 72.4, 65.2, 68.0, 52.1, 17.4),
    ("FastV", 192): (52.7, 61.2, 1612, 64.8, 67.3, 67.1, 52.5, 18.0),
    ("SparseVLM", 192): (57.6, 62.5, 1721, 83.6, 69.1, 75.6, 56.1, 18.8),
    ("ToMe", 128): (52.4, 53.3, 1343, 62.8, 59.6, 63.0, 49.1, 16.0),
    ("FastV", 128): (49.6, 56.1, 1490, 59.6, 60.2, 61.8, 50.6, 17.1),
    ("SparseVLM", 128): (56.0, 60.0, 1696, 80.5, 67.1, 73.8, 54.9, 18.5),
    ("ToMe", 64): (48.6, 43.7, 1138, 52.5, 50.0, 57.1, 45.3, 14.0),
    ("FastV", 64): (46.1, 48.0, 1256, 48.0, 51.1, 55.0, 47.8, 15.6),
    ("SparseVLM", 64): (52.7, 56.2, 1505, 75.1, 62.2, 68.2, 51.8, 17.7),
}
# The printed "% of vanilla" rows (second line of each method) and the printed "Avg." column.
TABLE1_PCT: dict[tuple[str, int], tuple[float, ...]] = {
    ("Vanilla", 576): (100.0,) * 8,
    ("ToMe", 192): (87.7, 93.5, 83.9, 84.3, 93.8, 86.6, 89.5, 87.9),
    ("FastV", 192): (85.1, 94.6, 86.6, 75.4, 96.8, 85.5, 90.2, 90.9),
    ("SparseVLM", 192): (93.1, 96.6, 92.4, 97.3, 99.4, 96.3, 96.4, 94.9),
    ("ToMe", 128): (84.7, 82.4, 72.1, 73.1, 85.8, 80.2, 84.4, 80.8),
    ("FastV", 128): (80.1, 86.7, 80.0, 69.4, 86.6, 78.7, 86.9, 86.4),
    ("SparseVLM", 128): (90.5, 92.7, 91.1, 93.7, 96.5, 94.0, 94.3, 93.4),
    ("ToMe", 64): (78.5, 67.5, 61.1, 61.1, 71.9, 72.7, 77.8, 70.7),
    ("FastV", 64): (74.5, 74.2, 67.5, 55.9, 73.5, 70.1, 82.1, 78.8),
    ("SparseVLM", 64): (85.1, 86.9, 80.8, 87.4, 89.4, 86.9, 89.0, 89.4),
}
TABLE1_AVG: dict[tuple[str, int], float] = {
    ("Vanilla", 576): 100.0,
    ("ToMe", 192): 88.4, ("FastV", 192): 88.1, ("SparseVLM", 192): 95.8,
    ("ToMe", 128): 80.4, ("FastV", 128): 81.9, ("SparseVLM", 128): 93.3,
    ("ToMe", 64): 70.2, ("FastV", 64): 72.1, ("SparseVLM", 64): 86.9,
}

# ------------------------------------------------------------------------------------------ Table 2
# "Video-LLaVA with SparseVLM on video QA"; 2048 video tokens pruned to 135 (93.4%); GPT-3.5-turbo judge.
TABLE2_SOURCE = "SparseVLM Table 2 (Video-LLaVA, 2048 -> 135 tokens), sparsevlm.md §5"
TABLE2_BENCHMARKS = ("TGIF", "MSVD", "MSRVTT", "ActivityNet")
TABLE2_TOKENS = (2048, 135)
TABLE2: dict[str, dict[str, tuple[float, float]]] = {  # method -> benchmark -> (accuracy %, score 0-5)
    "Video-LLaVA": {"TGIF": (47.1, 3.35), "MSVD": (69.8, 3.92), "MSRVTT": (56.7, 3.48), "ActivityNet": (43.1, 3.35)},
    "FastV": {"TGIF": (23.1, 2.47), "MSVD": (38.0, 2.71), "MSRVTT": (19.3, 2.02), "ActivityNet": (30.6, 2.82)},
    "SparseVLM": {"TGIF": (44.7, 3.29), "MSVD": (68.2, 3.90), "MSRVTT": (31.0, 2.68), "ActivityNet": (42.6, 3.32)},
}
TABLE2_AVG = {"Video-LLaVA": (100.0, 0.00), "FastV": (52.1, -1.02), "SparseVLM": (86.5, -0.17)}
# printed -0.17; the mean of its own per-benchmark deltas is -0.23 (sparsevlm.md §5 checks)

# ------------------------------------------------------------------------------------------ Table 3
# "Ablation on token reconstruction (TR)", LLaVA, at 64/96/128/192 tokens.
TABLE3_SOURCE = "SparseVLM Table 3 (LLaVA-1.5-7B, token reconstruction ablation), sparsevlm.md §5"
TABLE3_TOKENS = (64, 96, 128, 192)
TABLE3: dict[tuple[str, bool], tuple[float, ...]] = {  # (benchmark, with TR) -> values at TABLE3_TOKENS
    ("TextVQA", False): (49.6, 52.9, 54.2, 55.7),
    ("TextVQA", True): (51.6, 54.5, 55.0, 56.0),
    ("POPE", False): (57.3, 71.7, 77.3, 82.1),
    ("POPE", True): (75.0, 78.2, 80.5, 83.6),
}
TABLE3_AVG = {("TextVQA", False): 53.1, ("TextVQA", True): 54.3, ("POPE", False): 72.1, ("POPE", True): 79.3}

# ------------------------------------------------------------------------------------------ Table 4
# "Efficiency of LLaVA(-7B) with SparseVLM", single A100-80GB; delta = reduction ratio.
TABLE4_SOURCE = "SparseVLM Table 4 (LLaVA-7B, A100-80GB), sparsevlm.md §5"
TABLE4: dict[str, dict[str, float | None]] = {
    "Baseline": {"tokens": 576, "acc_pct": 100.0, "storage_mb": 302.4, "storage_red_pct": None,
                 "cuda_ms": 419.9, "cuda_red_pct": None, "tflops": 9.6, "flops_red_pct": None},
    "FastV": {"tokens": 192, "acc_pct": 88.0, "storage_mb": 100.8, "storage_red_pct": 66.7,
              "cuda_ms": 290.8, "cuda_red_pct": 30.7, "tflops": 2.3, "flops_red_pct": 76.0},
    "SparseVLM": {"tokens": 64, "acc_pct": 87.0, "storage_mb": 33.6, "storage_red_pct": 88.9,
                  "cuda_ms": 193.5, "cuda_red_pct": 53.9, "tflops": 1.5, "flops_red_pct": 84.4},
}
# [000] prints 302.4 MB / "100%" for the baseline storage, [001] prints "-" / "-".

# ------------------------------------------------------------------------------------------ figures
FIG4_SOURCE = "SparseVLM Fig. 4 (Mini-Gemini; POPE, TextVQA, GQA; text: margins over FastV)"
FIG4_MARGIN_OVER_FASTV = (10.2, 21.6)  # % (text of Sec. 4.1); no per-point values are printed
FIG5_SOURCE = "SparseVLM Fig. 5 (rater ablation, LLaVA, 142 tokens)"
FIG5_TOKENS = 142
FIG5_CLAIMS = {  # only the two differences are printed
    "TextVQA raters - text only": 0.79,  # points
    "POPE text-aware - all tokens": 4.3,
}
FIG7_SOURCE = "SparseVLM Fig. 7 / App. A.1 ([001] only)"
FIG7 = {"tokens_original": 1166, "tokens_downsampled": 576, "entropy_original": 7.44, "entropy_downsampled": 6.13,
        "text_highlighted_pct": 88.0, "roi_pct": 38.0}

# ------------------------------------------------------------------------------------------ FLOPs, tokens, memory
# What `reports.flops_tables` sets beside `common.flops`: Table 4's FLOPs, KV storage and reduction ratios
# (TABLE4 above), the abstract's FLOPs claim, and the per-layer token schedules of the later official code
# (v1.5, commit 535f8ba), the only layer-exact counts published for the Table 1 budgets.
ABSTRACT_FLOPS_REDUCTION_PCT = "61-67"  # "FLOPs reduction" printed as a range, at 78% compression
ABSTRACT_TOKENS = 128  # 78% compression of 576 visual tokens
V15_PRUNE_LAYERS = (2, 6, 15)  # 0-based layers whose output is pruned
V15_SCHEDULES: dict[int, tuple[int, int, int]] = {  # budget -> visual tokens kept after each V15_PRUNE_LAYERS
    192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17),
}
V15_COMMENT_SEGMENTS = (2, 4, 10, 16)  # layers per segment of the code comment "2*576 4*300 10*200 16*110"

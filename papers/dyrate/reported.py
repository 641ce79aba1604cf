"""DyRate's published numbers, transcribed from shared/papers/dyrate.md §9 (arXiv 2501.14204v1). Nothing here is
computed. The table captions were lost in the source; numbering follows order of appearance (spec §9).

Known oddities, transcribed as printed (spec §9, §11):
- Table II/III, 7B rows: the "NoCaps" and "Flickr30k" columns look swapped (lmms-eval's dense 7B gives
  NoCaps 105.5, Flickr30k 74.9); Table V uses 105.57 as "NoCaps".
- The FastV configurations of Tables II/III ("config a/b") lost their subscripts: 57.90% TFLOPs matches
  K=3, R=50% (all tokens counted); 55.40% is unidentified (we use K=2, R=50%).
- Table IV's "top_p" label conflicts with the text's "top_k = 6"; its model is not stated.
- Table V's two "Ours" labels were lost; the most plausible mapping is DP (28.80%) and FP (58.10%).
"""
from __future__ import annotations

# ------------------------------------------------------------------------------------------ Table I
TABLE1_SOURCE = "DyRate Table I (LLaVA-1.5-7B backbone; configurations of FastV/VTW/DyRate not stated), dyrate.md §9"
TABLE1_BENCHMARKS = ("GQA", "VisWiz", "SQA", "VQA", "POPE", "MMB", "MME")  # VQA = TextVQA; MME = perception score
TABLE1: dict[str, tuple[float, ...]] = {  # the rows we reproduce (same LLM, same resolution)
    "LLaVA-1.5": (62.0, 50.0, 66.8, 58.2, 85.9, 64.3, 1510.7),
    "FastV": (60.3, 54.4, 69.0, 45.4, 82.5, 63.9, 1510.2),
    "VTW": (55.1, 50.9, 69.1, 16.1, 85.9, 64.0, 1501.4),
    "DyRate": (61.9, 54.2, 69.2, 45.7, 86.8, 64.1, 1516.6),
}

# ------------------------------------------------------------------------------------------ Table II
TABLE2_SOURCE = "DyRate Table II (captioning CIDEr; 7B NoCaps/Flickr30k columns probably swapped), dyrate.md §9"
TABLE2_BENCHMARKS = ("NoCaps", "Flickr30k", "COCO2017")
TABLE2: dict[tuple[str, str], tuple[float, float, float]] = {  # (model, method) -> CIDEr as printed
    ("LLaVA-1.5-7B", "Original"): (74.89, 105.57, 110.43),
    ("LLaVA-1.5-7B", "FastV (a)"): (74.75, 105.00, 110.80),
    ("LLaVA-1.5-7B", "FastV (b)"): (74.86, 104.00, 110.40),
    ("LLaVA-1.5-7B", "VTW"): (44.54, 58.00, 67.20),
    ("LLaVA-1.5-7B", "DyRate"): (75.00, 108.41, 110.54),
    ("LLaVA-1.5-13B", "Original"): (109.31, 79.56, 115.57),
    ("LLaVA-1.5-13B", "FastV (a)"): (102.70, 73.40, 105.36),
    ("LLaVA-1.5-13B", "FastV (b)"): (103.10, 73.40, 108.85),
    ("LLaVA-1.5-13B", "VTW"): (95.21, 65.87, 101.67),
    ("LLaVA-1.5-13B", "DyRate"): (113.23, 79.38, 115.72),
}

# ------------------------------------------------------------------------------------------ Table III
TABLE3_SOURCE = "DyRate Table III (efficiency on 'NoCaps', RTX 4090; latency basis not stated), dyrate.md §9"
# method -> (TFLOPs %, latency ms, NoCaps CIDEr, auto R) for each model
TABLE3: dict[tuple[str, str], tuple[float, float, float, bool]] = {
    ("LLaVA-1.5-7B", "Original"): (100.0, 70.80, 74.89, False),
    ("LLaVA-1.5-7B", "FastV (a)"): (57.90, 42.36, 74.75, False),
    ("LLaVA-1.5-7B", "FastV (b)"): (55.40, 41.37, 74.86, False),
    ("LLaVA-1.5-7B", "VTW"): (55.20, 46.24, 44.54, False),
    ("LLaVA-1.5-7B", "DyRate"): (33.33, 40.13, 75.00, True),
    ("LLaVA-1.5-13B", "Original"): (100.0, 128.36, 109.31, False),
    ("LLaVA-1.5-13B", "FastV (a)"): (57.90, 73.35, 102.70, False),
    ("LLaVA-1.5-13B", "FastV (b)"): (55.40, 72.25, 103.10, False),
    ("LLaVA-1.5-13B", "VTW"): (55.20, 80.78, 95.21, False),
    ("LLaVA-1.5-13B", "DyRate"): (33.33, 65.16, 113.23, True),
}

# ------------------------------------------------------------------------------------------ Table IV
TABLE4_SOURCE = "DyRate Table IV (decoding strategies, NoCaps CIDEr; model and pruning state not stated), dyrate.md §9"
TABLE4: dict[str, float] = {"Greedy": 106.74, "Beam-2": 109.06, "Beam-5": 108.28, "top_p (text: top_k=6)": 109.57}

# ------------------------------------------------------------------------------------------ Table V
TABLE5_SOURCE = "DyRate Table V (rate-strategy ablation, NoCaps, LLaVA-1.5-7B; 'Ours' labels lost), dyrate.md §9"
TABLE5: dict[str, tuple[float, float]] = {  # strategy -> (NoCaps CIDEr, FLOPs %)
    "LLaVA": (105.57, 100.00),
    "FastV": (105.00, 57.90),
    "Ours (DP, label lost)": (107.00, 28.80),
    "Ours (FP, label lost)": (105.00, 58.10),
}

# ------------------------------------------------------------------------------------------ FLOPs
# What `reports.flops_tables` sets beside `common.flops`: the relative TFLOPs (% of the dense model) of
# Table III (TABLE3 above; printed the same for 7B and 13B) and Table V (TABLE5 above).
TFLOPS_PCT: dict[tuple[str, str], float] = {  # (model, method) -> TFLOPs % of the dense model
    key: flops for key, (flops, *_) in TABLE3.items() if key[1] != "Original"
}
TABLE5_FLOPS_PCT: dict[str, float] = {strategy: flops for strategy, (_, flops) in TABLE5.items()}

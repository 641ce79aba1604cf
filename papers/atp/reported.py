"""ATP-LLaVA's published numbers (Ye et al., CVPR 2025, arXiv:2412.00447), transcribed from
shared/papers/atp.md §7 (Tables 1-6). Nothing here is computed; each constant names its table. Model: LLaVA-1.5-7B
(Vicuna-7B), 576 visual tokens, 32 decoder layers. Token counts are averages over all decoder layers ("*":
adaptive, measured).
"""
from __future__ import annotations

# ------------------------------------------------------------------------------------------ Table 1
TABLE1_SOURCE = "ATP-LLaVA Table 1 (LLaVA-1.5-7B), atp.md §7.1"
TABLE1_BENCHMARKS = ("GQA", "MMB", "MME", "POPE", "SEED", "SQA-I", "VQAv2")
# {(method, tokens): scores in TABLE1_BENCHMARKS order; None = not reported}; MME = perception score
TABLE1: dict[tuple[str, int], tuple[float | None, ...]] = {
    ("LLaVA-1.5", 576): (62.0, 64.3, 1510.7, 85.8, 58.6, 71.6, 78.5),
    ("PruMerge+", 144): (None, 64.9, 1462.4, 84.0, None, 68.3, 76.8),
    ("FastV", 192): (52.7, 61.2, 1312.4, 64.8, 50.8, 65.4, 67.1),
    ("FastV", 128): (49.6, 56.1, 1187.9, 59.6, 48.1, 59.7, 61.8),
    ("SparseVLM", 192): (57.6, 62.5, 1382.8, 83.6, 53.0, 67.2, 75.6),
    ("SparseVLM", 128): (56.0, 60.0, 1296.7, 80.5, 50.2, 65.5, 73.8),
    ("ATP-LLaVA", 144): (59.5, 66.0, 1473.9, 84.2, 57.3, 69.1, 76.4),
    ("ATP-LLaVA", 88): (56.8, 64.7, 1401.5, 82.6, 55.7, 67.2, 73.3),
}
# printed average retention (%); three printed cells disagree with their scores (atp.md §7.1, A17)
TABLE1_AVG_RETENTION: dict[tuple[str, int], float] = {
    ("LLaVA-1.5", 576): 100.0, ("PruMerge+", 144): 97.8, ("FastV", 192): 86.4, ("FastV", 128): 79.9,
    ("SparseVLM", 192): 94.2, ("SparseVLM", 128): 91.0, ("ATP-LLaVA", 144): 98.1, ("ATP-LLaVA", 88): 94.6,
}

# ------------------------------------------------------------------------------------------ Table 2
TABLE2_SOURCE = "ATP-LLaVA Table 2 (pre-defined ratio vs adaptive, same training), atp.md §7.2"
FOUR_BENCHMARKS = ("MMB", "GQA", "VQAv2", "SEED")
# rows: (strategy, avg tokens, pruning ratio, layer indexes, retained tokens, scores in FOUR_BENCHMARKS order)
TABLE2 = (
    ("Upper Bound", 576, None, (), (), (64.3, 62.0, 78.5, 58.6)),
    ("Pre-defined Ratio", 144, "3/4", (1,), (130,), (59.6, 56.2, 71.6, 53.1)),
    ("Pre-defined Ratio", 144, "2/3", (4, 14, 24), (162, 54, 18), (62.7, 58.0, 74.6, 55.7)),
    ("Pre-defined Ratio", 144, "1/2", (4, 14, 24), (136, 68, 34), (63.2, 58.2, 73.9, 55.3)),
    ("ATP-LLaVA", 144, None, (4, 14, 24), (126, 88, 20), (66.0, 59.5, 76.4, 57.3)),
    ("ATP-LLaVA", 88, None, (1, 13, 25), (98, 79, 16), (64.7, 56.8, 73.3, 55.7)),
)
# exact all-layer averages of the rows (atp.md §6.1), the golden numbers of common.flops
TABLE2_EXACT_AVG = {(130,): 143.9375, (162, 54, 18): 144.0, (136, 68, 34): 144.25, (126, 88, 20): 143.875,
                    (98, 79, 16): 87.875}

# ------------------------------------------------------------------------------------------ Table 3
TABLE3_SOURCE = "ATP-LLaVA Table 3 (frozen vs trainable LM, 144* tokens), atp.md §7.3"
TABLE3 = {"Frozen": (63.1, 57.9, 75.2, 54.9), "Trainable": (66.0, 59.5, 76.4, 57.3)}  # FOUR_BENCHMARKS order

# ------------------------------------------------------------------------------------------ Table 4
TABLE4_SOURCE = "ATP-LLaVA Table 4 (SAP ablation, 144 tokens; check marks lost, atp.md §7.4)"
# row label -> scores; "row 2"/"row 3" cannot be assigned to flags uniquely (Readings A/B in the spec)
TABLE4 = {
    "full (RP+SP+PP)": (66.0, 59.5, 76.4, 57.3),
    "row 2 (w/o SP [A] or w/o PP [B])": (65.3, 58.3, 75.1, 56.5),
    "row 3 (w/o PP [A] or RP only [B])": (64.3, 57.1, 74.2, 55.1),
    "w/o RP": (65.2, 58.6, 74.9, 56.3),
}

# ------------------------------------------------------------------------------------------ Table 5
TABLE5_SOURCE = "ATP-LLaVA Table 5 (redundant score ablation, 144 tokens), atp.md §7.5"
TABLE5 = {"both": (66.0, 59.5, 76.4, 57.3), "self only": (66.1, 58.7, 75.8, 56.9),
          "cross only": (65.4, 59.2, 76.1, 56.3)}

# ------------------------------------------------------------------------------------------ Table 6
TABLE6_SOURCE = "ATP-LLaVA Table 6 (efficiency), atp.md §7.6"
# method, avg tokens -> (accuracy retention %, storage MB, CUDA ms, FLOPs T)
TABLE6 = {
    ("Upper Bound", 576): (100.0, 302.4, 432.7, 9.6),
    ("FastV", 144): (81.7, 75.6, 259.1, 2.0),
    ("ATP-LLaVA", 144): (98.1, 75.6, 266.4, 2.1),
    ("ATP-LLaVA", 88): (94.6, 46.2, 226.8, 1.5),
}
TABLE6_DELTA = {  # printed reduction ratios (%): storage, CUDA time, FLOPs
    ("FastV", 144): (75.0, 40.1, 79.2), ("ATP-LLaVA", 144): (75.0, 38.4, 78.1), ("ATP-LLaVA", 88): (84.7, 47.6, 84.4),
}


def mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs)

# ------------------------------------------------------------------------------------------ FLOPs, tokens, memory
# What `reports.flops_tables` sets beside `common.flops`: Table 2's pruning schedules with their printed
# average token counts, and Table 6's KV storage, FLOPs and reduction ratios (TABLE6, TABLE6_DELTA above).
SCHEDULES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {  # row -> (printed avg, layers, kept)
    (f"pre-defined {ratio}" if ratio else f"{strategy} {tokens}*"): (tokens, layers, kept)
    for strategy, tokens, ratio, layers, kept, _ in TABLE2 if layers
}

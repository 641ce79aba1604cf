"""common.clustering against brute-force references (plain Python / numpy loops) and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from common.clustering import (
    bipartite_soft_matching,
    dpc_knn,
    merge_clusters,
    merge_source,
    merge_wavg,
    source_assignment,
)

SEEDS = [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------------
# Brute-force references
# ----------------------------------------------------------------------------------------------------


def ref_bipartite(metric: np.ndarray, x: np.ndarray, r: int, protected: np.ndarray | None = None):
    """One sample, loops only. Returns (merged x, sizes, groups) with groups[t] = original token ids of t."""
    n = metric.shape[0]
    unit = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    a_ids, b_ids = list(range(0, n, 2)), list(range(1, n, 2))
    prot = np.zeros(n, bool) if protected is None else protected
    best = []  # (score, a position, b position)
    for ia, ta in enumerate(a_ids):
        best_s, best_j = -math.inf, 0
        for jb, tb in enumerate(b_ids):
            s = -math.inf if (prot[ta] or prot[tb]) else float(unit[ta] @ unit[tb])
            if s > best_s:  # strict: the first maximum wins
                best_s, best_j = s, jb
        best.append((best_s, ia, best_j))
    ranked = sorted(best, key=lambda e: (-e[0], e[1]))  # highest similarity first, lower A index on ties
    merged_a = {ia: jb for _, ia, jb in ranked[:r]}
    groups = [[a_ids[ia]] for ia in range(len(a_ids)) if ia not in merged_a]
    b_groups = [[tb] for tb in b_ids]
    for ia, jb in merged_a.items():
        b_groups[jb].append(a_ids[ia])
    groups += b_groups
    out = np.stack([x[g].mean(0) for g in groups])
    sizes = np.array([len(g) for g in groups], dtype=float)
    return out, sizes, [sorted(g) for g in groups]


def ref_dpc(x: np.ndarray, n_clusters: int, k: int, assign="euclidean", include_self=True, scale_by_dim=True,
            densest_delta="global"):
    """One sample, loops only, with the documented tie rules."""
    n, d = x.shape
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            dist[i, j] = math.sqrt(sum((x[i, c] - x[j, c]) ** 2 for c in range(d)))
    if scale_by_dim:
        dist = dist / math.sqrt(d)
    rho = np.zeros(n)
    for i in range(n):
        cand = sorted(dist[i, j] for j in range(n) if include_self or j != i)
        rho[i] = math.exp(-sum(v * v for v in cand[:k]) / k)
    delta = np.zeros(n)
    for i in range(n):
        higher = [dist[i, j] for j in range(n) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        if higher:
            delta[i] = min(higher)
        else:
            delta[i] = dist.max() if densest_delta == "global" else dist[i].max()
    score = rho * delta
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:n_clusters]
    assignment = []
    for i in range(n):
        if i in centres:
            assignment.append(centres.index(i))
            continue
        if assign == "euclidean":
            vals = [dist[i, c] for c in centres]
            assignment.append(int(np.argmin(vals)))
        else:
            vals = [float(x[i] @ x[c] / (np.linalg.norm(x[i]) * np.linalg.norm(x[c]))) for c in centres]
            assignment.append(int(np.argmax(vals)))
    return dict(centers=centres, assignment=assignment, rho=rho, delta=delta, score=score)


# ----------------------------------------------------------------------------------------------------
# Bipartite soft matching
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,r", [(8, 3), (9, 4), (7, 1), (16, 8), (5, 2)])
def test_bipartite_matches_bruteforce(seed, n, r):
    g = torch.Generator().manual_seed(seed)
    metric = torch.randn(3, n, 6, generator=g, dtype=torch.float64)
    x = torch.randn(3, n, 4, generator=g, dtype=torch.float64)
    merge, _ = bipartite_soft_matching(metric, r)
    xm, size = merge_wavg(merge, x)
    src = merge_source(merge, x)
    assert xm.shape == (3, n - r, 4) and size.shape == (3, n - r, 1)
    for b in range(3):
        ref_x, ref_size, ref_groups = ref_bipartite(metric[b].numpy(), x[b].numpy(), r)
        np.testing.assert_allclose(xm[b].numpy(), ref_x, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(size[b, :, 0].numpy(), ref_size)
        groups = [sorted(np.nonzero(row)[0].tolist()) for row in src[b].numpy()]
        assert groups == ref_groups


@pytest.mark.parametrize("seed", SEEDS)
def test_bipartite_invariants(seed):
    g = torch.Generator().manual_seed(seed)
    n, r = 13, 5
    metric = torch.randn(2, n, 8, generator=g)
    merge, unmerge = bipartite_soft_matching(metric, r)
    # weighted mean of a constant is the constant; sizes sum to N
    const = torch.full((2, n, 3), 2.5)
    xm, size = merge_wavg(merge, const)
    assert xm.shape[1] == n - r
    torch.testing.assert_close(xm, torch.full_like(xm, 2.5))
    torch.testing.assert_close(size.sum(1), torch.full((2, 1), float(n)))
    # chaining a second merge with the carried sizes keeps the totals and the exact global mean
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    xm, size = merge_wavg(merge, x)
    merge2, _ = bipartite_soft_matching(xm.float(), 2)
    xm2, size2 = merge_wavg(merge2, xm, size)
    assert xm2.shape[1] == n - r - 2
    torch.testing.assert_close(size2.sum(1), torch.full((2, 1), float(n), dtype=torch.float64))
    torch.testing.assert_close((xm2 * size2).sum(1) / n, x.mean(1))
    # source rows partition the originals; unmerge paints each original with its merged token
    src = merge_source(merge, x)
    torch.testing.assert_close(src.sum(1), torch.ones(2, n, dtype=x.dtype))
    assign = source_assignment(src)
    torch.testing.assert_close(unmerge(xm), xm.gather(1, assign[..., None].expand(-1, -1, 3)))
    ids = torch.arange(n - r, dtype=torch.float64)[None, :, None].expand(2, -1, 1)
    torch.testing.assert_close(unmerge(ids)[..., 0].long(), assign)


def test_bipartite_r_zero_is_noop_and_grad_flows():
    metric = torch.randn(2, 6, 4)
    merge, unmerge = bipartite_soft_matching(metric, 0)
    x = torch.randn(2, 6, 4)
    assert merge(x) is x and unmerge(x) is x
    merge, unmerge = bipartite_soft_matching(metric, -3)
    assert merge(x) is x
    x = torch.randn(2, 6, 4, requires_grad=True)
    merge, _ = bipartite_soft_matching(metric, 2)
    xm, size = merge_wavg(merge, x)
    (xm * size).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))  # weighted mean * its size = a partition of x


def test_bipartite_tensor_r_and_protected():
    g = torch.Generator().manual_seed(5)
    metric = torch.randn(2, 10, 4, generator=g)
    x = torch.randn(2, 10, 4, generator=g)
    m1, _ = bipartite_soft_matching(metric, 3)
    m2, _ = bipartite_soft_matching(metric, torch.tensor([3, 3]))
    torch.testing.assert_close(m1(x), m2(x))
    with pytest.raises(ValueError, match="per-sample r"):
        bipartite_soft_matching(metric, torch.tensor([3, 2]))

    protected = torch.zeros(2, 10, dtype=torch.bool)
    protected[0, 0] = True  # CLS-like, in A
    protected[1, 3] = True  # in B: may not receive merges
    protected[1, 4] = True
    merge, _ = bipartite_soft_matching(metric, 4, protected=protected)
    src = merge_source(merge, x)
    for b in range(2):
        for t in torch.nonzero(protected[b])[:, 0].tolist():
            row = src[b, src[b, :, t] == 1]
            assert row.shape[0] == 1 and row.sum() == 1, "a protected token was merged"
        ref_x, _, _ = ref_bipartite(metric[b].double().numpy(), x[b].double().numpy(), 4, protected[b].numpy())
        np.testing.assert_allclose(merge_wavg(merge, x)[0][b].numpy(), ref_x, rtol=1e-5, atol=1e-6)

    too_many = torch.zeros(1, 10, dtype=torch.bool)
    too_many[0, 0:10:2] = True
    too_many[0, 2] = False
    with pytest.raises(ValueError, match="r=2"):
        bipartite_soft_matching(metric[:1], 2, protected=too_many)
    no_b = torch.zeros(1, 10, dtype=torch.bool)
    no_b[0, 1::2] = True
    with pytest.raises(ValueError, match="set B"):
        bipartite_soft_matching(metric[:1], 1, protected=no_b)


def test_bipartite_bad_input():
    metric = torch.randn(2, 9, 4)
    with pytest.raises(ValueError, match="r=5"):
        bipartite_soft_matching(metric, 5)  # > 9 // 2
    bipartite_soft_matching(metric, 4)
    with pytest.raises(ValueError, match="metric"):
        bipartite_soft_matching(metric[0], 1)
    with pytest.raises(ValueError, match="r must be an int"):
        bipartite_soft_matching(metric, 1.5)
    merge, unmerge = bipartite_soft_matching(metric, 2)
    with pytest.raises(ValueError, match="x must be"):
        merge(torch.randn(2, 8, 4))
    with pytest.raises(ValueError, match="x must be"):
        unmerge(torch.randn(2, 9, 4))


def test_bipartite_tie_break_is_documented_order():
    # All-identical tokens: every similarity is 1. Edges go to the first B token; lowest A indices merge first.
    metric = torch.ones(1, 6, 3)
    merge, _ = bipartite_soft_matching(metric, 2)
    src = merge_source(merge, metric)
    groups = [torch.nonzero(row)[:, 0].tolist() for row in src[0]]
    assert groups == [[4], [0, 1, 2], [3], [5]]


# ----------------------------------------------------------------------------------------------------
# DPC-kNN
# ----------------------------------------------------------------------------------------------------

DPC_VARIANTS = [
    dict(),  # official defaults
    dict(assign="cosine", include_self=False, scale_by_dim=False, densest_delta="own"),  # paper-literal
    dict(assign="cosine"),
    dict(include_self=False, densest_delta="own"),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", DPC_VARIANTS)
def test_dpc_matches_bruteforce(seed, variant):
    g = torch.Generator().manual_seed(seed)
    n, d, c, k = 14, 5, 3, 4
    # three loose blobs so centres are meaningful
    x = torch.randn(2, n, d, generator=g, dtype=torch.float64) + 4 * torch.randint(0, 3, (2, n, 1), generator=g)
    res = dpc_knn(x, c, k, **variant)
    for b in range(2):
        ref = ref_dpc(x[b].numpy(), c, k, **variant)
        np.testing.assert_allclose(res.density[b].numpy(), ref["rho"], rtol=1e-5)
        np.testing.assert_allclose(res.delta[b].numpy(), ref["delta"], rtol=1e-5)
        np.testing.assert_allclose(res.score[b].numpy(), ref["score"], rtol=1e-5)
        assert res.centers_idx[b].tolist() == ref["centers"]
        assert res.assignment[b].tolist() == ref["assignment"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("include_self", [True, False])
def test_dpc_density_matches_sklearn_knn(seed, include_self):
    rng = np.random.default_rng(seed)
    n, d, k = 20, 7, 5
    x = rng.normal(size=(n, d))
    nn = NearestNeighbors(n_neighbors=k + (0 if include_self else 1)).fit(x)
    dists, _ = nn.kneighbors(x)  # querying the fitted set: column 0 is the point itself at distance 0
    dists = dists if include_self else dists[:, 1:]
    rho_sk = np.exp(-np.mean((dists / math.sqrt(d)) ** 2, axis=1))
    res = dpc_knn(torch.from_numpy(x)[None], 2, k, include_self=include_self)
    np.testing.assert_allclose(res.density[0].numpy(), rho_sk, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_dpc_invariants(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 17, 6, generator=g)
    c = 4
    res = dpc_knn(x, c, 4)
    assert res.centers_idx.shape == (3, c) and res.assignment.shape == (3, 17)
    assert int(res.assignment.min()) >= 0 and int(res.assignment.max()) < c
    # each centre is assigned to itself, centres are distinct
    torch.testing.assert_close(res.assignment.gather(1, res.centers_idx), torch.arange(c).expand(3, -1))
    assert all(len(set(row.tolist())) == c for row in res.centers_idx)
    # sizes sum to N and agree with the assignment
    torch.testing.assert_close(res.sizes.sum(1), torch.full((3,), 17))
    for cl in range(c):
        torch.testing.assert_close(res.sizes[:, cl], (res.assignment == cl).sum(1))
    # exactly one token per sample takes the "densest" delta, and it is the global maximum distance
    dist = torch.cdist(x, x) / math.sqrt(6)
    densest = res.density.argmax(1)
    torch.testing.assert_close(res.delta.gather(1, densest[:, None])[:, 0], dist.amax((1, 2)), rtol=1e-5, atol=1e-6)


def test_dpc_ties_are_deterministic():
    # Two duplicate pairs: mutual nearest neighbours with exactly equal density (k = 2, self included).
    x = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [5.0, 0.0]]])
    res = dpc_knn(x, 2, 2)
    assert torch.equal(res.density[0], torch.ones(4))
    # all densities tie: token 0 is "densest" (delta = global max 5/sqrt(2)), token 1 is at distance 0 from 0,
    # token 2 is 5/sqrt(2) from 0 and 1, token 3 is 0 from 2 -> centres 0 then 2 (lower index wins the tie)
    assert res.centers_idx[0].tolist() == [0, 2]
    assert res.assignment[0].tolist() == [0, 0, 1, 1]
    # duplicate centres: both identical tokens become centres and each keeps itself
    same = torch.zeros(1, 3, 2)
    res = dpc_knn(same, 3, 1)
    assert res.centers_idx[0].tolist() == [0, 1, 2]
    assert res.assignment[0].tolist() == [0, 1, 2]
    # repeated calls agree bit for bit
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 12, 3, generator=g)
    r1, r2 = dpc_knn(y, 3, 3), dpc_knn(y, 3, 3)
    assert torch.equal(r1.centers_idx, r2.centers_idx) and torch.equal(r1.assignment, r2.assignment)


@pytest.mark.parametrize("seed", SEEDS)
def test_dpc_mask_equals_running_on_the_subset(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 12, generator=g) > 0.3
    mask[:, :6] = True  # at least 6 valid tokens per sample
    res = dpc_knn(x, 2, 3, mask=mask)
    for b in range(2):
        keep = torch.nonzero(mask[b])[:, 0]
        sub = dpc_knn(x[b : b + 1, keep], 2, 3)
        assert keep[sub.centers_idx[0]].tolist() == res.centers_idx[b].tolist()
        assert res.assignment[b, keep].tolist() == sub.assignment[0].tolist()
        assert (res.assignment[b, ~mask[b]] == -1).all()
        torch.testing.assert_close(res.density[b, keep], sub.density[0])
        torch.testing.assert_close(res.delta[b, keep], sub.delta[0])
        assert int(res.sizes[b].sum()) == int(mask[b].sum())


def test_dpc_single_token_official_case():
    # SparseVLM at a cap recycles 1 token into 1 cluster with k = 1: must work, not raise.
    res = dpc_knn(torch.randn(2, 1, 8), 1, 1)
    assert res.centers_idx.tolist() == [[0], [0]] and res.assignment.tolist() == [[0], [0]]


def test_dpc_bad_input():
    x = torch.randn(2, 6, 3)
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(x, 7, 2)
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(x, 0, 2)
    with pytest.raises(ValueError, match="k="):
        dpc_knn(x, 2, 7)  # k > N (self included)
    with pytest.raises(ValueError, match="k="):
        dpc_knn(x, 2, 6, include_self=False)  # k >= N (self excluded)
    with pytest.raises(ValueError, match="k="):
        dpc_knn(x, 2, 0)
    with pytest.raises(ValueError, match="assign"):
        dpc_knn(x, 2, 2, assign="manhattan")
    with pytest.raises(ValueError, match="mask"):
        dpc_knn(x, 2, 2, mask=torch.ones(2, 5, dtype=torch.bool))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :4] = False  # sample 1 has only 2 valid tokens
    with pytest.raises(ValueError, match="n_clusters"):
        dpc_knn(x, 3, 1, mask=mask)
    with pytest.raises(ValueError, match="x must be"):
        dpc_knn(x[0], 2, 2)


# ----------------------------------------------------------------------------------------------------
# merge_clusters
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_merge_clusters_matches_loops(seed, reduce, weighted):
    g = torch.Generator().manual_seed(seed)
    b, n, d, c = 2, 11, 3, 4
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    assignment = torch.randint(-1, c, (b, n), generator=g)
    assignment[:, :c] = torch.arange(c)  # every cluster non-empty
    w = torch.rand(b, n, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    out = merge_clusters(x, assignment, c, reduce, weights=w)
    for s in range(b):
        for cl in range(c):
            num, den = np.zeros(d), 0.0
            for i in range(n):
                if int(assignment[s, i]) == cl:
                    wi = float(w[s, i]) if weighted else 1.0
                    num += wi * x[s, i].numpy()
                    den += wi
            expect = num / den if reduce == "mean" else num
            np.testing.assert_allclose(out[s, cl].numpy(), expect, rtol=1e-12, atol=1e-12)


def test_merge_clusters_end_to_end_and_edge_cases():
    x = torch.randn(2, 10, 4)
    res = dpc_knn(x, 3, 3)
    mean = merge_clusters(torch.full_like(x, -1.25), res.assignment, 3, "mean")
    torch.testing.assert_close(mean, torch.full((2, 3, 4), -1.25))
    total = merge_clusters(torch.ones_like(x), res.assignment, 3, "sum")
    torch.testing.assert_close(total[..., 0], res.sizes.float())
    # an empty cluster comes out as zeros under both reductions
    assignment = torch.zeros(1, 3, dtype=torch.long)
    for reduce in ("sum", "mean"):
        out = merge_clusters(torch.ones(1, 3, 2), assignment, 2, reduce)
        assert torch.equal(out[0, 1], torch.zeros(2))
    with pytest.raises(ValueError, match="reduce"):
        merge_clusters(x, res.assignment, 3, "max")
    with pytest.raises(ValueError, match="assignment"):
        merge_clusters(x, res.assignment, 2, "sum")
    with pytest.raises(ValueError, match="weights"):
        merge_clusters(x, res.assignment, 3, "sum", weights=torch.ones(2, 9))


def test_low_precision_inputs():
    """bf16 hidden states (as in a real decoder) cluster like their fp32 copy and merge in bf16."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 12, 8, generator=g) + 3 * torch.randint(0, 2, (2, 12, 1), generator=g)).bfloat16()
    res16, res32 = dpc_knn(x, 2, 2), dpc_knn(x.float(), 2, 2)
    assert torch.equal(res16.assignment, res32.assignment)
    assert merge_clusters(x, res16.assignment, 2, "mean").dtype == torch.bfloat16
    merge, _ = bipartite_soft_matching(x, 3)
    xm, size = merge_wavg(merge, x)
    assert xm.dtype == torch.bfloat16 and xm.shape == (2, 9, 8)

"""Tests for vitkd.losses.functional.

Every loss is checked against an independent reference written out here from the paper /
reference-repo formula with numpy (float64, explicit loops where that is clearer), plus the
structural properties: KL-type losses vanish at student == teacher, CE-type losses equal the
teacher entropy there with zero student gradient, gradients reach the student input only.
"""
import math

import numpy as np
import pytest

from vitkd.connectors import resize_tokens
import torch

from vitkd.losses import functional as L

DT = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def npy(x):
    return x.detach().cpu().numpy().astype(np.float64)


def np_softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_entropy_rows(p):
    return -(p * np.log(p)).sum(-1)


def close(a, b, rtol=1e-9, atol=1e-11):
    a = float(a.detach()) if torch.is_tensor(a) else float(a)
    b = float(b.detach()) if torch.is_tensor(b) else float(b)
    assert math.isclose(a, b, rel_tol=rtol, abs_tol=atol), (a, b)


def rnd(*shape, scale=1.0, requires_grad=False):
    return (torch.randn(*shape, dtype=DT) * scale).requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------
def ref_kd(s, t, T):
    s, t = npy(s), npy(t)
    tot = 0.0
    for i in range(s.shape[0]):
        p = np_softmax(t[i] / T)
        q = np_softmax(s[i] / T)
        tot += sum(p[c] * math.log(p[c] / q[c]) for c in range(s.shape[1]))
    return tot / s.shape[0] * T * T


def ref_dkd(s, t, y, alpha, beta, T):
    s, t, y = npy(s), npy(t), y.numpy()
    B, C = s.shape
    tckd = nckd = 0.0
    for i in range(B):
        ps, pt = np_softmax(s[i] / T), np_softmax(t[i] / T)
        g = y[i]
        bs = np.array([ps[g], 1 - ps[g]])
        bt = np.array([pt[g], 1 - pt[g]])
        tckd += (bt * np.log(bt / bs)).sum()
        others = [c for c in range(C) if c != g]
        qs = ps[others] / ps[others].sum()
        qt = pt[others] / pt[others].sum()
        nckd += (qt * np.log(qt / qs)).sum()
    return (alpha * tckd / B + beta * nckd / B) * T * T


def ref_dist(s, t, beta, gamma, T):
    ps, pt = np_softmax(npy(s) / T), np_softmax(npy(t) / T)
    B, C = ps.shape
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(B)])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(C)])
    return T * T * (beta * inter + gamma * intra)


def ref_soft_ce_rows(s_logits, t_logits):
    """rows of [..., C] logits -> mean over rows of -sum p_t log p_s."""
    s2 = s_logits.reshape(-1, s_logits.shape[-1])
    t2 = t_logits.reshape(-1, t_logits.shape[-1])
    vals = []
    for a, b in zip(s2, t2):
        p = np_softmax(b)
        logq = a - a.max() - math.log(np.exp(a - a.max()).sum())
        vals.append(-(p * logq).sum())
    return float(np.mean(vals))


def np_l2n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_manifold_intra(fs, ft):
    fs, ft = np_l2n(npy(fs)), np_l2n(npy(ft))
    B, N, _ = fs.shape
    acc = 0.0
    for b in range(B):
        for i in range(N):
            for j in range(N):
                acc += (fs[b, i] @ fs[b, j] - ft[b, i] @ ft[b, j]) ** 2
    return acc / (B * N * N)


def ref_manifold_inter(fs, ft):
    fs, ft = np_l2n(npy(fs)), np_l2n(npy(ft))
    B, N, _ = fs.shape
    acc = 0.0
    for n in range(N):
        for a in range(B):
            for b in range(B):
                acc += (fs[a, n] @ fs[b, n] - ft[a, n] @ ft[b, n]) ** 2
    return acc / (N * B * B)


def avgpool2_tokens(ft, th, tw):
    """[B, th*tw, C] tokens -> 2x2 average-pooled tokens (== bilinear 2x downsampling,
    align_corners=False)."""
    x = npy(ft)
    B, _, C = x.shape
    g = x.reshape(B, th, tw, C)
    g = 0.25 * (g[:, 0::2, 0::2] + g[:, 1::2, 0::2] + g[:, 0::2, 1::2] + g[:, 1::2, 1::2])
    return torch.from_numpy(g.reshape(B, -1, C).copy())


# ---------------------------------------------------------------------------------------------
# kd
# ---------------------------------------------------------------------------------------------
def test_kd_matches_reference():
    s, t = rnd(5, 7, scale=2), rnd(5, 7, scale=2)
    for T in (1.0, 4.0):
        close(L.kd(s, t, T=T), ref_kd(s, t, T))
    close(L.kd(s, t), ref_kd(s, t, 4.0))  # default T=4


def test_kd_hand_worked_value():
    # Teacher logits [ln 3, 0] at T=1 give p_t = [3/4, 1/4]; student logits [0, 0] give [1/2, 1/2].
    # KL = 3/4 ln(3/4 / 1/2) + 1/4 ln(1/4 / 1/2) = 0.75 ln 1.5 - 0.25 ln 2
    #    = 0.75 * 0.4054651 - 0.25 * 0.6931472 = 0.3040988 - 0.1732868 = 0.1308120.
    s = torch.zeros(2, 2, dtype=DT)
    t = torch.tensor([[math.log(3.0), 0.0]] * 2, dtype=DT)
    close(L.kd(s, t, T=1.0), 0.1308120, rtol=1e-6)
    # At T=2 with teacher logits [2 ln 3, 0] the softmaxes are the same, so the value is 4x.
    close(L.kd(s, 2 * t, T=2.0), 4 * 0.1308120, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# deit
# ---------------------------------------------------------------------------------------------
def test_deit_soft_reference_and_reductions():
    s, t = rnd(4, 10, scale=2), rnd(4, 10, scale=2)
    for T in (1.0, 3.0):
        bm = L.deit_soft(s, t, T=T)
        close(bm, ref_kd(s, t, T))
        close(L.deit_soft(s, t, T=T, reduction="deit"), float(bm) / 10)
    close(L.deit_soft(s, t), ref_kd(s, t, 1.0))  # default T=1, batchmean
    with pytest.raises(ValueError):
        L.deit_soft(s, t, reduction="mean")


def test_deit_hard_reference():
    s, t = rnd(6, 5, scale=2), rnd(6, 5, scale=2)
    sn, tn = npy(s), npy(t)
    ref = np.mean([-math.log(np_softmax(sn[i])[tn[i].argmax()]) for i in range(6)])
    close(L.deit_hard(s, t), ref)


# ---------------------------------------------------------------------------------------------
# dkd
# ---------------------------------------------------------------------------------------------
def test_dkd_matches_reference():
    s, t = rnd(6, 9, scale=2), rnd(6, 9, scale=2)
    y = torch.randint(0, 9, (6,))
    close(L.dkd(s, t, y), ref_dkd(s, t, y, 1.0, 8.0, 4.0))
    close(L.dkd(s, t, y, alpha=0.7, beta=0.5, T=1.0), ref_dkd(s, t, y, 0.7, 0.5, 1.0))
    # one-hot / soft targets: argmax is used
    close(L.dkd(s, t, torch.nn.functional.one_hot(y, 9).to(DT)), ref_dkd(s, t, y, 1.0, 8.0, 4.0))


def test_dkd_components_are_separable():
    s, t = rnd(4, 6), rnd(4, 6)
    y = torch.randint(0, 6, (4,))
    tckd = float(L.dkd(s, t, y, alpha=1.0, beta=0.0, T=2.0))
    nckd = float(L.dkd(s, t, y, alpha=0.0, beta=1.0, T=2.0))
    close(L.dkd(s, t, y, alpha=2.0, beta=3.0, T=2.0), 2 * tckd + 3 * nckd)
    assert tckd > 0 and nckd > 0


# ---------------------------------------------------------------------------------------------
# dist
# ---------------------------------------------------------------------------------------------
def test_dist_matches_reference_with_T_squared():
    s, t = rnd(8, 6, scale=3), rnd(8, 6, scale=3)
    close(L.dist(s, t), ref_dist(s, t, 1, 1, 1), rtol=1e-6, atol=1e-9)
    close(L.dist(s, t, beta=2.0, gamma=0.5, T=2.0), ref_dist(s, t, 2.0, 0.5, 2.0), rtol=1e-6, atol=1e-9)
    # the T^2 factor multiplies: same softmax inputs at T=1 give a 4x smaller value
    close(L.dist(s, t, T=2.0), 4 * float(L.dist(s / 2, t / 2, T=1.0)))


# ---------------------------------------------------------------------------------------------
# soft_ce / ofa
# ---------------------------------------------------------------------------------------------
def test_soft_ce_reference():
    s, t = rnd(5, 8, scale=2), rnd(5, 8, scale=2)
    close(L.soft_ce(s, t), ref_soft_ce_rows(npy(s), npy(t)))
    close(L.soft_ce(s, t, T=3.0), ref_soft_ce_rows(npy(s) / 3, npy(t) / 3))
    # any leading dims: mean over them
    s3, t3 = rnd(2, 3, 4), rnd(2, 3, 4)
    close(L.soft_ce(s3, t3), ref_soft_ce_rows(npy(s3), npy(t3)))


def ref_ofa(s, t, y, eps, T):
    s, t, y = npy(s), npy(t), y.numpy()
    vals = []
    for i in range(s.shape[0]):
        p = np_softmax(t[i] / T)
        logq = np.log(np_softmax(s[i] / T))
        onehot = np.zeros_like(p)
        onehot[y[i]] = 1.0
        vals.append(-(((p + onehot) ** eps - onehot) * logq).sum())
    return float(np.mean(vals))


def test_ofa_reference():
    s, t = rnd(6, 7, scale=2), rnd(6, 7, scale=2)
    y = torch.randint(0, 7, (6,))
    close(L.ofa_loss(s, t, y), ref_ofa(s, t, y, 1.0, 1.0))
    close(L.ofa_loss(s, t, y, eps=1.5, T=2.0), ref_ofa(s, t, y, 1.5, 2.0))
    close(L.ofa_loss(s, t, torch.nn.functional.one_hot(y, 7).to(DT) * 0.9 + 0.01, eps=1.2),
          ref_ofa(s, t, y, 1.2, 1.0))
    # eps = 1 is the soft cross-entropy with the teacher's probabilities
    close(L.ofa_loss(s, t, y, eps=1.0, T=2.0), L.soft_ce(s, t, T=2.0))


# ---------------------------------------------------------------------------------------------
# manifold
# ---------------------------------------------------------------------------------------------
def test_manifold_intra_inter_reference_width_mismatch():
    fs, ft = rnd(3, 5, 8), rnd(3, 5, 12)  # Cs=8, Ct=12
    close(L.manifold_intra(fs, ft), ref_manifold_intra(fs, ft))
    close(L.manifold_inter(fs, ft), ref_manifold_inter(fs, ft))


def test_manifold_random_reference():
    fs, ft = rnd(3, 9, 6), rnd(3, 9, 10)
    g = torch.Generator().manual_seed(123)
    got = L.manifold_random(fs, ft, k=7, generator=g)
    idx = torch.randperm(27, generator=torch.Generator().manual_seed(123))[:7].numpy()
    a = np_l2n(npy(fs).reshape(27, -1))[idx]
    b = np_l2n(npy(ft).reshape(27, -1))[idx]
    acc = sum((a[i] @ a[j] - b[i] @ b[j]) ** 2 for i in range(7) for j in range(7))
    close(got, acc / 49)
    # k larger than B*N: every token is used (order irrelevant for the mean)
    all_tokens = L.manifold_random(fs, ft, k=1000, generator=torch.Generator().manual_seed(1))
    a, b = np_l2n(npy(fs).reshape(27, -1)), np_l2n(npy(ft).reshape(27, -1))
    close(all_tokens, ((a @ a.T - b @ b.T) ** 2).mean())


def test_manifold_resamples_teacher_grid():
    fs = rnd(2, 16, 6)   # student 4x4
    ft = rnd(2, 64, 10)  # teacher 8x8: bilinear 2x downsampling == 2x2 average pooling
    pooled = avgpool2_tokens(ft, 8, 8)
    on_grid = resize_tokens(ft, (8, 8), (4, 4))   # the term resamples through the connectors
    close(L.manifold_intra(fs, on_grid), ref_manifold_intra(fs, pooled))
    close(L.manifold_inter(fs, on_grid), ref_manifold_inter(fs, pooled))
    # non-square grids
    fs2, ft2 = rnd(2, 8, 6), rnd(2, 32, 10)  # student 2x4, teacher 4x8
    pooled2 = avgpool2_tokens(ft2, 4, 8)
    close(L.manifold_intra(fs2, resize_tokens(ft2, (4, 8), (2, 4))), ref_manifold_intra(fs2, pooled2))
    with pytest.raises(ValueError, match="resize_tokens"):
        L.manifold_intra(fs2, ft2)  # token counts differ: no grid is guessed from a token count
    with pytest.raises(ValueError):
        resize_tokens(ft2, (3, 3), (2, 4))  # the grid does not hold the tokens


# ---------------------------------------------------------------------------------------------
# feature mimicking
# ---------------------------------------------------------------------------------------------
def test_hint_and_vitkd_mimic_reference():
    fs, ft = rnd(3, 4, 5), rnd(3, 4, 5)
    d = npy(fs) - npy(ft)
    close(L.hint_mse(fs, ft), (d ** 2).mean())
    close(L.vitkd_mimic(fs, ft), (d ** 2).sum() / 3)


def test_vitkd_generation_reference():
    fs, ft = rnd(3, 6, 4), rnd(3, 6, 4)
    mask = torch.rand(3, 6) > 0.5
    a, b, m = npy(fs), npy(ft), mask.numpy()
    acc = 0.0
    for i in range(3):
        for n in range(6):
            if m[i, n]:
                acc += ((a[i, n] - b[i, n]) ** 2).sum()
    close(L.vitkd_generation(fs, ft, mask), acc / 3)
    close(L.vitkd_generation(fs, ft, mask.to(DT)), acc / 3)


# ---------------------------------------------------------------------------------------------
# attention / cwd
# ---------------------------------------------------------------------------------------------
def ref_attention_kl_rows(a_s, a_t):
    """a_s, a_t: [..., N, N] probability rows -> mean over rows of KL(t||s)."""
    s2 = a_s.reshape(-1, a_s.shape[-1])
    t2 = a_t.reshape(-1, a_t.shape[-1])
    return float(np.mean([(t * np.log(t / s)).sum() for s, t in zip(s2, t2)]))


def test_attention_kl_reference():
    a_s = torch.softmax(rnd(2, 3, 5, 5, scale=2), -1)
    a_t = torch.softmax(rnd(2, 4, 5, 5, scale=2), -1)  # different head counts
    close(L.attention_kl(a_s, a_t), ref_attention_kl_rows(npy(a_s).mean(1), npy(a_t).mean(1)))
    a_t3 = torch.softmax(rnd(2, 3, 5, 5, scale=2), -1)
    close(L.attention_kl(a_s, a_t3, match="heads"), ref_attention_kl_rows(npy(a_s), npy(a_t3)))
    with pytest.raises(ValueError):
        L.attention_kl(a_s, a_t, match="heads")


def test_cwd_reference():
    fs, ft = rnd(2, 3, 4, 5, scale=2), rnd(2, 3, 4, 5, scale=2)
    for tau in (1.0, 4.0):
        a, b = npy(fs), npy(ft)
        acc = 0.0
        for i in range(2):
            for c in range(3):
                p_s = np_softmax(a[i, c].ravel() / tau)
                p_t = np_softmax(b[i, c].ravel() / tau)
                acc += (p_t * np.log(p_t / p_s)).sum()
        close(L.cwd(fs, ft, tau=tau), acc * tau * tau / (2 * 3))
    close(L.cwd(fs, ft), L.cwd(fs, ft, tau=4.0))


# ---------------------------------------------------------------------------------------------
# MiniViT relations
# ---------------------------------------------------------------------------------------------
def ref_minivit_attn(qkv_s, qkv_t, M, pairs):
    def merge(x):  # [B, H, N, d] -> [B, N, H*d] by explicit concatenation of the heads
        x = npy(x)
        return np.concatenate([x[:, h] for h in range(x.shape[1])], axis=-1)

    xs = [merge(x) for x in qkv_s]
    xt = [merge(x) for x in qkv_t]
    B, N, Ds = xs[0].shape
    Dt = xt[0].shape[-1]
    names = {"q": 0, "k": 1, "v": 2}
    vals = []
    for p in pairs:
        i, j = names[p[0]], names[p[1]]
        rows = []
        for b in range(B):
            for m in range(M):
                ws, wt = Ds // M, Dt // M
                a_i, a_j = xs[i][b, :, m * ws:(m + 1) * ws], xs[j][b, :, m * ws:(m + 1) * ws]
                b_i, b_j = xt[i][b, :, m * wt:(m + 1) * wt], xt[j][b, :, m * wt:(m + 1) * wt]
                rows.append((a_i @ a_j.T / math.sqrt(ws), b_i @ b_j.T / math.sqrt(wt)))
        vals.append(np.mean([ref_soft_ce_rows(rs, rt) for rs, rt in rows]))
    return float(np.mean(vals))


ALL9 = [a + b for a in "qkv" for b in "qkv"]


def test_minivit_attn_relation_reference():
    qkv_s = tuple(rnd(2, 2, 5, 4) for _ in range(3))  # student D = 8 (2 heads x 4)
    qkv_t = tuple(rnd(2, 3, 5, 4) for _ in range(3))  # teacher D = 12 (3 heads x 4)
    close(L.minivit_attn_relation(qkv_s, qkv_t), ref_minivit_attn(qkv_s, qkv_t, 1, ALL9))
    close(L.minivit_attn_relation(qkv_s, qkv_t, relation_heads=2), ref_minivit_attn(qkv_s, qkv_t, 2, ALL9))
    pairs = ["qk", "vv"]
    close(L.minivit_attn_relation(qkv_s, qkv_t, relation_heads=4, pairs=pairs),
          ref_minivit_attn(qkv_s, qkv_t, 4, pairs))
    # already merged [B, N, D] inputs give the same value
    merged_s = tuple(x.transpose(1, 2).reshape(2, 5, 8) for x in qkv_s)
    merged_t = tuple(x.transpose(1, 2).reshape(2, 5, 12) for x in qkv_t)
    close(L.minivit_attn_relation(merged_s, merged_t, relation_heads=2),
          L.minivit_attn_relation(qkv_s, qkv_t, relation_heads=2))
    with pytest.raises(ValueError):
        L.minivit_attn_relation(qkv_s, qkv_t, relation_heads=5)  # 8 not divisible by 5


def test_minivit_hidden_relation_reference():
    hs, ht = rnd(2, 5, 8), rnd(2, 5, 12)
    for M in (1, 2):
        a, b = npy(hs), npy(ht)
        ws, wt = 8 // M, 12 // M
        vals = []
        for i in range(2):
            for m in range(M):
                x = a[i, :, m * ws:(m + 1) * ws]
                y = b[i, :, m * wt:(m + 1) * wt]
                vals.append(ref_soft_ce_rows(x @ x.T / math.sqrt(ws), y @ y.T / math.sqrt(wt)))
        close(L.minivit_hidden_relation(hs, ht, relation_heads=M), np.mean(vals))
    a, b = np_l2n(npy(hs)), np_l2n(npy(ht))
    ref_cos = np.mean([((a[i] @ a[i].T - b[i] @ b[i].T) ** 2).mean() for i in range(2)]) * 49
    close(L.minivit_hidden_relation(hs, ht, mode="cosine"), ref_cos)


# ---------------------------------------------------------------------------------------------
# student == teacher
# ---------------------------------------------------------------------------------------------
def test_kl_type_losses_vanish_at_equality():
    z = rnd(6, 8, scale=3)
    y = torch.randint(0, 8, (6,))
    assert abs(float(L.kd(z, z.clone()))) < 1e-12
    assert abs(float(L.deit_soft(z, z.clone()))) < 1e-12
    assert abs(float(L.deit_soft(z, z.clone(), reduction="deit"))) < 1e-12
    assert abs(float(L.dkd(z, z.clone(), y))) < 1e-10
    # DIST's Pearson is cov / (|a||b| + eps) with the reference's eps=1e-8, which leaves a tiny
    # residue when a class has near-zero probabilities across the batch; without eps it is exact.
    assert abs(float(L.dist(z, z.clone(), eps=0.0))) < 1e-12
    assert abs(float(L.dist(z, z.clone()))) < 1e-4
    a = torch.softmax(rnd(2, 3, 5, 5), -1)
    assert abs(float(L.attention_kl(a, a.clone()))) < 1e-12
    assert abs(float(L.attention_kl(a, a.clone(), match="heads"))) < 1e-12
    m = rnd(2, 3, 4, 4)
    assert abs(float(L.cwd(m, m.clone()))) < 1e-12
    f = rnd(2, 9, 6)
    assert abs(float(L.manifold_intra(f, f.clone()))) < 1e-12
    assert abs(float(L.manifold_inter(f, f.clone()))) < 1e-12
    assert abs(float(L.manifold_random(f, f.clone(), k=5))) < 1e-12
    assert float(L.hint_mse(f, f.clone())) == 0.0
    assert float(L.vitkd_mimic(f, f.clone())) == 0.0
    assert float(L.vitkd_generation(f, f.clone(), torch.ones(2, 9))) == 0.0


def _assert_zero_grad(x):
    assert x.grad is not None
    assert float(x.grad.abs().max()) < 1e-10, float(x.grad.abs().max())


def test_ce_type_losses_equal_teacher_entropy_with_zero_grad():
    t = rnd(5, 7, scale=2)
    s = t.clone().requires_grad_(True)
    for T in (1.0, 2.0):
        ent = np_entropy_rows(np_softmax(npy(t) / T)).mean()
        s.grad = None
        v = L.soft_ce(s, t, T=T)
        close(v, ent)
        v.backward()
        _assert_zero_grad(s)
        s.grad = None
        y = torch.randint(0, 7, (5,))
        v = L.ofa_loss(s, t, y, eps=1.0, T=T)
        close(v, ent)
        v.backward()
        _assert_zero_grad(s)


def test_minivit_relations_equal_entropy_with_zero_grad():
    qkv_t = tuple(rnd(2, 2, 5, 4) for _ in range(3))
    qkv_s = tuple(x.clone().requires_grad_(True) for x in qkv_t)
    merged = [npy(x.transpose(1, 2).reshape(2, 5, 8)) for x in qkv_t]
    ents = []
    for a in "qkv":
        for b in "qkv":
            xi, xj = merged["qkv".index(a)], merged["qkv".index(b)]
            for i in range(2):
                for m in range(2):
                    r = xi[i, :, 4 * m:4 * m + 4] @ xj[i, :, 4 * m:4 * m + 4].T / 2.0
                    ents.append(np_entropy_rows(np_softmax(r)).mean())
    v = L.minivit_attn_relation(qkv_s, qkv_t, relation_heads=2)
    close(v, np.mean(ents))
    v.backward()
    for x in qkv_s:
        _assert_zero_grad(x)

    ht = rnd(2, 5, 8)
    hs = ht.clone().requires_grad_(True)
    x = npy(ht)
    ent = np.mean([np_entropy_rows(np_softmax(x[i] @ x[i].T / math.sqrt(8))).mean() for i in range(2)])
    v = L.minivit_hidden_relation(hs, ht)
    close(v, ent)
    v.backward()
    _assert_zero_grad(hs)


# ---------------------------------------------------------------------------------------------
# gradients reach the student only
# ---------------------------------------------------------------------------------------------
def _cases():
    y = torch.randint(0, 6, (4,))
    mask = torch.rand(4, 9) > 0.5
    mask[:, 0] = True
    return [
        ("kd", lambda s, t: L.kd(s, t), (4, 6), (4, 6)),
        ("deit_soft", lambda s, t: L.deit_soft(s, t, T=2.0), (4, 6), (4, 6)),
        ("deit_soft_deit", lambda s, t: L.deit_soft(s, t, reduction="deit"), (4, 6), (4, 6)),
        ("deit_hard", lambda s, t: L.deit_hard(s, t), (4, 6), (4, 6)),
        ("dkd", lambda s, t: L.dkd(s, t, y), (4, 6), (4, 6)),
        ("dist", lambda s, t: L.dist(s, t), (4, 6), (4, 6)),
        ("soft_ce", lambda s, t: L.soft_ce(s, t), (4, 6), (4, 6)),
        ("ofa", lambda s, t: L.ofa_loss(s, t, y, eps=1.5), (4, 6), (4, 6)),
        ("manifold_intra", lambda s, t: L.manifold_intra(s, t), (4, 9, 5), (4, 9, 7)),
        ("manifold_inter", lambda s, t: L.manifold_inter(s, t), (4, 9, 5), (4, 9, 7)),
        ("manifold_random", lambda s, t: L.manifold_random(s, t, k=8), (4, 9, 5), (4, 9, 7)),
        ("manifold_resample", lambda s, t: L.manifold_intra(s, resize_tokens(t, (4, 4), (2, 2))), (4, 4, 5), (4, 16, 7)),
        ("hint_mse", lambda s, t: L.hint_mse(s, t), (4, 9, 5), (4, 9, 5)),
        ("vitkd_mimic", lambda s, t: L.vitkd_mimic(s, t), (4, 9, 5), (4, 9, 5)),
        ("vitkd_generation", lambda s, t: L.vitkd_generation(s, t, mask), (4, 9, 5), (4, 9, 5)),
        ("attention_kl", lambda s, t: L.attention_kl(torch.softmax(s, -1), torch.softmax(t, -1)),
         (2, 3, 5, 5), (2, 4, 5, 5)),
        ("cwd", lambda s, t: L.cwd(s, t), (2, 3, 4, 4), (2, 3, 4, 4)),
        ("minivit_attn", lambda s, t: L.minivit_attn_relation((s, s * 2, s + 1), (t, t * 2, t + 1),
                                                              relation_heads=2), (2, 2, 5, 4), (2, 3, 5, 4)),
        ("minivit_hidden", lambda s, t: L.minivit_hidden_relation(s, t, relation_heads=2), (2, 5, 8), (2, 5, 12)),
        ("minivit_hidden_cos", lambda s, t: L.minivit_hidden_relation(s, t, mode="cosine"), (2, 5, 8), (2, 5, 12)),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_gradients_reach_student_only(case):
    _, fn, s_shape, t_shape = case
    s = rnd(*s_shape, requires_grad=True)
    t_leaf = rnd(*t_shape, requires_grad=True)
    loss = fn(s, t_leaf.detach())
    assert loss.dim() == 0 and loss.dtype == DT and loss.requires_grad
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and float(s.grad.abs().max()) > 0
    assert t_leaf.grad is None
    # a teacher that never required grad works as well
    s.grad = None
    loss2 = fn(s, t_leaf.detach().clone())
    loss2.backward()
    assert torch.isfinite(s.grad).all()


# ---------------------------------------------------------------------------------------------
# byot (Zhang et al. 2019; mmrazor SelfDistill: CE 0.7, soft KL at T=3 0.3, feature L2 0.03 per shallow section)
# ---------------------------------------------------------------------------------------------
def ref_byot(zs, fs, zt, ft, y, T, ce, kl, feature, eps=0.0):
    """sum over sections k of ce * CE_eps(z_k, y) + kl * T^2 * KL(softmax(z_t/T) || softmax(z_k/T))
    + feature * sum_b ||f_k[b] - f_t[b]||^2 / (B * D), with explicit loops over images and classes."""
    zt, ft, y = npy(zt), npy(ft), y.numpy()
    B, C = zt.shape
    total = 0.0
    for z, f in zip(zs, fs):
        z, f = npy(z), npy(f)
        for b in range(B):
            logp = np.log(np_softmax(z[b]))
            q = np.full(C, eps / C)
            q[y[b]] += 1.0 - eps                      # label smoothing as torch's cross_entropy
            total += ce * -(q * logp).sum() / B
            pt = np_softmax(zt[b] / T)
            ps = np_softmax(z[b] / T)
            total += kl * T * T * sum(pt[c] * math.log(pt[c] / ps[c]) for c in range(C)) / B
            total += feature * ((f[b] - ft[b]) ** 2).sum() / (B * f.shape[1])
    return total


@pytest.mark.parametrize("T,ce,kl,feature,eps", [(3.0, 0.7, 0.3, 0.03, 0.0), (1.5, 1.0, 0.0, 0.5, 0.1),
                                                 (4.0, 0.0, 1.0, 0.0, 0.0)])
def test_byot_matches_reference(T, ce, kl, feature, eps):
    B, C, D = 5, 7, 6
    zs, fs = [rnd(B, C, scale=2) for _ in range(3)], [rnd(B, D) for _ in range(3)]
    zt, ft, y = rnd(B, C, scale=2), rnd(B, D), torch.randint(0, C, (B,))
    got = L.byot(zs, fs, zt, ft, y, T=T, ce=ce, kl=kl, feature=feature, label_smoothing=eps)
    close(got, ref_byot(zs, fs, zt, ft, y, T, ce, kl, feature, eps))
    # the defaults are mmrazor's BYOT weights
    close(L.byot(zs, fs, zt, ft, y), ref_byot(zs, fs, zt, ft, y, 3.0, 0.7, 0.3, 0.03))


def test_byot_soft_targets_and_its_fixed_point():
    B, C, D = 4, 5, 3
    z, f = rnd(B, C), rnd(B, D)
    soft = torch.softmax(rnd(B, C), -1)
    # a label distribution [B, C]: soft-target CE; at z_k == z_t and f_k == f_t only the CE remains
    want = -(soft * torch.log_softmax(z, -1)).sum(-1).mean()
    close(L.byot([z], [f], z.clone(), f.clone(), soft, ce=1.0, kl=0.3, feature=0.03), want)
    z_leaf = z.clone().requires_grad_(True)
    L.byot([z_leaf], [f], z.clone(), f.clone(), soft, ce=0.0).backward()
    assert float(z_leaf.grad.abs().max()) < 1e-12   # KL and hint vanish with zero gradient there
    with pytest.raises(ValueError, match="one of each per section"):
        L.byot([z], [], z, f, soft)

"""snipnb.embed: PCA against numpy's SVD, t-SNE on separated clusters, the perplexity calibration, determinism, errors."""
import math
import numpy as np
import pytest
import torch
from snipnb.embed import pca, tsne, subsample, conditional_affinities, nn_accuracy, _sq_dists, _kl_grad, _kl, _joint_p

def clusters(n_per=100, k=3, d=50, sep=10., seed=0):
    "k Gaussian clusters (unit noise) with centres `sep` apart, and their labels."
    rng = np.random.default_rng(seed)
    centres = sep / np.sqrt(2) * np.eye(k, d)
    return (np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32),
            np.repeat(np.arange(k), n_per))

def entropies(pc):
    return -(pc * torch.log(torch.where(pc > 0, pc, torch.ones_like(pc)))).sum(1)

# ---- PCA ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('n,d,k', [(200, 6, 3), (30, 80, 5), (50, 4, 4)])
def test_pca_matches_numpy_svd(n, d, k):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * rng.uniform(.1, 5, size=d) + 3
    scores, comps, ratio = pca(x, k)
    assert scores.shape == (n, k) and comps.shape == (k, d) and ratio.shape == (k,) and scores.dtype == np.float32
    u, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    sign = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(1)])
    np.testing.assert_allclose(comps, vt[:k] * sign[:, None], atol=1e-5)
    np.testing.assert_allclose(scores, u[:, :k] * s[:k] * sign, atol=1e-4 * s[0])
    np.testing.assert_allclose(ratio, s[:k] ** 2 / (s ** 2).sum(), atol=1e-6)
    assert np.all(comps[np.arange(k), np.abs(comps).argmax(1)] > 0)         # the sign convention

def test_pca_sign_is_fixed_and_tensors_stay_tensors():
    x = np.random.default_rng(1).normal(size=(40, 5))
    a, b = pca(x, 2)[1], pca(-x, 2)[1]                    # flipping the data flips no component
    np.testing.assert_allclose(a, b, atol=1e-6)
    st, ct, rt = pca(torch.tensor(x, dtype=torch.float32), 2)
    assert isinstance(st, torch.Tensor) and st.dtype == torch.float32
    np.testing.assert_allclose(st.numpy(), pca(x, 2)[0], atol=1e-4)

def test_pca_uncentred_and_errors():
    x = np.random.default_rng(2).normal(size=(20, 3)) + 10
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    scores, comps, ratio = pca(x, 1, center=False)
    np.testing.assert_allclose(np.abs(comps[0]), np.abs(vt[0]), atol=1e-6)
    np.testing.assert_allclose(ratio, s[:1] ** 2 / (s ** 2).sum(), atol=1e-6)
    with pytest.raises(ValueError, match='k=4'): pca(x, 4)
    with pytest.raises(ValueError, match=r'\(n, d\)'): pca(x[0], 1)
    with pytest.raises(ValueError, match='NaN'): pca(np.full((3, 3), np.nan), 1)

# ---- perplexity calibration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('perplexity', [2., 5., 30., 100.])
def test_each_row_reaches_the_perplexity(perplexity):
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(300, 20)) * rng.uniform(.01, 100, size=(300, 1)))   # very different scales per point
    pc, beta = conditional_affinities(_sq_dists(x), perplexity)
    assert torch.all(pc.diagonal() == 0) and torch.allclose(pc.sum(1), torch.ones(300, dtype=pc.dtype))
    assert (entropies(pc) - math.log(perplexity)).abs().max() < 1e-3
    assert torch.all(beta > 0)

def test_perplexity_of_the_tsne_inputs():
    "The joint P that t-SNE uses is the symmetrised conditional P, summing to one."
    x, _ = clusters(30)
    p = _joint_p(torch.tensor(x, dtype=torch.float64), 10.)
    pc, _ = conditional_affinities(_sq_dists(torch.tensor(x, dtype=torch.float64)), 10.)
    assert (entropies(pc) - math.log(10)).abs().max() < 1e-3
    np.testing.assert_allclose(p.numpy(), ((pc + pc.T) / 180).clamp(min=1e-12).fill_diagonal_(0).float().numpy(), rtol=1e-6)
    assert p.dtype == torch.float32 and torch.equal(p, p.T) and abs(p.sum().item() - 1) < 1e-5

def test_duplicated_points_warn_but_give_a_distribution():
    x = torch.zeros(10, 3, dtype=torch.float64); x[5:] = 1      # two groups of 5 identical points
    with pytest.warns(UserWarning, match='not within'): pc, _ = conditional_affinities(_sq_dists(x), 2.)
    assert torch.allclose(pc.sum(1), torch.ones(10, dtype=pc.dtype))

# ---- t-SNE ----------------------------------------------------------------------------------------------------------

def test_gradient_and_kl_match_autograd():
    p = _joint_p(torch.randn(25, 4, dtype=torch.float64), 5.).double()
    p = p / p.sum()
    y = torch.randn(25, 2, dtype=torch.float64, requires_grad=True)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    off = ~torch.eye(25, dtype=torch.bool)
    q = (1 / (1 + d))[off]; q = q / q.sum()
    kl = (p[off] * torch.log(p[off] / q)).sum(); kl.backward()
    np.testing.assert_allclose(_kl_grad(p, y.detach()).numpy(), y.grad.numpy(), atol=1e-12)
    assert _kl(p, y.detach()) == pytest.approx(kl.item(), rel=1e-10)
    y2 = y.detach().clone().requires_grad_()                     # early exaggeration multiplies the attraction
    w2 = (1 / (1 + ((y2[:, None] - y2[None]) ** 2).sum(-1)))[off]
    (-(12 * p[off] * torch.log(w2)).sum() + torch.log(w2.sum())).backward()
    np.testing.assert_allclose(_kl_grad(p, y.detach(), 12.).numpy(), y2.grad.numpy(), atol=1e-12)

def test_three_clusters_separate():
    x, labels = clusters()
    emb, kl = tsne(x, perplexity=30, return_kl=True, device='cpu')
    assert emb.shape == (300, 2) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert 0 < kl < 2
    assert nn_accuracy(emb, labels) == 1.0
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = labels[:, None] == labels[None]
    assert dist[~same].min() > dist[same].max()                   # every cross-cluster pair is further than any within

def test_deterministic_given_seed():
    x, _ = clusters(20, seed=4)
    kw = dict(perplexity=8, iters=300, device='cpu')
    assert np.array_equal(tsne(x, **kw), tsne(x, **kw))
    r1 = tsne(x, init='random', seed=1, **kw)
    assert np.array_equal(r1, tsne(x, init='random', seed=1, **kw))
    assert not np.array_equal(r1, tsne(x, init='random', seed=2, **kw))
    assert np.array_equal(tsne(torch.tensor(x), **kw), tsne(x, **kw))   # tensor or array in, same map

def test_options():
    x, labels = clusters(20, seed=5)
    e3 = tsne(x, dims=3, perplexity=8, iters=300, device='cpu')
    assert e3.shape == (60, 3) and nn_accuracy(e3, labels) == 1.0
    init = np.random.default_rng(0).normal(size=(60, 2)) * 1e-4
    assert tsne(x, perplexity=8, iters=0, init=init, device='cpu') == pytest.approx(init.astype(np.float32))
    assert tsne(x, perplexity=8, iters=100, lr=100., device='cpu').shape == (60, 2)
    before = torch.get_num_threads()
    tsne(x, perplexity=8, iters=10, device='cpu', threads=1)
    assert torch.get_num_threads() == before                     # the thread setting is restored

def test_verbose_prints_kl(capsys):
    x, _ = clusters(20, seed=6)
    tsne(x, perplexity=8, iters=260, device='cpu', verbose=True)
    out = capsys.readouterr().out
    assert 'KL' in out and '250 iterations' in out and '10 iterations' in out

def test_clear_errors():
    x, _ = clusters(10)
    with pytest.raises(ValueError, match='subsample'): tsne(np.zeros((5001, 2)), device='cpu')
    with pytest.raises(ValueError, match='max_points=20'): tsne(x, max_points=20, device='cpu')
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=30, device='cpu')
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=29, device='cpu')   # n - 1 is out of reach too
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=.5, device='cpu')
    with pytest.raises(ValueError, match='init must be'): tsne(x, perplexity=5, init='spectral', device='cpu')
    with pytest.raises(ValueError, match='init has shape'): tsne(x, perplexity=5, init=np.zeros((3, 2)), device='cpu')
    with pytest.raises(ValueError, match="init='random'"): tsne(x[:, :1], perplexity=5, device='cpu')
    with pytest.raises(ValueError, match='NaN'): tsne(np.full((30, 3), np.nan), perplexity=5, device='cpu')

def test_subsample():
    idx = subsample(10_000, 100, seed=3)
    assert len(idx) == 100 and idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and idx.max() < 10_000
    assert np.array_equal(idx, subsample(10_000, 100, seed=3)) and not np.array_equal(idx, subsample(10_000, 100, seed=4))
    assert np.array_equal(subsample(7, 100), np.arange(7))
    with pytest.raises(ValueError): subsample(10, 0)

def test_nn_accuracy():
    assert nn_accuracy([[0.], [.1], [5.], [5.1]], [0, 0, 1, 1]) == 1.0
    assert nn_accuracy([[0.], [.1], [5.], [5.1]], [0, 1, 0, 1]) == 0.0

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda():
    x, labels = clusters()
    emb, kl = tsne(torch.tensor(x, device='cuda'), device='cuda', return_kl=True)
    assert emb.shape == (300, 2) and nn_accuracy(emb, labels) == 1.0
    assert np.array_equal(emb, tsne(x, device='cuda'))
    assert kl == pytest.approx(tsne(x, device='cpu', return_kl=True)[1], rel=0.05)
    st, ct, rt = pca(torch.tensor(x, device='cuda'), 2)
    assert st.device.type == 'cuda'
    np.testing.assert_allclose(ct.cpu().numpy(), pca(x, 2)[1], atol=1e-4)

"""snipnb.embed: PCA against numpy's SVD, t-SNE (scikit-learn) on separated clusters, determinism, options, errors."""
import sys
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from snipnb.embed import pca, tsne, subsample, nn_accuracy, _sq_dists

def clusters(n_per=100, k=3, d=50, sep=10., seed=0):
    "k Gaussian clusters (unit noise) with centres `sep` apart, and their labels."
    rng = np.random.default_rng(seed)
    centres = sep / np.sqrt(2) * np.eye(k, d)
    return (np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32),
            np.repeat(np.arange(k), n_per))

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

# ---- t-SNE ----------------------------------------------------------------------------------------------------------

def test_three_clusters_separate():
    x, labels = clusters()
    emb, kl = tsne(x, perplexity=30, return_kl=True)
    assert emb.shape == (300, 2) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert 0 < kl < 2
    assert nn_accuracy(emb, labels) == 1.0
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    same = labels[:, None] == labels[None]
    assert dist[~same].min() > dist[same].max()                   # every cross-cluster pair is further than any within

def test_same_settings_as_scikit_learn():
    "tsne is sklearn's TSNE with our argument names: the same call gives the same map."
    from sklearn.manifold import TSNE
    x, _ = clusters(20, seed=7)
    ref = TSNE(2, perplexity=8, max_iter=300, learning_rate='auto', early_exaggeration=12., init='pca', random_state=3)
    with threadpool_limits(1): expected = ref.fit_transform(x).astype(np.float32)
    np.testing.assert_array_equal(tsne(x, perplexity=8, iters=300, seed=3), expected)

def test_deterministic_given_seed():
    x, _ = clusters(20, seed=4)
    kw = dict(perplexity=8, iters=300)
    assert np.array_equal(tsne(x, **kw), tsne(x, **kw))
    r1 = tsne(x, init='random', seed=1, **kw)
    assert np.array_equal(r1, tsne(x, init='random', seed=1, **kw))
    assert not np.array_equal(r1, tsne(x, init='random', seed=2, **kw))
    assert np.array_equal(tsne(torch.tensor(x), **kw), tsne(x, **kw))   # tensor or array in, same map
    assert np.array_equal(tsne(x, threads=2, **kw), tsne(x, **kw))      # the same map on more threads

def test_options():
    x, labels = clusters(20, seed=5)
    e3 = tsne(x, dims=3, perplexity=8, iters=300)
    assert e3.shape == (60, 3) and np.isfinite(e3).all()
    init = np.random.default_rng(0).normal(size=(60, 2)) * 1e-4
    a = tsne(x, perplexity=8, iters=250, init=init)
    assert a.shape == (60, 2) and not np.array_equal(a, tsne(x, perplexity=8, iters=250))
    assert np.array_equal(tsne(x, perplexity=8, iters=250, init=torch.tensor(init)), a)
    assert tsne(x, perplexity=8, iters=300, lr=100.).shape == (60, 2)
    assert tsne(x, dims=4, perplexity=8, iters=250, method='exact').shape == (60, 4)   # passed on (Barnes-Hut: dims <= 3)
    before = [i['num_threads'] for i in threadpool_info()]
    tsne(x, perplexity=8, iters=250, threads=1)
    assert [i['num_threads'] for i in threadpool_info()] == before               # the thread setting is restored

def test_verbose_prints_progress(capsys):
    x, _ = clusters(20, seed=6)
    tsne(x, perplexity=8, iters=260, verbose=True)
    out = capsys.readouterr().out
    assert '[t-SNE]' in out and 'KL divergence' in out

def test_clear_errors():
    x, _ = clusters(10)
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=30)
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=29)   # n - 1 is out of reach too
    with pytest.raises(ValueError, match='perplexity must be'): tsne(x, perplexity=.5)
    with pytest.raises(ValueError, match='NaN'): tsne(np.full((30, 3), np.nan), perplexity=5)
    with pytest.raises(ValueError, match=r'\(n, d\)'): tsne(x[0], perplexity=5)
    with pytest.raises(ValueError, match='max_iter'): tsne(x, perplexity=5, iters=100)   # scikit-learn's own message
    with pytest.raises(ValueError, match='n_components'): tsne(x, dims=4, perplexity=5)  # Barnes-Hut: at most 3

def test_without_scikit_learn_a_clear_message(monkeypatch):
    x, _ = clusters(10)
    monkeypatch.setitem(sys.modules, 'sklearn.manifold', None)                  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'snipnb\[tsne\]'"): tsne(x, perplexity=5)
    assert pca(x, 2)[0].shape == (30, 2)                                          # PCA does not need it

def test_subsample():
    idx = subsample(10_000, 100, seed=3)
    assert len(idx) == 100 and idx.dtype == np.int64 and np.all(np.diff(idx) > 0) and idx.max() < 10_000
    assert np.array_equal(idx, subsample(10_000, 100, seed=3)) and not np.array_equal(idx, subsample(10_000, 100, seed=4))
    assert np.array_equal(subsample(7, 100), np.arange(7))
    with pytest.raises(ValueError): subsample(10, 0)

def test_nn_accuracy_and_distances():
    assert nn_accuracy([[0.], [.1], [5.], [5.1]], [0, 0, 1, 1]) == 1.0
    assert nn_accuracy([[0.], [.1], [5.], [5.1]], [0, 1, 0, 1]) == 0.0
    pts = torch.randn(9, 4, dtype=torch.float64)
    np.testing.assert_allclose(_sq_dists(pts).numpy(), (torch.cdist(pts, pts) ** 2).numpy(), atol=1e-10)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda():
    x, labels = clusters()
    emb = tsne(torch.tensor(x, device='cuda'))                                   # CUDA points are mapped on the CPU
    assert emb.shape == (300, 2) and nn_accuracy(emb, labels) == 1.0 and np.array_equal(emb, tsne(x))
    st, ct, rt = pca(torch.tensor(x, device='cuda'), 2)
    assert st.device.type == 'cuda'
    np.testing.assert_allclose(ct.cpu().numpy(), pca(x, 2)[1], atol=1e-4)

"""Corpus caches: atomic conversion, views, windows and batches."""
import os, signal, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from snipnb.skeleton import Sequence, labels_to_segments
from snipnb.datasets import Corpus, build_cache, window_starts

CLASSES = ('background', 'a', 'b', 'c')

def make_seqs(lengths, seed=0, persons=1):
    rng = np.random.default_rng(seed)
    out = []
    for i, T in enumerate(lengths):
        lab = rng.integers(0, 4, size=T).repeat(1)[:T]
        lab = np.repeat(rng.integers(0, 4, size=(T + 4) // 5), 5)[:T]
        out.append(Sequence(rng.normal(size=(T, persons, 25, 3)), labels=lab, segments=labels_to_segments(lab),
                            name=f'r{i:03d}', class_names=CLASSES, meta={'split': ['train', 'val', 'test'][i % 3]}))
    return out

@pytest.fixture
def corpus(tmp_path):
    return Corpus(build_cache(make_seqs([40, 13, 77, 64, 5, 100]), tmp_path/'c', class_names=CLASSES, progress=False))

def test_roundtrip_every_recording(tmp_path):
    seqs = make_seqs([40, 13, 77], persons=2)
    c = Corpus(build_cache(seqs, tmp_path/'c', class_names=CLASSES, progress=False))
    for s, r in zip(seqs, (c[i] for i in range(len(c)))):
        np.testing.assert_array_equal(s.joints, r.joints)
        np.testing.assert_array_equal(s.labels, r.labels)
        assert s.segments == r.segments and s.name == r.name

def test_interrupted_conversion_leaves_nothing(tmp_path):
    def stream():
        yield from make_seqs([10, 20])
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt): build_cache(stream(), tmp_path/'c', progress=False)
    assert list(tmp_path.iterdir()) == []

def test_killed_conversion_leaves_no_cache(tmp_path):
    "SIGKILL mid-conversion: the final folder never appears; the next build removes the stale temporary folder."
    script = textwrap.dedent(f'''
        import time, numpy as np
        from snipnb.skeleton import Sequence
        from snipnb.datasets import build_cache
        def slow():
            for i in range(1000):
                if i == 3: print('started', flush=True)
                time.sleep(0.05)
                yield Sequence(np.zeros((50, 1, 25, 3)), name=f'r{{i}}')
        build_cache(slow(), {str(tmp_path/'c')!r}, progress=False)
    ''')
    proc = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'started'
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert not (tmp_path/'c').exists()
    assert [p.name for p in tmp_path.iterdir() if '.tmp-' in p.name]       # the killed writer's leftovers
    build_cache(make_seqs([10]), tmp_path/'c', progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c']

def test_live_writers_temporary_folder_is_kept(tmp_path):
    "A concurrent writer's temporary folder (its process is alive) is not removed by another build."
    live = tmp_path/f'c.tmp-{os.getpid()}-abcdef'; live.mkdir()
    build_cache(make_seqs([10]), tmp_path/'c', progress=False)
    assert live.exists()
    build_cache(make_seqs([12]), tmp_path/'c', progress=False)   # the cache exists: the new copy is discarded
    assert Corpus(tmp_path/'c').lengths.tolist() == [10]

def test_not_a_cache(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a snipnb corpus cache'): Corpus(tmp_path)

def test_views(corpus):
    assert len(corpus.split('train')) == 2 and len(corpus.split('train+val')) == 4
    sub = corpus.subset(['c', 'a'])
    assert sub.class_names == ('background', 'c', 'a')
    for i in range(len(sub)):
        raw = corpus[list(corpus.names).index(sub.names[i])].labels
        expect = np.select([raw == 3, raw == 1], [1, 2], 0)
        np.testing.assert_array_equal(sub[i].labels, expect)
    # subsets of subsets compose
    assert sub.subset(['a']).class_names == ('background', 'a')
    f = corpus.label_fraction(0.5, seed=3)
    assert len(f) == 3 and set(f.names) <= set(corpus.names)
    assert set(corpus.label_fraction(0.34, seed=3).names) <= set(f.names)   # nested for one seed

@settings(deadline=None, max_examples=50)
@given(T=st.integers(1, 400), L=st.integers(1, 120), S=st.integers(1, 120))
def test_windows_cover_every_frame(T, L, S):
    starts = window_starts(T, L, S)
    covered = np.zeros(T, bool)
    for s in starts: covered[s:s + L] = True
    assert covered.all() or S > L        # a stride longer than the clip skips frames on purpose
    assert covered[-1] and (starts >= 0).all() and (starts[1:] > starts[:-1]).all()
    assert T < L or (starts + L <= T).all()

@pytest.mark.parametrize('pad', ['zero', 'edge', 'loop'])
def test_batches_match_recordings(corpus, pad):
    seen = 0
    for b in corpus.batches(32, batch_size=5, stride=16, pad=pad, device='cpu', seed=1):
        for x, y, m, p, s in zip(b['x'], b['y'], b['mask'], b['position'], b['start']):
            rec = corpus[int(p)]; n = int(m.sum())
            np.testing.assert_array_equal(x[:, :n].permute(1, 3, 2, 0).numpy(), rec.joints[int(s):int(s) + n])
            np.testing.assert_array_equal(y[:n].numpy(), rec.labels[int(s):int(s) + n])
            assert (y[n:] == -1).all()
            if pad == 'zero': assert (x[:, n:] == 0).all()
            seen += 1
    assert seen == len(corpus.windows(32, 16))

# ---- datasets by name ---------------------------------------------------------------------------
import json, shutil
from snipnb.datasets import load_corpus, DatasetNotFound

def test_synthetic_by_name_is_cached(tmp_path):
    c = load_corpus('synthetic', size='quick', cache_dir=tmp_path, progress=False)
    assert len(c) == 40 and c.split_names == ['pretrain', 'test', 'train', 'val'] and c.num_classes == 13
    stamp = (c.path/'index.json').stat().st_mtime_ns
    again = load_corpus('synthetic', 'train', size='quick', cache_dir=tmp_path, progress=False)
    assert (again.path/'index.json').stat().st_mtime_ns == stamp and len(again) == 12
    other = load_corpus('synthetic', size='quick', seed=1, cache_dir=tmp_path, progress=False)
    assert other.path != c.path                                   # other settings, other cache
    np.testing.assert_array_equal(c[3].joints, load_corpus('synthetic', size='quick', cache_dir=tmp_path, rebuild=True,
                                                           progress=False)[3].joints)

@pytest.mark.parametrize('name,needle', [('ntu60', 'nturgbd_skeletons_s001_to_s017.zip'), ('ntu120', 's018_to_s032'),
                                         ('pkummd', 'PKU_Skeleton_Renew'), ('babel', 'train.json'), ('babel2', 'babel.is.tue.mpg.de')])
def test_missing_dataset_says_how_to_get_it(tmp_path, name, needle):
    with pytest.raises(DatasetNotFound) as e: load_corpus(name, root=tmp_path/'empty', cache_dir=tmp_path)
    assert needle in str(e.value) and str(tmp_path/'empty') in str(e.value) and 'settings.ini' in str(e.value)

def test_unknown_dataset():
    with pytest.raises(KeyError, match='unknown dataset'): load_corpus('kinetics')

def test_real_ntu_and_pkummd_by_name_from_settings(shared_data, tmp_path, monkeypatch):
    "Roots come from settings.ini (found through SNIPNB_SETTINGS), as for a user's real datasets."
    ini = tmp_path/'settings.ini'
    ini.write_text(f"[snipnb]\nntu60_root = {shared_data/'ntu_rgbd'}\npkummd_root = {shared_data/'pku_mmd'}\ncache_dir = cache\n")
    monkeypatch.setenv('SNIPNB_SETTINGS', str(ini))
    ntu = load_corpus('ntu60', progress=False)
    assert ntu.path.parent == tmp_path/'cache'
    assert ntu.names == ['S001C001P001R001A001', 'S001C003P008R002A058'] and ntu.lengths.tolist() == [103, 70]
    assert ntu.shape == (2, 25, 3) and ntu[0].segments == [(1, 0, 103)] and ntu[1].segments == [(58, 0, 70)]
    assert ntu.class_names[58] == 'shaking hands' or 'hand' in ntu.class_names[58]
    assert np.abs(ntu[0].joints[:, 1]).sum() == 0 and np.abs(ntu[1].joints[:, 1]).sum() > 0   # one body vs two
    np.testing.assert_allclose(ntu[0].joints[:, 0, 1], 0, atol=1e-5)                           # normalised: spine middle at 0
    with pytest.warns(UserWarning, match='1075 of 1076'):
        pku = load_corpus('pkummd', progress=False)
    assert pku.names == ['0016-M'] and pku.lengths.tolist() == [1318] and pku.num_classes == 51
    assert pku[0].segments[0] == (26, 109, 154)
    raw = load_corpus('pkummd', normalize=False, progress=False)
    first = np.loadtxt(shared_data/'pku_mmd/Data/Skeleton/PKU_Skeleton_Renew/0016-M.txt', max_rows=1)
    np.testing.assert_allclose(raw[0].joints[0].ravel(), first, rtol=1e-6)

def test_pkummd_at_15_fps(shared_data, tmp_path):
    "The tables' CPU preset converts PKU-MMD at half its rate: half the frames, segment boundaries halved, a cache of its own."
    kw = dict(root=shared_data/'pku_mmd', cache_dir=tmp_path, progress=False)
    with pytest.warns(UserWarning, match='1075 of 1076'):
        full, half = load_corpus('pkummd', **kw), load_corpus('pkummd', fps=15, **kw)
    assert half.path != full.path and half.lengths.tolist() == [659] and half[0].fps == 15
    assert half[0].segments[0] == (26, 55, 77)                      # (26, 109, 154) at 30 fps: frames 2k in [109, 154)
    assert len(half[0].segments) == len(full[0].segments)
    np.testing.assert_allclose(half[0].joints[1], full[0].joints[2], atol=1e-6)   # frame k at 15 fps is frame 2k at 30

def test_corrupt_file_refused_and_no_cache_left(shared_data, tmp_path):
    root = tmp_path/'ntu'; root.mkdir()
    good = shared_data/'ntu_rgbd/raw_skeleton/S001C001P001R001A001.skeleton'
    shutil.copy(good, root/good.name)
    bad = root/'S001C003P008R002A058.skeleton'
    text = (shared_data/'ntu_rgbd/raw_skeleton'/bad.name).read_bytes()
    bad.write_bytes(text[:len(text) // 2])                         # truncated mid-file
    with pytest.raises(ValueError, match='S001C003P008R002A058.skeleton'):
        load_corpus('ntu60', root=root, cache_dir=tmp_path/'cache', progress=False)
    assert not any((tmp_path/'cache').iterdir())

def test_babel_by_name(shared_data, tmp_path):
    "A BABEL root with the real (reconstructed) train annotation and AMASS joints for its motion."
    ann = json.loads((shared_data/'babel/babel_dense_excerpt_sid7692.reconstructed.json').read_text())
    root, amass = tmp_path/'babel', tmp_path/'amass'
    root.mkdir(); (root/'train.json').write_text(json.dumps(ann))
    feat_p = ann['7692']['feat_p']
    fps = json.loads((shared_data/'babel/featp_2_fps.json').read_text())[feat_p]
    joints_file = amass/'joints'/Path(feat_p).with_suffix('.npy')
    joints_file.parent.mkdir(parents=True)
    T = int(round(ann['7692']['dur'] * fps))
    np.save(joints_file, np.random.default_rng(0).normal(size=(T, 73, 3)).astype(np.float32))
    (root/'featp_2_fps.json').write_text(json.dumps({feat_p: fps}))
    whole = load_corpus('babel', root=root, amass_root=amass, cache_dir=tmp_path/'cache', progress=False)
    assert len(whole) == 1 and whole.num_classes == 150 and whole.split_names == ['train']
    assert whole.lengths.tolist() == [round(T * 30 / fps)]          # resampled to 30 fps
    sub = load_corpus('babel1', root=root, amass_root=amass, cache_dir=tmp_path/'cache', progress=False)
    assert sub.class_names == ('background', 'walk', 'stand', 'turn', 'jump')
    labels = sub[0].labels
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4} and (labels == 2).any()   # 'stand' is in sid 7692
    with pytest.raises(ValueError, match='babel2: no recordings'):      # sid 7692 holds no subset-2 class
        load_corpus('babel2', root=root, amass_root=amass, cache_dir=tmp_path/'cache', progress=False)
    with pytest.raises(DatasetNotFound, match='no AMASS motion'):
        load_corpus('babel', root=root, amass_root=tmp_path/'elsewhere', cache_dir=tmp_path/'cache', progress=False)

def test_synthetic_class_subset(tmp_path):
    "The BABEL subset rule on the synthetic benchmark: a subset's classes become 1..k in its order, every other class background."
    from snipnb.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_SUBSETS
    full = load_corpus('synthetic', size='quick', cache_dir=tmp_path, progress=False)
    classes = SYNTHETIC_SUBSETS[2]
    sub = full.subset(classes, keep_all=True)
    assert sub.class_names == ('background', *classes) and sub.names == full.names
    lut = np.array([classes.index(c) + 1 if c in classes else 0 for c in SYNTHETIC_CLASSES])
    for i in range(len(full)):
        np.testing.assert_array_equal(sub[i].labels, lut[full[i].labels])
        assert sub[i].segments == labels_to_segments(sub[i].labels)
    held = full.subset(classes)                                     # by default: only recordings holding a subset class
    assert held.names == [n for n, s in zip(sub.names, (sub[i] for i in range(len(sub)))) if s.labels.any()]
    with pytest.raises(KeyError, match='fly'): full.subset(['walk', 'fly'])

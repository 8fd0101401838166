"""Localization protocols, sliding-window inference, decoding, and the pretrain -> localize papermill pipeline."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import run_tool
from snipnb.protocols import (predict_probs, localize, decode_paper, decode_argmax, nms, runs, build_protocol_model,
                              FrozenBackbone, KNNLocalizer)
from snipnb.experiments import fit_localizer, evaluate, metric_table
from snipnb.ufusion import build_localizer
from snipnb.datasets import window_starts
from snipnb.experiments import pretrain

@pytest.fixture(scope='module')
def sharp_model():
    torch.manual_seed(0)
    m = build_localizer('stgcn16', ufusion=True, num_classes=4, num_persons=1).eval()
    with torch.no_grad(): m.head.classifier.weight.mul_(300)      # probabilities that swing between 0 and 1
    return m

def walk(T, seed=0):
    return np.cumsum(np.random.default_rng(seed).normal(size=(T, 1, 25, 3)).astype(np.float32) * 0.05, axis=0)

@pytest.mark.parametrize('window,overlap', [(150, 75), (200, 100), (256, 64)])
def test_stitched_track_matches_single_pass(sharp_model, window, overlap):
    "Tolerance 0.01 in probability away from the recording's ends (measured ~5e-4); no jump at window borders."
    x = walk(700)
    full = predict_probs(sharp_model, x, window=700, overlap=0, device='cpu')
    st = predict_probs(sharp_model, x, window=window, overlap=overlap, device='cpu')
    assert full.std() > 0.3
    assert np.abs(st[100:600] - full[100:600]).max() < 0.01
    starts = window_starts(700, window, window - overlap)
    borders = [s for s in starts[1:]] + [s + window for s in starts[:-1] if s + window < 700]
    assert max(np.abs(st[b] - st[b - 1]).max() for b in borders) <= np.abs(np.diff(full, axis=0)).max()
    np.testing.assert_allclose(st.sum(1), 1, atol=1e-5)

@pytest.mark.parametrize('T', [7, 150, 151, 1000])
def test_localize_any_length(sharp_model, T):
    segs = localize(sharp_model, walk(T), window=150, device='cpu')
    assert all(0 <= s < e <= T and 1 <= l <= 4 for l, s, e, _ in segs)
    assert predict_probs(sharp_model, walk(T), window=150, device='cpu').shape == (T, 5)

def test_runs_and_nms_by_hand():
    assert runs(np.array([1, 1, 0, 1], bool)) == [(0, 2), (3, 4)]
    segs = [(1, 0, 10, 0.5), (1, 2, 12, 0.9), (1, 11, 13, 0.5)]
    # (2, 12) wins; (0, 10) overlaps it by 8/10; (11, 13) by 1/2 of its own length: both suppressed at 0.2
    assert nms(segs, 0.2) == [(1, 2, 12, 0.9)]
    assert nms(segs, 0.6) == [(1, 2, 12, 0.9), (1, 11, 13, 0.5)]
    assert nms([], 0.2) == []

def test_decoders_by_hand():
    p = np.zeros((40, 3)); p[:, 0] = 1
    p[5:15] = [0.2, 0.8, 0.0]; p[20:22] = [0.1, 0.0, 0.9]; p[25:35] = [0.3, 0.0, 0.7]
    assert [s[:3] for s in decode_argmax(p)] == [(1, 5, 15), (2, 25, 35)]          # the 2-frame run is dropped
    dp = decode_paper(p)
    assert {s[:3] for s in dp} == {(1, 5, 15), (2, 25, 35)}
    score = {s[:3]: s[3] for s in dp}
    assert score[1, 5, 15] == pytest.approx(0.8) and score[2, 25, 35] == pytest.approx(0.7)
    # probability in the outer margins (int(0.25 * 10) = 2 frames on each side) lowers the score
    q = p.copy(); q[3:5, 1] = 0.02
    s = {x[:3]: x[3] for x in decode_paper(q)}[1, 5, 15]
    assert s == pytest.approx(0.8 - 0.6 * np.mean([0.02, 0.02, 0, 0]))      # margins: 2 frames each side
    assert (1, 5, 16) in [x[:3] for x in decode_paper(p, official=True)]            # official off-by-one kept as a switch

def test_protocol_models(tmp_path, monkeypatch):
    monkeypatch.setenv('SNIPNB_CACHE_DIR', str(tmp_path/'cache'))
    tr = pretrain('synthetic', 'rvtclr', 'stgcn16', corpus_options={'size': 'quick'}, epochs=1, batch_size=4, clip_len=32,
                  max_steps=2, device='cpu', out_dir=tmp_path/'pre', pretext_options={'queue_size': 64}, progress=False)
    ck = tmp_path/'pre'/'last.pt'
    pre = tr.model.backbone.state_dict()
    ft = build_protocol_model('finetune', 4, ck)
    assert all(torch.equal(ft.backbone.state_dict()[k], v) for k, v in pre.items())            # starts from the checkpoint
    sc = build_protocol_model('scratch', 4, ck, seed=1)
    assert sc.backbone.config == ft.backbone.config
    assert not torch.equal(sc.backbone.state_dict()['blocks.0.gcn.weight'], pre['blocks.0.gcn.weight'])
    assert isinstance(build_protocol_model('linear', 4, ck), FrozenBackbone)
    assert isinstance(build_protocol_model('knn', 4, ck), KNNLocalizer)
    # the linear probe leaves the backbone untouched, BatchNorm statistics included
    m, trainer, test = fit_localizer('synthetic', ck, 'linear', subset=1, corpus_options={'size': 'quick'}, epochs=1,
                                     clip_len=32, batch_size=4, max_steps=3, warmup_epochs=0, device='cpu',
                                     out_dir=tmp_path/'lin', progress=False)
    assert all(torch.equal(m.backbone.state_dict()[k], v) for k, v in pre.items())
    from snipnb.protocols import load_localizer, predict_probs
    again = load_localizer(tmp_path/'lin'/'last.pt')                   # linear probe back from its checkpoint
    assert isinstance(again, FrozenBackbone) and again.class_names == test.class_names
    np.testing.assert_allclose(predict_probs(again, test[0], 32, device='cpu'), predict_probs(m, test[0], 32, device='cpu'), atol=1e-6)
    m, _, test = fit_localizer('synthetic', ck, 'knn', subset=1, corpus_options={'size': 'quick'}, clip_len=32,
                               device='cpu', out_dir=tmp_path/'knn', progress=False)
    row = metric_table(evaluate(m, test, window=32, device='cpu', progress=False))
    assert 0 <= row['mAP avg'] <= 1 and 0 <= row['accuracy'] <= 1
    knn = load_localizer(tmp_path/'knn'/'last.pt')                     # the kNN bank comes back with it
    assert isinstance(knn, KNNLocalizer) and torch.equal(knn.bank, m.bank.cpu()) and len(knn.bank) > 0
    np.testing.assert_allclose(predict_probs(knn, test[0], 32, device='cpu'), predict_probs(m, test[0], 32, device='cpu'), atol=1e-5)

def test_label_fraction_is_of_training_videos(tmp_path, monkeypatch):
    from snipnb.datasets import load_corpus
    monkeypatch.setenv('SNIPNB_CACHE_DIR', str(tmp_path/'cache'))
    train = load_corpus('synthetic', 'train', size='quick', progress=False)
    assert len(train.label_fraction(0.2, seed=0)) == round(0.2 * len(train))
    assert train.label_fraction(0.2, seed=0).names == train.label_fraction(0.2, seed=0).names
    assert train.label_fraction(0.2, seed=0).names != train.label_fraction(0.2, seed=5).names

def test_pretrain_then_localize_through_papermill(repo, tmp_path):
    env = {'SNIPNB_CACHE_DIR': str(tmp_path/'cache')}
    run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'pre.ipynb'), '-p', 'epochs', '1', '-p', 'batch_size', '4',
             '-p', 'clip_len', '32', '-p', 'max_steps', '2', '-p', 'queue_size', '64', '-p', 'device', 'cpu',
             '-p', 'out_dir', str(tmp_path/'pre'), cwd=tmp_path, env=env)
    run_tool('papermill', str(repo/'nbs'/'localize.ipynb'), str(tmp_path/'loc.ipynb'), '-p', 'checkpoint', str(tmp_path/'pre'/'last.pt'),
             '-p', 'epochs', '1', '-p', 'clip_len', '32', '-p', 'device', 'cpu', '-p', 'out_dir', str(tmp_path/'loc'),
             cwd=tmp_path, env=env)
    row = json.loads((tmp_path/'loc'/'metrics.json').read_text())
    assert row['protocol'] == 'finetune' and 0 <= row['mAP avg'] <= 1 and {'mAP@0.1', 'mAP@0.5', 'f1@50'} <= set(row)
    assert (tmp_path/'loc'/'predictions.csv').read_text().startswith('video,label,start,end,score')
    assert (tmp_path/'loc'/'metrics.csv').exists() and (tmp_path/'loc'/'timeline.html').exists()


# --- the official protocol: whole sequences, model selection, the official network --------------------------------
from snipnb import protocols as P, experiments as E
from snipnb.protocols import sequence_batches, frame_loss, validation_split, load_localizer
from snipnb.backbones import count_parameters

TINY = {'channels': (4, 4, 4, 4, 8, 8, 8, 16, 16, 16)}       # narrow backbone: these tests check bookkeeping, not accuracy
QUICK = dict(protocol='scratch', subset=1, corpus_options={'size': 'quick'}, clip_len=None, batch_size=4, warmup_epochs=0,
             max_steps=1, device='cpu', progress=False, backbone_options=TINY)

@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "One synthetic corpus cache for the tests below (building it is the slow part)."
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('SNIPNB_CACHE_DIR', str(tmp_path_factory.mktemp('cache')))
        yield

def test_whole_sequence_padding_is_masked(cache):
    "A padded batch's loss equals the frame-weighted loss of its recordings unpadded (a per-frame model: no context)."
    from snipnb.datasets import load_corpus
    train = load_corpus('synthetic', 'train', size='quick', progress=False)
    b = next(sequence_batches(train, batch_size=4, shuffle=False, device='cpu'))
    L = train.lengths[:4]
    assert len(set(L)) > 1 and b['x'].shape[2] == L.max()
    torch.manual_seed(0)
    lin = torch.nn.Linear(75, train.num_classes + 1)
    per_frame = lambda x: lin(x.permute(0, 2, 1, 3, 4).flatten(2))
    total, frames = 0., 0
    for i in range(4):
        s = train[i]
        x = torch.from_numpy(np.ascontiguousarray(s.joints.transpose(3, 0, 2, 1)))[None]
        total += torch.nn.functional.cross_entropy(per_frame(x)[0], torch.from_numpy(s.labels), ignore_index=-1, reduction='sum')
        frames += int((s.labels >= 0).sum())
    assert frame_loss(per_frame(b['x']), b['y']).item() == pytest.approx(total.item() / frames, rel=1e-5)
    # the official collate labels padding 1 and counts it: a different loss
    off = next(sequence_batches(train, batch_size=4, shuffle=False, device='cpu', padding_label=1))
    assert abs(frame_loss(per_frame(off['x']), off['y']).item() - total.item() / frames) > 1e-3
    assert (off['y'][~off['mask']] == 1).all() and (b['y'][~b['mask']] == -1).all()

def _spy(monkeypatch):
    seen = []
    real = E.predict_probs
    def spy(model, joints, *a, **k):
        seen.append(joints.name); return real(model, joints, *a, **k)
    monkeypatch.setattr(E, 'predict_probs', spy)
    return seen

def test_best_val_never_looks_at_test_videos(cache, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    m, tr, test = fit_localizer('synthetic', select='best_val', val_fraction=0.2, val_seed=3, epochs=2,
                                out_dir=tmp_path/'val', **QUICK)
    val = load_checkpoint_config(tmp_path/'val'/'last.pt')['val_videos']
    assert seen and set(seen) == set(val) and not set(seen) & set(test.names)
    assert len(seen) == 2 * len(val)                                              # one validation pass per epoch
    from snipnb.datasets import load_corpus
    from snipnb.synthetic import SYNTHETIC_SUBSETS
    train = load_corpus('synthetic', size='quick', progress=False).subset(SYNTHETIC_SUBSETS[1]).split('train')
    assert set(val) <= set(train.names) and set(val) == set(validation_split(train, 0.2, 3)[1].names)
    assert m.selection['select'] == 'best_val' and not m.selection['optimistic']
    assert m.selection['epoch'] == max(tr.history, key=lambda r: r['select_score'])['epoch']
    # the spy does see test videos when selection looks at them
    seen.clear()
    fit_localizer('synthetic', select='official', epochs=1, out_dir=tmp_path/'off', **QUICK)
    assert set(seen) == set(test.names)

def load_checkpoint_config(path):
    from snipnb.train import load_checkpoint
    return load_checkpoint(path)['model_config']

def test_official_selection_is_labelled_optimistic(cache, tmp_path):
    m, tr, test = fit_localizer('synthetic', select='official', decoding='official', epochs=2, out_dir=tmp_path/'off', **QUICK)
    assert m.selection['optimistic'] and m.selection['select'] == 'official' and 'optimistic' in m.selection['description']
    res = evaluate(m, test, decoding='official', device='cpu', progress=False)
    row = metric_table(res)
    assert res['selection']['optimistic'] and row['optimistic'] is True and row['selection'] == 'official'
    assert row['decoding'] == 'official' and row['selected_epoch'] == m.selection['epoch']
    assert row['mAP avg'] == pytest.approx(max(r['select_score'] for r in tr.history), abs=1e-4)   # max over test evaluations
    again = load_localizer(tmp_path/'off'/'best.pt')                                  # the label survives a reload
    assert again.selection['optimistic'] and again.selection['epoch'] == m.selection['epoch']
    final = metric_table(evaluate(load_localizer(tmp_path/'off'/'last.pt'), test, device='cpu', progress=False))
    assert final['optimistic'] is False and final['selection'] == 'final'

def test_selection_survives_resume(cache, tmp_path):
    m1, tr1, _ = fit_localizer('synthetic', select='best_val', epochs=1, out_dir=tmp_path/'r', **QUICK)
    m2, tr2, _ = fit_localizer('synthetic', select='best_val', epochs=2, out_dir=tmp_path/'r', resume=True, **QUICK)
    assert [r['epoch'] for r in tr2.history] == [1, 2] and all('select_score' in r for r in tr2.history)
    assert tr2.history[0]['select_score'] == tr1.history[0]['select_score']          # replayed, not re-scored
    from snipnb.train import load_checkpoint
    assert load_checkpoint(tmp_path/'r'/'best.pt')['epoch'] == m2.selection['epoch'] == tr2.best()['epoch']
    with pytest.raises(Exception, match='another model'):                             # a different selection cannot resume it
        fit_localizer('synthetic', select='official', epochs=3, out_dir=tmp_path/'r', resume=True, **QUICK)

def test_official_localizer_parameter_count():
    "SnipCLR model/agcn_Unet.py (num_class 4, num_person 1): `OFFICIAL_LOCALIZER_PARAMS`, of which an unused data_bn BatchNorm1d(50)."
    from snipnb.ufusion import official_localizer, OFFICIAL_LOCALIZER_PARAMS, OFFICIAL_BASELINE_PARAMS, OFFICIAL_UNUSED_DATA_BN
    assert OFFICIAL_UNUSED_DATA_BN == 2 * 50                                   # weight and bias of BatchNorm1d(50)
    ours = OFFICIAL_LOCALIZER_PARAMS - OFFICIAL_UNUSED_DATA_BN
    loc = official_localizer(num_classes=4)
    assert count_parameters(loc) == ours
    assert count_parameters(build_localizer('agcn', strides=(2, 5, 8), data_bn=None, num_persons=1, num_classes=4)) == ours
    assert count_parameters(official_localizer(ufusion=False)) == OFFICIAL_BASELINE_PARAMS - OFFICIAL_UNUSED_DATA_BN
    assert loc.backbone.data_bn is None and loc.taps == (1, 7, 10) and loc.backbone.strides == (2, 5, 8)
    assert loc(torch.randn(1, 3, 45, 25, 1)).shape == (1, 45, 5)


# --- bad input is refused (issue 12, section 4) ----------------------------------------------------------------------
def test_decoders_refuse_nan_frames():
    p = np.zeros((40, 3)); p[:, 0] = 1; p[5:15] = [0.2, 0.8, 0.0]
    p[7, 1] = np.nan
    for decode in (decode_paper, decode_argmax, P.decode_official):
        with pytest.raises(ValueError, match=r'frame 7 .*class column 1.* nan'): decode(p)
    p[7, 1] = 0.8; p[30, 0] = np.inf
    with pytest.raises(ValueError, match=r'frame 30 .*class column 0.* inf'): decode_paper(p)
    with pytest.raises(ValueError, match=r'\(T, K\+1\)'): decode_paper(np.zeros(10))

@pytest.mark.parametrize('option, why', [
    ({'label_fraction': 1.5}, r'label_fraction must be in \(0, 1\], got 1.5'),
    ({'label_fraction': float('nan')}, r'label_fraction must be in \(0, 1\], got nan'),
    ({'label_fraction': 0}, r'label_fraction must be in \(0, 1\], got 0'),
    ({'knn_k': 0}, r'knn_k must be a positive integer, got 0'),
    ({'batch_size': 0}, r'batch_size must be a positive integer, got 0'),
    ({'clip_len': 0}, r'clip_len must be a positive integer or None \(whole sequences\), got 0'),
    ({'clip_len': -5}, r'clip_len must be .*got -5'),
    ({'epochs': 0}, r'epochs must be a positive integer, got 0'),
    ({'epochs': 2.5}, r'epochs must be a positive integer, got 2.5'),
    ({'protocol': 'lineer'}, r"unknown protocol 'lineer'"),
    ({'protocol': 'finetune', 'checkpoint': None}, r"protocol 'finetune' needs a pretraining checkpoint"),
])
def test_fit_localizer_refuses_bad_options_before_loading(monkeypatch, tmp_path, option, why):
    def no_corpus(*a, **k): raise AssertionError('the corpus was loaded before the options were checked')
    monkeypatch.setattr(E, 'load_corpus', no_corpus)
    kw = {'protocol': 'scratch', 'device': 'cpu', 'progress': False, 'out_dir': tmp_path/'run', **option}
    with pytest.raises(ValueError, match=why): fit_localizer('synthetic', **kw)
    assert not (tmp_path/'run').exists()

def test_knn_k_must_be_positive():
    from snipnb.backbones import build_backbone
    with pytest.raises(ValueError, match='k must be a positive integer, got 0'): KNNLocalizer(build_backbone('stgcn16', **TINY), 4, k=0)

def test_clip_longer_than_every_recording_warns_with_the_padding_share(cache, tmp_path):
    import warnings
    from snipnb.datasets import load_corpus
    from snipnb.synthetic import SYNTHETIC_SUBSETS
    lengths = load_corpus('synthetic', size='quick', progress=False).subset(SYNTHETIC_SUBSETS[1]).split('train').lengths
    L = int(lengths.max()) + 100
    share = 1 - lengths.sum() / (len(lengths) * L)                   # one window per recording, zero-padded to L
    with warnings.catch_warnings():
        warnings.simplefilter('error')                                # the warning comes before training: stop there
        with pytest.raises(UserWarning, match=rf'clip_len {L} is longer than every training recording \(the longest has '
                                              rf'{lengths.max()} frames\): {share:.1%} of the clip frames are zero padding'):
            fit_localizer('synthetic', epochs=1, out_dir=tmp_path/'long', **{**QUICK, 'clip_len': L})
    with warnings.catch_warnings():                                   # a clip as long as the longest recording: no warning
        warnings.filterwarnings('error', message='.*longer than every training recording')
        fit_localizer('synthetic', epochs=1, out_dir=tmp_path/'fits', **{**QUICK, 'clip_len': int(lengths.max()), 'batch_size': 1})

class _Constant(torch.nn.Module):
    "Logits of one value for every frame and `width` classes (background included)."
    def __init__(self, width, value):
        super().__init__(); self.width, self.value = width, value
    def forward(self, x): return torch.full((x.shape[0], x.shape[2], self.width), self.value)

def test_evaluate_refuses_nan_probabilities_and_other_class_counts(cache):
    from snipnb.datasets import load_corpus
    test = load_corpus('synthetic', 'test', size='quick', progress=False)
    K = test.num_classes
    first = test[0].name
    with pytest.raises(ValueError, match=rf'synthetic, recording {first}: decode_paper: frame 0 \(class column 0\) is nan'):
        evaluate(_Constant(K + 1, float('nan')), test, window='whole', device='cpu', progress=False)
    with pytest.raises(ValueError, match=rf'{first}: the model scores {K + 1} action classes, but synthetic has {K}'):
        evaluate(_Constant(K + 2, 0.), test, window='whole', device='cpu', progress=False)
    row = metric_table(evaluate(_Constant(K + 1, 0.), test, window='whole', decoding='argmax', device='cpu', progress=False))
    assert row['mAP avg'] == 0 and 0 <= row['accuracy'] <= 1                     # uniform probabilities: background wins

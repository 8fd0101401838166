"""Localization protocols, sliding-window inference, decoding, and the pretrain -> localize papermill pipeline."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import run_tool
from snipnb.protocols import (predict_probs, localize, decode_paper, decode_argmax, nms, runs, build_protocol_model,
                              fit_localizer, evaluate, metric_table, FrozenBackbone, KNNLocalizer)
from snipnb.ufusion import build_localizer
from snipnb.datasets import window_starts
from snipnb.train import pretrain

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

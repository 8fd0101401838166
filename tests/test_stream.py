"""StreamingLocalizer: the offline segments from any chunking, and memory that does not grow with the stream."""
import numpy as np
import pytest
import torch
from torch import nn
from snipnb.datasets import load_corpus
from snipnb.protocols import localize
from snipnb.stream import StreamingLocalizer

class Toy(nn.Module):
    "A localizer stand-in whose probabilities vary along time (a temporal convolution over the joints)."
    def __init__(self, K):
        super().__init__(); torch.manual_seed(0); self.conv = nn.Conv1d(75, K + 1, 9, padding=4)
    def forward(self, x):
        N, C, T, V, M = x.shape
        return (self.conv(x.mean(-1).permute(0, 1, 3, 2).reshape(N, C * V, T)) * 40).transpose(1, 2)

@pytest.fixture(scope='module')
def test_split(tmp_path_factory):
    return load_corpus('synthetic', size='quick', cache_dir=tmp_path_factory.mktemp('cache'), progress=False).split('test')

def _stream(model, joints, chunk, **kw):
    s = StreamingLocalizer(model, **kw); out = []
    for a in range(0, len(joints), chunk): out += s.push(joints[a:a + chunk])
    return out + s.flush()

@pytest.mark.parametrize('decoding', ['paper', 'official', 'argmax'])
def test_stream_equals_offline_for_any_chunking(test_split, decoding):
    torch.set_num_threads(1)
    model, key = Toy(test_split.num_classes).eval(), lambda r: r[:3]
    total = 0
    for i in range(3):
        joints = test_split[i].joints
        offline = sorted(localize(model, joints, window=64, decoding=decoding, device='cpu'), key=key)
        for chunk in (1, 7, 64, len(joints)):
            got = sorted(_stream(model, joints, chunk, window=64, decoding=decoding, device='cpu', history=300), key=key)
            assert [r[:3] for r in got] == [r[:3] for r in offline], (i, chunk)
            np.testing.assert_allclose([r[3] for r in got], [r[3] for r in offline], atol=1e-5)
        total += len(offline)
    assert total > 20                                   # the toy model gives many segments: the test has teeth

def test_short_stream_and_a_stream_shorter_than_a_window(test_split):
    model = Toy(test_split.num_classes).eval()
    joints = test_split[0].joints[:40]                  # one padded window, as offline
    assert sorted(_stream(model, joints, 5, window=64, device='cpu')) == sorted(localize(model, joints, window=64, device='cpu'))
    s = StreamingLocalizer(model, window=64, device='cpu')
    assert s.flush() == [] and s.flush() == []
    with pytest.raises(RuntimeError, match='flushed'): s.push(joints)
    with pytest.raises(ValueError, match=r'\(n, M, V, C\)'): StreamingLocalizer(model, window=64).push(np.zeros((5, 3)))

def test_memory_stays_bounded_on_a_long_stream(test_split):
    "The test recordings back to back, three times, 30 frames a push: the second and third passes hold no more than the first."
    model = Toy(test_split.num_classes).eval()
    s, held = StreamingLocalizer(model, window=64, device='cpu', history=256), {0: [], 1: [], 2: []}
    for rep in held:
        for i in range(len(test_split)):
            j = test_split[i].joints
            for a in range(0, len(j), 30):
                s.push(j[a:a + 30])
                held[rep].append((0 if s.acc is None else len(s.acc), len(s.frames)))
    assert s.n > 10000
    first = max(h for h, _ in held[0])
    assert max(h for h, _ in held[1] + held[2]) <= first + 64 < s.n / 5   # held: history + window + the open actions, not the stream
    assert max(f for _, f in held[0] + held[1] + held[2]) <= 64 + 30        # raw frames: a window and a chunk

def test_live_notebook_under_papermill(repo, tmp_path):
    "The live notebook trains a small localizer, streams a test recording and writes the replay as standalone HTML."
    from conftest import run_tool
    env = {'SNIPNB_CACHE_DIR': str(tmp_path/'cache')}
    run_tool('papermill', str(repo/'nbs'/'live.ipynb'), str(tmp_path/'live.ipynb'), '-p', 'epochs', '1', '-p', 'max_steps', '2',
             '-p', 'device', 'cpu', '-p', 'out_dir', str(tmp_path/'out'), cwd=tmp_path, env=env)
    html = (tmp_path/'out'/'stream.html').read_text()
    assert 'Plotly.addFrames' in html and 'frames received' in html        # the replay's frames and slider

def test_segments_come_out_during_the_stream_within_the_stated_latency(test_split):
    "Pushed frame by frame, segments leave before the flush, each within max_latency of its run's end; a one-window stream too."
    from snipnb.protocols import predict_probs, runs
    model = Toy(test_split.num_classes).eval()
    joints = test_split[3].joints
    P = predict_probs(model, joints, 64, device='cpu')
    s, early = StreamingLocalizer(model, window=64, device='cpu'), 0
    thr = min(s._decode_options()['thresholds'])
    for t in range(len(joints)):
        for l, a, b, sc in s.push(joints[t]):
            e, L = next((e, e - r) for r, e in runs(P[:, l] > thr) if r <= a and b <= e)
            assert t + 1 - e <= s.max_latency(L); early += 1
    assert early > 0.8 * (early + len(s.flush()))
    one = joints[:64]                                                        # exactly one window: no end window to add
    assert sorted(_stream(model, one, 10, window=64, device='cpu')) == sorted(localize(model, one, window=64, device='cpu'))
    with pytest.raises(ValueError, match='history'): StreamingLocalizer(model, window=64, history=-1)

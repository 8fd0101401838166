"""Visualisation: skeleton player, boundary timeline, plots, export, the explorer's callbacks, explore.ipynb."""
import json, os, subprocess, sys, warnings
import numpy as np
import pytest
import plotly.graph_objects as go
from snipnb.skeleton import NTU25, Sequence
from snipnb.synthetic import synthetic_recording
from snipnb.skeleton import smpl_layout
from snipnb import viz
from snipnb.viz import (skeleton_figure, timeline_figure, boundary_errors, set_cursor, loss_curves, read_history, ap_bars,
                        embedding_figure, save_html, save_png, save_figures, Explorer, view_ranges, orient, bone_parts,
                        handedness)

@pytest.fixture(scope='module')
def seq(): return synthetic_recording(3, subject=1)

def coords(trace): return np.array([[np.nan if v is None else v for v in trace[k]] for k in ('x', 'y', 'z') if trace[k] is not None])

# ---- skeleton player ----------------------------------------------------------------------------------------------

def test_player_frames_traces_and_equal_axes(seq):
    fig = skeleton_figure(seq, max_frames=50, follow=False)
    idx = fig.layout.meta['frames']
    assert len(fig.frames) == len(idx) <= 50 and idx[0] == 0 and np.all(np.diff(idx) == idx[1])
    assert len(fig.data) == len(bone_parts(NTU25)) + 1
    r = [fig.layout.scene[a].range for a in ('xaxis', 'yaxis', 'zaxis')]
    assert np.allclose([b - a for a, b in r], r[0][1] - r[0][0]) and fig.layout.scene.aspectmode == 'cube'
    # the joints of a frame are the oriented input joints (lost joints hidden)
    f = idx[3]
    P = orient(seq.joints, NTU25)[f, 0]
    got = coords(fig.frames[3].data[-1]).T
    lost = np.abs(seq.joints[f, 0]).sum(-1) == 0
    np.testing.assert_allclose(got[~lost], P[~lost], atol=1e-4)
    assert np.isnan(got[lost]).all()
    # every bone drawn once, as a (start, end, gap) triple
    n_points = sum(len(t['x']) for t in fig.frames[3].data[:-1])
    assert n_points == 3 * len(NTU25.bones)
    slider = fig.layout.sliders[0]
    assert [s.args[0][0] for s in slider.steps] == [str(i) for i in idx]
    assert {b.label for b in fig.layout.updatemenus[0].buttons} == {'▶ play', '❚❚ pause'}

def test_player_follows_a_walking_person(seq):
    fig = skeleton_figure(seq, max_frames=30)
    assert fig.layout.meta['follow']                     # the subject walks several metres
    P, mask = orient(seq.joints, NTU25), np.abs(seq.joints).sum((2, 3)) > 0
    rng, followed = view_ranges(P, mask)
    assert followed
    half = (rng[:, :, 1] - rng[:, :, 0]) / 2
    assert np.allclose(half, half[0, 0])                  # same cube size all along: equal scale
    for f in fig.layout.meta['frames']:
        valid = np.abs(P[f, 0]).sum(-1) > 0
        if valid.sum() > 20:                               # the body stays inside the moving view
            assert ((P[f, 0][valid] >= rng[f, :, 0] - 1e-6) & (P[f, 0][valid] <= rng[f, :, 1] + 1e-6)).mean() > 0.95
    assert fig.frames[5].layout.scene.xaxis.range is not None

def test_player_persons_values_and_errors(seq):
    two = np.stack([seq.joints[:60, 0], seq.joints[:60, 0] + np.array([0.8, 0, 0], np.float32)], 1)
    two[:10, 1] = 0
    vals = np.random.default_rng(0).random((60, 2, 25))
    fig = skeleton_figure(two, values=vals, value_name='importance', max_frames=60)
    K = len(bone_parts(NTU25)) + 1
    assert len(fig.data) == 2 * K
    assert all(v is None for v in fig.frames[0].data[2 * K - 1]['x'])          # person 2 absent at frame 0
    assert any(v is not None for v in fig.frames[20].data[2 * K - 1]['x'])
    np.testing.assert_allclose(fig.frames[20].data[K - 1].marker.color, vals[20, 0], atol=1e-4)
    np.testing.assert_allclose(fig.frames[20].data[K - 1].customdata, vals[20, 0], atol=1e-4)   # hover values follow
    assert fig.data[K - 1].marker.showscale and fig.data[K - 1].marker.colorbar.title.text == 'importance'
    with pytest.raises(ValueError, match='values must be'): skeleton_figure(two, values=np.zeros(7))
    with pytest.raises(ValueError, match='unknown camera'): skeleton_figure(two, camera='fisheye')
    with pytest.raises(ValueError, match='frame 99 outside'): skeleton_figure(two, frame=99)

def test_player_other_layouts():
    rng = np.random.default_rng(0)
    coco = Sequence(rng.normal(size=(12, 2, 17, 2)).astype(np.float32), layout='coco17', name='coco')
    fig = skeleton_figure(coco)
    assert isinstance(fig.data[0], go.Scatter) and fig.layout.yaxis.scaleanchor == 'x' and fig.layout.meta['layout'] == 'coco17'
    smpl = rng.normal(size=(8, 1, 24, 3)).astype(np.float32)
    fig = skeleton_figure(smpl)                                   # layout found from the joint count
    assert fig.layout.meta['layout'] == 'smpl24' and len(fig.data) == len(bone_parts(smpl_layout(24))) + 1

def test_player_is_upright_for_y_up_and_z_up_data(seq):
    head, foot = NTU25.joint('head'), NTU25.joint('foot_left')
    on = np.abs(seq.joints[:, 0]).sum((1, 2)) > 0
    for j in (seq.joints, seq.joints[..., [0, 2, 1]], -seq.joints):      # y up, z up, upside down
        P = orient(j, NTU25)
        ok = (np.abs(j[:, 0, head]).sum(-1) > 0) & (np.abs(j[:, 0, foot]).sum(-1) > 0) & on
        assert (P[ok, 0, head, -1] > P[ok, 0, foot, -1]).all()
        assert handedness(P) == handedness(j) != 0                         # rotated, never mirrored

# ---- timeline ----------------------------------------------------------------------------------------------------

def test_boundary_errors_by_hand():
    be = boundary_errors([(1, 10, 50), (2, 60, 90), (1, 100, 120)],
                         [(1, 12, 48, .9), (2, 70, 95, .8), (3, 0, 5, .5), (1, 40, 52, .3)])
    assert [(m['label'], m['true'], m['predicted'], m['start_error'], m['end_error']) for m in be['matched']] == \
           [(1, (10, 50), (12, 48), 2, -2), (2, (60, 90), (70, 95), 10, 5)]
    assert be['matched'][0]['iou'] == 0.9
    assert be['missed'] == [{'label': 1, 'true': (100, 120)}]
    assert sorted(f['predicted'] for f in be['false_alarms']) == [(0, 5), (40, 52)]
    same = boundary_errors(np.array([0, 1, 1, 0, 2, 2, 2]), np.array([0, 1, 1, 0, 2, 2, 2]))
    assert [(m['start_error'], m['end_error']) for m in same['matched']] == [(0, 0), (0, 0)] and not same['missed']

def test_timeline_lanes_heatmap_marks_and_cursor(seq):
    T, K = seq.num_frames, 13
    probs = np.random.default_rng(0).dirichlet(np.ones(K + 1), T).astype(np.float32)
    pred = [(l, s + 8, e, 0.9) for l, s, e in seq.segments]                 # every start 8 frames late
    fig = timeline_figure(seq.labels, pred, probs, seq.class_names, fps=seq.fps, frame=33, tolerance=5)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert sum(t.name == 'ground truth' for t in bars) == len(seq.segments) == sum(t.name == 'predicted' for t in bars)
    heat = next(t for t in fig.data if isinstance(t, go.Heatmap))
    assert np.asarray(heat.z).shape == (K + 1, T) and heat.zmin == 0 and heat.zmax == 1
    np.testing.assert_allclose(np.asarray(heat.z), probs.T, atol=1e-4)
    assert list(heat.y) == list(seq.class_names) and fig.layout.yaxis2.autorange == 'reversed'   # lanes' order: low labels up
    marks = next(t for t in fig.data if t.name and t.name.startswith('boundary error'))
    red = [c == '#d62728' for c in marks.marker.color]
    assert sum(red) == len(seq.segments) and len(red) == 2 * len(seq.segments)   # starts red (8 > 5), ends green
    assert all('+8 frames' in h for h, r in zip(marks.text, red) if r)
    assert [s.x0 for s in fig.layout.shapes if s.name == 'cursor'] == [33]
    set_cursor(fig, 120)
    assert [s.x0 for s in fig.layout.shapes if s.name == 'cursor'] == [120]
    shown = {l for l, *_ in seq.segments}
    assert list(fig.layout.yaxis.ticktext) == [seq.class_names[l] for l in sorted(shown)]
    with pytest.raises(ValueError, match='class_names has 2 names'): timeline_figure([(5, 0, 3)], class_names=['bg', 'a'])
    with pytest.raises(ValueError, match='label 20 in the segments'): timeline_figure([(20, 0, 3)], probs=probs)

def test_linked_figure_moves_skeleton_and_cursor_together(seq):
    probs = np.random.default_rng(0).dirichlet(np.ones(14), seq.num_frames).astype(np.float32)
    fig = viz.linked_figure(seq, [(l, s, e, .9) for l, s, e in seq.segments], probs, max_frames=30, frame=120)
    n, idx = fig.layout.meta['player_traces'], fig.layout.meta['frames']
    assert n == len(bone_parts(NTU25)) + 1 and len(fig.frames) == len(idx)
    alone = skeleton_figure(seq, max_frames=30)
    for fr, ref in zip(fig.frames, alone.frames):
        assert fr.traces == tuple(range(n)) and [s.x0 for s in fr.layout.shapes] == [int(fr.name)]
        assert fr.data[n - 1].x == ref.data[n - 1].x                   # the same skeleton as the player alone
    assert fig.layout.shapes[0].x0 == 120 and any(isinstance(t, go.Heatmap) for t in fig.data)
    with pytest.raises(ValueError, match='3-D skeletons'):
        viz.linked_figure(Sequence(np.ones((5, 1, 17, 2), np.float32), layout='coco17'))

# ---- plots -------------------------------------------------------------------------------------------------------

def test_loss_curves_from_a_training_log(tmp_path):
    rows = [{'epoch': e, 'loss': 1 / e, 'snippet': 0.5 / e, 'lr': 0.1, 'seconds': 2.0, 'clips_per_s': 9.0} for e in (1, 2, 3)]
    (tmp_path/'metrics.jsonl').write_text('\n'.join(map(json.dumps, rows)) + '\n')
    fig = loss_curves(tmp_path)
    assert [t.name for t in fig.data] == ['loss', 'snippet', 'lr']
    assert list(fig.data[0].y) == [1.0, 0.5, 1 / 3] and fig.data[2].yaxis == 'y2'
    (tmp_path/'metrics.jsonl').write_text(json.dumps(rows[0]) + '\n{"epoch": 2, "loss"\n')
    with pytest.raises(ValueError, match=r'metrics.jsonl, line 2: not JSON'): read_history(tmp_path)
    with pytest.raises(FileNotFoundError, match='no training log'): loss_curves(tmp_path/'nowhere')

def test_ap_bars_match_detection_ap():
    from snipnb.metrics import detection_ap
    rng = np.random.default_rng(1)
    gts = [(f'v{v}', int(rng.integers(1, 4)), s, s + 20) for v in range(5) for s in (0, 40, 80)]
    prs = [(v, l if rng.random() < .7 else 3, s + int(rng.integers(-6, 7)), e + int(rng.integers(-6, 7)), float(rng.random()))
           for v, l, s, e in gts]
    fig = ap_bars(prs, gts, ['bg', 'a', 'b', 'c'], tious=(0.1, 0.5))
    ap, classes = detection_ap(prs, gts, (0.1, 0.5))
    keep = ~np.isnan(ap[0])
    np.testing.assert_allclose(fig.data[0].y, ap[0, keep]); np.testing.assert_allclose(fig.data[1].y, ap[1, keep])
    assert list(fig.data[0].x) == [['bg', 'a', 'b', 'c'][c] for c in classes[keep]]

def test_embedding_figure_pca_and_tsne():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 16)) + 8 * i for i in range(3)]).astype(np.float32)
    actions = np.repeat([1, 2, 3], 40)
    snippets = np.arange(120) // 10
    fig = embedding_figure(X, snippets, actions, ['bg', 'a', 'b', 'c'], method='pca')
    assert fig.layout.meta['points'] == 120 and len(fig.data) == 1 + 3
    xs = [np.mean(t.x) for t in fig.data[1:]]
    assert np.ptp(xs) > 5                                          # the three clusters apart on the first component
    small = embedding_figure(X, None, actions, method='tsne', max_points=60, perplexity=10, iters=250)
    assert small.layout.meta == {'snipnb': 'embedding', 'method': 'tsne', 'points': 60}
    with pytest.raises(ValueError, match='unknown method'): embedding_figure(X, method='umap')

# ---- export ------------------------------------------------------------------------------------------------------

def test_save_html_standalone_and_atomic(tmp_path, seq, monkeypatch):
    fig = skeleton_figure(seq, max_frames=10)
    p = save_html(fig, tmp_path/'a'/'player.html')
    html = p.read_text()
    assert 'Plotly.newPlot' in html and '<script src="http' not in html and len(html) > 1_000_000
    q = save_html(fig, tmp_path/'b'/'player.html', plotlyjs='directory')
    assert (tmp_path/'b'/'plotly.min.js').stat().st_size > 1_000_000 and q.stat().st_size < p.stat().st_size / 2
    import snipnb.fileio                                              # where write_atomic lives
    def full(*a): raise OSError('disk full')                          # the write fails after the temporary file exists
    monkeypatch.setattr(snipnb.fileio.os, 'replace', full)
    with pytest.raises(OSError, match='disk full'): save_html(fig, tmp_path/'c'/'x.html')
    monkeypatch.undo()
    assert list((tmp_path/'c').iterdir()) == []                     # nothing half-written left behind
    with pytest.raises(ValueError, match='plotlyjs'): save_html(fig, tmp_path/'x.html', plotlyjs='cdn')

def test_save_png_reports_kaleidos_error_and_leaves_the_environment(tmp_path, monkeypatch):
    pytest.importorskip('kaleido')
    def no_chrome(*a, **k): raise RuntimeError("Kaleido requires Google Chrome to be installed.")
    monkeypatch.setattr(viz.pio, 'to_image', no_chrome)
    env = dict(os.environ)
    with pytest.warns(UserWarning, match=r'PNG export of .*x.png failed: RuntimeError: Kaleido requires Google Chrome'):
        assert save_png(go.Figure(go.Scatter(x=[1, 2], y=[1, 2])), tmp_path/'x.png') is None
    assert not (tmp_path/'x.png').exists() and dict(os.environ) == env
    monkeypatch.setattr(viz.pio, 'to_image', lambda *a, **k: b'\x89PNG fake')
    assert save_png(go.Figure(), tmp_path/'y.png').read_bytes() == b'\x89PNG fake'
    assert dict(os.environ) == env                    # BROWSER_PATH is kaleido's to read, not ours to set

def test_save_png_without_kaleido_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'kaleido', None)
    with pytest.warns(UserWarning, match=r"skipped: kaleido is not installed \(pip install 'snipnb\[lab\]'\)"):
        assert save_png(go.Figure(), tmp_path/'x.png') is None

@pytest.mark.browser
def test_save_png_with_chromium(tmp_path, seq):
    pytest.importorskip('kaleido')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = save_figures({'timeline': timeline_figure(seq.labels, class_names=seq.class_names)}, tmp_path, png=True)
    if len(out['timeline']) == 1: pytest.skip(f"kaleido found no working Chrome/Chromium: {caught[-1].message}")
    png = out['timeline'][1]
    assert png.suffix == '.png' and png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000

# ---- explorer ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from snipnb.experiments import fit_localizer
    out = tmp_path_factory.mktemp('loc')
    fit_localizer('synthetic', protocol='scratch', corpus_options={'size': 'quick'}, epochs=1, clip_len=64, batch_size=8,
                  warmup_epochs=0, max_steps=2, device='cpu', out_dir=out, progress=False)
    return out/'last.pt'

@pytest.fixture(scope='module')
def subset_checkpoint(tmp_path_factory):
    "A localizer of the 4-class subset 1: its classes are not those of the whole synthetic corpus."
    from snipnb.experiments import fit_localizer
    out = tmp_path_factory.mktemp('loc4')
    fit_localizer('synthetic', protocol='scratch', subset=1, corpus_options={'size': 'quick'}, epochs=1, clip_len=64,
                  batch_size=8, warmup_epochs=0, max_steps=1, device='cpu', out_dir=out, progress=False)
    return out/'last.pt'

def test_explorer_callbacks(checkpoint, subset_checkpoint):
    ex = Explorer({'synthetic': {'size': 'quick'}}, checkpoints=[checkpoint, subset_checkpoint], device='cpu')
    assert ex.checkpoint.value == str(checkpoint) and ex.split.value == 'test'
    assert ex.probs is not None and ex.probs.shape == (ex.seq.num_frames, 14)
    heat = [t for t in ex.timeline.data if isinstance(t, go.Heatmap)]
    assert len(heat) == 1 and np.asarray(heat[0].z).shape == (14, ex.seq.num_frames)
    assert sum(t.name == 'predicted' for t in ex.timeline.data) == len(ex.predictions)
    # scrub: the skeleton's joints become those of the new frame, the timeline's cursor follows
    ex.frame.value = 77
    P = orient(ex.seq.joints, NTU25)[77, 0]
    got = coords(ex.player.data[len(bone_parts(NTU25))]).T
    ok = ~np.isnan(got).any(1)
    np.testing.assert_allclose(got[ok], P[ok], atol=1e-4)
    assert [s.x0 for s in ex.timeline.layout.shapes if s.name == 'cursor'] == [77]
    assert 'frame 77' in ex.player.layout.title.text
    # the play widget drives the slider
    ex.play.value = 90
    assert ex.frame.value == 90
    # camera preset
    ex.camera.value = 'top'
    assert ex.player.layout.scene.camera.eye.z == viz.CAMERAS['top']['eye']['z']
    # another recording: new joints and timeline, frame back to 0
    first = ex.seq.name
    ex.recording.value = ex.recording.options[2]
    assert ex.seq.name == ex.recording.options[2] != first and ex.frame.value == 0
    assert ex.frame.max == ex.seq.num_frames - 1 and ex.timeline.layout.title.text == ex.seq.name
    # a checkpoint of other classes: refused with a clear message, nothing predicted
    with pytest.raises(ValueError, match='predicts 4 classes .* but synthetic has 13'):
        ex.checkpoint.value = str(subset_checkpoint)
    assert ex.probs is None and ex.predictions is None and 'choose a checkpoint' in ex.status.value
    assert not any(isinstance(t, go.Heatmap) for t in ex.timeline.data)
    # no checkpoint: only the truth
    ex.checkpoint.value = ''
    assert ex.probs is None and not any(isinstance(t, go.Heatmap) for t in ex.timeline.data)
    # another split
    calls = []
    on_recording = ex._on_recording
    ex._on_recording = lambda change: (calls.append(change), on_recording(change))
    ex.split.value = 'train'
    assert list(ex.recording.options) == ex.corpus().split('train').names and ex.seq.name == ex.recording.options[0]
    assert len(calls) == 1                                        # one redraw per change, not one per widget touched
    figs = ex.figures()
    assert set(figs) == {'player', 'timeline'} and len(figs['player'].frames) > 1

# ---- explore.ipynb -----------------------------------------------------------------------------------------------

def _explore(repo, tmp_path, *params):
    from conftest import run_tool
    out = tmp_path/'figs'
    args = [str(repo/'nbs'/'explore.ipynb'), str(tmp_path/'out.ipynb'), '--cwd', str(tmp_path), '-p', 'out_dir', str(out)]
    for k, v in zip(params[::2], params[1::2]): args += ['-p', k, str(v)]
    run_tool('papermill', *args, cwd=tmp_path, env={'SNIPNB_CACHE_DIR': str(tmp_path/'cache')})
    names = sorted(p.name for p in out.iterdir())
    nb = json.loads((tmp_path/'out.ipynb').read_text())
    kinds = [k for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []) for k in o.get('data', {})]
    assert kinds.count('application/vnd.plotly.v1+json') >= 3      # the static figures are in the executed notebook
    for p in out.glob('*.html'):
        assert 'Plotly.newPlot' in p.read_text()[-2_000_000:]
    return out, names

def test_explore_notebook_on_synthetic_with_a_checkpoint(repo, tmp_path, checkpoint):
    out, names = _explore(repo, tmp_path, 'dataset', 'synthetic', 'checkpoint', checkpoint, 'recording', '1')
    assert names == ['features.html', 'linked.html', 'player.html', 'timeline.html']
    nb = json.loads((tmp_path/'out.ipynb').read_text())
    text = ''.join(''.join(o.get('text', '')) for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', []))
    assert 'matched' in text and 'false alarms' in text

@pytest.mark.realdata
@pytest.mark.parametrize('dataset,folder', [('ntu60', 'ntu_rgbd'), ('pkummd', 'pku_mmd')])
def test_explore_notebook_on_real_samples(repo, tmp_path, shared_data, dataset, folder):
    out, names = _explore(repo, tmp_path, 'dataset', dataset, 'root', shared_data/folder)
    assert names == ['features.html', 'linked.html', 'player.html', 'timeline.html']
    assert '"persons":2' in (out/'player.html').read_text()[-3_000_000:]

# ---- packaging: the library without the lab extras ----------------------------------------------------------------

LAB_ONLY = ('jupyterlab', 'notebook', 'nbdev', 'papermill', 'ipykernel', 'IPython', 'ipywidgets', 'anywidget', 'kaleido',
            'sklearn', 'openpyxl', 'selenium', 'hypothesis', 'pytest')

def test_every_module_imports_without_the_extras():
    "`import snipnb` (and each module) needs only the core dependencies: the [lab], [tsne] and [dev] extras stay optional."
    code = f"""
import importlib, pkgutil, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {LAB_ONLY!r}: raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NotInstalled())
import snipnb
for m in pkgutil.iter_modules(snipnb.__path__): importlib.import_module('snipnb.' + m.name)
print(sorted(n for n in sys.modules if n.split('.')[0] in {LAB_ONLY!r}))
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == '[]'

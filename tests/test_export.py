"""Exported localizers (ONNX, torch.export) and snipnb-localize: round trips, loading without snipnb, the real PKU-MMD sample."""
import json, os, subprocess, sys
import numpy as np
import pytest
import torch
from conftest import run_tool

pytest.importorskip('onnx'); pytest.importorskip('onnxruntime')
from snipnb.formats import PKUMMD_CLASSES, write_ntu_skeleton
from snipnb.protocols import build_protocol_model, predict_probs, load_localizer
from snipnb.train import save_checkpoint
from snipnb.export import export_localizer, ExportedLocalizer, read_metadata

NARROW = dict(channels=(8, 8, 8, 8, 16, 16, 16, 32, 32, 32))

def _model(num_classes, persons, clip_len=64, names=None):
    torch.manual_seed(0)
    m = build_protocol_model('scratch', num_classes, None, 'stgcn16', True, 0, in_channels=3, num_persons=persons, **NARROW).eval()
    m.clip_len, m.class_names = clip_len, tuple(names or ['background'] + [f'c{k}' for k in range(1, num_classes + 1)])
    return m

def _checkpoint(model, path):
    "A localizer checkpoint as fit_localizer writes it (the fields load_localizer reads)."
    save_checkpoint(path, {'model': model.state_dict(), 'epoch': 1, 'model_config': {**model.config, 'protocol': 'scratch',
                    'num_classes': len(model.class_names) - 1, 'clip_len': model.clip_len, 'class_names': list(model.class_names)}})
    return path

@pytest.mark.parametrize('suffix', ['.onnx', '.pt2'])
def test_round_trip_within_1e4_on_several_lengths(tmp_path, suffix):
    m = _model(5, 1)
    ex = ExportedLocalizer(export_localizer(m, tmp_path/f'm{suffix}'))
    rng = np.random.default_rng(0)
    for T in (20, 64, 97, 301, 1000):                          # shorter than a window, one, several, many
        j = rng.normal(size=(T, 1, 25, 3)).astype(np.float32)
        np.testing.assert_allclose(predict_probs(ex, j, 64, device='cpu'), predict_probs(m, j, 64, device='cpu'), atol=1e-4)
        x = torch.as_tensor(j).permute(3, 0, 2, 1)[None]          # the whole recording in one pass: the time axis is dynamic
        with torch.no_grad(): np.testing.assert_allclose(ex(x).numpy(), m(x).numpy(), atol=1e-4)
    assert read_metadata(tmp_path/f'm{suffix}')['class_names'] == list(m.class_names)

def test_onnx_loads_without_snipnb(tmp_path):
    "A fresh interpreter that cannot import snipnb reads the metadata and gets the same logits from onnxruntime."
    m = _model(5, 1)
    path = export_localizer(m, tmp_path/'m.onnx')
    x = torch.randn(3, 3, 80, 25, 1)
    np.save(tmp_path/'x.npy', x.numpy()); np.save(tmp_path/'ref.npy', m(x).detach().numpy())
    code = f"""
import sys, json
sys.path = [p for p in sys.path if p and p != {os.getcwd()!r} and 'snipnb' not in p]
sys.meta_path = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower() and 'snipnb' not in repr(f)]
try:
    import snipnb; raise SystemExit('snipnb is importable')
except ImportError: pass
import numpy as np, onnx, onnxruntime as ort
meta = json.loads({{p.key: p.value for p in onnx.load({str(path)!r}).metadata_props}}['snipnb'])
out = ort.InferenceSession({str(path)!r}).run(['logits'], {{'x': np.load({str(tmp_path/'x.npy')!r})}})[0]
assert meta['window'] == 64 and meta['class_names'][0] == 'background' and meta['num_persons'] == 1
print(float(np.abs(out - np.load({str(tmp_path/'ref.npy')!r})).max()))
"""
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) < 1e-4

def test_localize_command_on_the_real_pkummd_sample(shared_data, tmp_path, repo):
    "snipnb-localize with an export and with a checkpoint: the three outputs; corrupt and foreign files named, the rest still done."
    m = _model(len(PKUMMD_CLASSES), 2, 100, ('background', *PKUMMD_CLASSES))
    skel = shared_data/'pku_mmd/Data/Skeleton/PKU_Skeleton_Renew/0016-M.txt'
    bad = tmp_path/'in'/'0099-L.txt'; bad.parent.mkdir()
    bad.write_text(' '.join(['0.1'] * 150) + '\n' + ' '.join(['0.1'] * 149) + ' x\n')
    coco = shared_data/'pyskl'/'example_UCF101_skeleton.pkl'               # 2-D COCO-17 keypoints: not what the model takes
    for model, decoding in ((export_localizer(m, tmp_path/'m.onnx'), 'argmax'), (_checkpoint(m, tmp_path/'last.pt'), 'argmax'),
                            (tmp_path/'m.onnx', 'paper')):                  # untrained: below the paper thresholds, no segment
        out = tmp_path/f'out-{model.suffix[1:]}-{decoding}'
        res = run_tool('snipnb-localize', str(model), str(skel), str(bad.parent), str(coco), '--out', str(out), '--no-progress',
                       '--decoding', decoding, cwd=tmp_path, check=False)
        assert res.returncode == 1 and '0099-L.txt' in res.stderr and 'example_UCF101_skeleton.pkl' in res.stderr, res.stderr[-2000:]
        seg = json.loads((out/'segments.json').read_text())
        assert sorted(seg['failed']) == sorted([str(bad), str(coco)]) and '17 joints' in seg['failed'][str(coco)]
        assert (out/'segments.csv').read_text().splitlines()[0] == 'file,recording,label,class,start,end,score'
        rows = (out/'pkummd'/'0016-M.txt').read_text().splitlines()           # a proposal file even with no segment
        assert len(rows) == len(seg['segments']) and all(len(r.split(',')) == 4 for r in rows)
        assert all(s['recording'] == '0016-M' and 0 <= s['start'] < s['end'] <= 1318 for s in seg['segments'])
        assert bool(seg['segments']) == (decoding == 'argmax')

def test_export_refuses_a_knn_probe_and_unknown_formats(tmp_path):
    from snipnb.protocols import KNNLocalizer
    from snipnb.backbones import build_backbone
    knn = KNNLocalizer(build_backbone('stgcn16', num_persons=1, **NARROW), 4); knn.clip_len = 64
    with pytest.raises(ValueError, match='kNN probe'): export_localizer(knn, tmp_path/'k.onnx')
    with pytest.raises(ValueError, match="format='onnx' or 'torch'"): export_localizer(_model(4, 1), tmp_path/'k.bin')

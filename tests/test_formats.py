"""Readers of the real formats (on the samples in shared/data), corrupt input, and write/read round trips."""
import json, pickle, sys, types
from pathlib import Path
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from snipnb.skeleton import Sequence, labels_to_segments
from snipnb.formats import (FormatError, MissingBodyModel, NTU60_CLASSES, NTU120_CLASSES, PKUMMD_CLASSES, BABEL_CLASSES,
                            BABEL_SUBSETS, read_ntu_skeleton, read_ntu_missing, read_ntu_npy, read_stgcn, read_pkummd,
                            read_pkummd_labels, read_pkummd_split, read_babel, read_babel_classes,
                            babel_frame_labels, babel_sequence, babel_keep, read_amass_joints, read_pyskl, read_skeleton,
                            write_ntu_skeleton, write_pkummd)

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

def naive_ntu(path):
    "An independent, simple parser: per frame, the list of (bodyID, (25, 3) xyz)."
    lines = Path(path).read_text().splitlines()
    i, frames = 1, []
    for _ in range(int(lines[0])):
        nb = int(lines[i]); i += 1; bodies = []
        for _ in range(nb):
            bid = lines[i].split()[0]; nj = int(lines[i + 1]); i += 2
            bodies.append((bid, np.array([[float(v) for v in lines[i + k].split()[:3]] for k in range(nj)])))
            i += nj
        frames.append(bodies)
    return frames

# ---------------------------------------------------------------- NTU RGB+D, real samples
def test_ntu_raw_lf_one_body(shared_data):
    path = shared_data/'ntu_rgbd/raw_skeleton/S001C001P001R001A001.skeleton'
    assert b'\r\n' not in path.read_bytes()
    s = read_ntu_skeleton(path)
    assert s.joints.shape == (103, 2, 25, 3) and s.joints.dtype == np.float32
    assert s.num_frames == 103 and s.fps == 30
    assert (s.meta['nbodys'] == 1).all() and not s.joints[:, 1].any()
    assert (s.labels == 1).all() and s.segments == [(1, 0, 103)] and s.class_names[1] == 'drink water'
    assert len(s.class_names) == 61 and s.name == 'S001C001P001R001A001'
    assert (s.meta['setup'], s.meta['camera'], s.meta['performer'], s.meta['replication'], s.meta['action']) == (1, 1, 1, 1, 1)
    np.testing.assert_array_equal(s.joints[0, 0, 0], np.float32([0.2181153, 0.1725972, 3.785547]))   # line 5, read by eye
    ref = naive_ntu(path)
    np.testing.assert_array_equal(s.joints[:, 0], np.stack([f[0][1] for f in ref]).astype(np.float32))

def test_ntu_raw_crlf_two_bodies(shared_data):
    path = shared_data/'ntu_rgbd/raw_skeleton/S001C003P008R002A058.skeleton'
    assert b'\r\n' in path.read_bytes()
    s = read_ntu_skeleton(path)
    assert s.joints.shape == (70, 2, 25, 3) and (s.meta['nbodys'] == 2).all()
    assert (s.labels == 58).all() and s.class_names[58] == 'handshaking' and s.meta['camera'] == 3
    ref = naive_ntu(path)
    ids = [b[0] for b in ref[0]]
    assert s.meta['body_ids'] == ids               # both bodies kept, in order of first appearance
    for t in (0, 35, 69):
        for m, (bid, xyz) in enumerate(ref[t]):
            np.testing.assert_array_equal(s.joints[t, ids.index(bid)], xyz.astype(np.float32))
    assert read_ntu_skeleton(path, max_bodies=1).joints.shape == (70, 1, 25, 3)
    assert read_ntu_skeleton(path, num_classes=120).class_names[-1].startswith('finger-guessing')

def test_ntu_txt2npy_equals_raw(shared_data):
    d = np.load(shared_data/'ntu_rgbd/preprocessed/S001C001P001R001A001.skeleton.npy', allow_pickle=True).item()
    raw = read_ntu_skeleton(shared_data/'ntu_rgbd/raw_skeleton/S001C001P001R001A001.skeleton')
    assert d['skel_body0'].shape == (103, 25, 3) and len(d['nbodys']) == 103
    np.testing.assert_array_equal(raw.joints[:, 0], d['skel_body0'].astype(np.float32))
    n = read_ntu_npy(shared_data/'ntu_rgbd/preprocessed/S001C001P001R001A001.skeleton.npy')
    np.testing.assert_array_equal(n.joints, raw.joints)
    assert n.name == raw.name and (n.labels == 1).all() and (n.meta['nbodys'] == 1).all()

def test_ntu_missing_lists(shared_data):
    m60 = read_ntu_missing(shared_data/'ntu_rgbd/NTU_RGBD_samples_with_missing_skeletons.txt')
    m120 = read_ntu_missing(shared_data/'ntu_rgbd/NTU_RGBD120_samples_with_missing_skeletons.txt')
    assert len(m60) == 302 and len(m120) == 535 and 'S001C002P005R002A008' in m60 and m60 <= m120

def test_ntu_class_lists(shared_data):
    assert NTU60_CLASSES == tuple((shared_data/'ntu_rgbd/label_map_ntu60.txt').read_text(encoding='utf-8').splitlines())
    lines = (shared_data/'ntu_rgbd/label_map_ntu120.txt').read_text(encoding='utf-8').splitlines()
    assert NTU120_CLASSES == tuple(l.rstrip('.') for l in lines)

def test_stgcn_single_sample(shared_data):
    path = shared_data/'ntu_rgbd/preprocessed/example_NTU-RGB-D_sketeton.npy'
    arr = np.load(path)
    assert arr.shape == (3, 300, 25, 2) and arr.dtype == np.float32
    (s,) = read_stgcn(path)
    assert s.joints.shape == (72, 2, 25, 3) and not s.joints[:, 1].any() and s.labels is None
    np.testing.assert_array_equal(s.joints, arr[:, :72].transpose(1, 3, 2, 0))
    assert read_skeleton(path).num_frames == 72

def test_stgcn_label_pickle(shared_data, tmp_path):
    names, labels = pickle.load(open(shared_data/'ntu_rgbd/preprocessed/val_label.pkl', 'rb'))
    assert len(names) == len(labels) == 274 and set(labels) == {22}
    data = np.zeros((274, 3, 6, 25, 2), np.float32); data[:, :, :4] = 1
    np.save(tmp_path/'val_data.npy', data)
    seqs = read_stgcn(tmp_path/'val_data.npy', shared_data/'ntu_rgbd/preprocessed/val_label.pkl')
    assert len(seqs) == 274 and all(s.num_frames == 4 for s in seqs)
    assert all((s.labels == 23).all() for s in seqs) and seqs[0].class_names[23] == 'hand waving'
    assert seqs[0].name == names[0].replace('.skeleton', '') and seqs[0].meta['action'] == 23
    sub = read_stgcn(tmp_path/'val_data.npy', shared_data/'ntu_rgbd/preprocessed/val_label.pkl', indices=[3, 5])
    assert [s.meta['index'] for s in sub] == [3, 5]
    np.save(tmp_path/'short.npy', data[:10])
    with pytest.raises(FormatError, match='val_label.pkl: holds 274 samples but .*short.npy holds 10'):
        read_stgcn(tmp_path/'short.npy', shared_data/'ntu_rgbd/preprocessed/val_label.pkl')

# ---------------------------------------------------------------- NTU, corrupt input
@pytest.fixture
def ntu_lines(shared_data):
    return (shared_data/'ntu_rgbd/raw_skeleton/S001C003P008R002A058.skeleton').read_text().splitlines()

def test_ntu_truncated(ntu_lines, tmp_path):
    p = tmp_path/'S001C003P008R002A058.skeleton'
    p.write_text('\n'.join(ntu_lines[:1000]) + '\n')      # 1 + 2 * 27 lines a frame: cut inside frame 18
    with pytest.raises(FormatError, match=r'S001C003P008R002A058\.skeleton.*\(frame 18\).*expected 25 joint lines'):
        read_ntu_skeleton(p)
    p.write_text('\n'.join(ntu_lines[:1 + 55 * 3]) + '\n')    # exactly 3 whole frames of 70
    with pytest.raises(FormatError, match=r'\.skeleton \(frame 3\): file ends after line 166; expected the number of bodies of frame 3'):
        read_ntu_skeleton(p)

def test_ntu_wrong_counts_and_nan(ntu_lines, tmp_path):
    p = tmp_path/'S001C003P008R002A058.skeleton'
    bad = list(ntu_lines); bad[3] = '24'                        # joint count of frame 0 body 0
    p.write_text('\n'.join(bad))
    with pytest.raises(FormatError, match=r'\.skeleton, line 4 \(frame 0\): body 0 has 24 joints; expected 25'): read_ntu_skeleton(p)
    bad = list(ntu_lines); bad[10] = ' '.join(bad[10].split()[:11])
    p.write_text('\n'.join(bad))
    with pytest.raises(FormatError, match=r'line 11 \(frame 0\): joint 7 of body 0: expected 12 values, got 11'): read_ntu_skeleton(p)
    bad = list(ntu_lines); bad[40] = 'inf ' + ' '.join(bad[40].split()[1:])
    p.write_text('\n'.join(bad))
    with pytest.raises(FormatError, match=r'line 41 \(frame 0\): joint 10 of body 1: NaN or inf'): read_ntu_skeleton(p)
    bad = list(ntu_lines); bad[1] = 'two'
    p.write_text('\n'.join(bad))
    with pytest.raises(FormatError, match=r'line 2 \(frame 0\): expected the number of bodies'): read_ntu_skeleton(p)
    p.write_text('\n'.join(ntu_lines + ['garbage']))
    with pytest.raises(FormatError, match=f'line {len(ntu_lines) + 1}: unexpected content after the last of the 70 frames'):
        read_ntu_skeleton(p)

# ---------------------------------------------------------------- PKU-MMD
def test_pkummd_real(shared_data):
    skel = shared_data/'pku_mmd/Data/Skeleton/PKU_Skeleton_Renew/0016-M.txt'
    lab = shared_data/'pku_mmd/Label/Train_Label_PKU_final/0016-M.txt'
    s = read_pkummd(skel, lab)
    assert s.joints.shape == (1318, 2, 25, 3) and s.fps == 30 and s.name == '0016-M'
    lines = skel.read_text().splitlines()
    ref = np.array([[float(v) for v in l.split()] for l in lines], dtype=np.float64)
    assert ref.shape == (1318, 150)
    np.testing.assert_array_equal(s.joints, ref.reshape(1318, 2, 25, 3).astype(np.float32))
    np.testing.assert_array_equal(s.joints[0, 0, 0], np.float32([0.783772, -0.274415, 2.271898]))   # by eye
    assert s.joints[:, 1].any() and (s.meta['nbodys'] == 2).mean() > 0.5       # an interaction video
    rows = [tuple(int(v) for v in l.split(',')) for l in lab.read_text().splitlines()]
    assert s.segments == [r[:3] for r in rows] and s.meta['confidence'] == [r[3] for r in rows]
    assert set(s.meta['confidence']) == {0, 1, 2} and len(s.segments) == 8
    assert s.labels[109] == 26 and s.labels[153] == 26 and s.labels[154] == 0 and s.labels[108] == 0
    assert (s.labels > 0).sum() == sum(e - st for _, st, e in s.segments)
    assert s.class_names[26] == PKUMMD_CLASSES[25] == 'punching/slapping other person'
    assert read_skeleton(skel, labels=lab).segments == s.segments
    assert read_pkummd(skel).labels is None

def test_pkummd_labels_only(shared_data):
    rows = read_pkummd_labels(shared_data/'pku_mmd/Label/Train_Label_PKU_final/0002-L.txt')
    assert len(rows) == 20 and all(1 <= l <= 51 and 0 <= s < e for l, s, e, _ in rows)
    assert rows[0][:3] == (32, 182, 235)
    assert read_pkummd_labels(shared_data/'pku_mmd/Label/Train_Label_PKU_final/0002-L.txt', end_inclusive=True)[0][2] == 236

def pkummd_actions_xlsx(path) -> tuple:
    "The action names of PKU-MMD's `Split/Actions.xlsx` in label order (1, 2, ...), read with openpyxl."
    openpyxl = pytest.importorskip('openpyxl')
    rows = [r for r in openpyxl.load_workbook(path, read_only=True).worksheets[0].iter_rows(values_only=True) if r[0] is not None]
    assert [str(v).lower() for v in rows[0][:2]] == ['label', 'action']
    assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
    return tuple(str(r[1]).strip() for r in rows[1:])

def test_pkummd_classes_are_those_of_actions_xlsx(shared_data):
    "PKUMMD_CLASSES is written out in the library; the official spreadsheet is read only here."
    assert pkummd_actions_xlsx(shared_data/'pku_mmd/Split/Actions.xlsx') == PKUMMD_CLASSES and len(set(PKUMMD_CLASSES)) == 51

def test_pkummd_splits(shared_data):
    for name in ('cross-subject', 'cross-view'):
        sp = read_pkummd_split(shared_data/f'pku_mmd/Split/{name}.txt')
        assert len(sp['train']) + len(sp['val']) == 1076 and not set(sp['train']) & set(sp['val'])
    assert 'Validataion' in (shared_data/'pku_mmd/Split/cross-view.txt').read_text()
    cv = read_pkummd_split(shared_data/'pku_mmd/Split/cross-view.txt')
    assert all(v.endswith('-M') for v in cv['val']) and cv['train'][:2] == ['0002-L', '0002-R']

def test_pkummd_corrupt(shared_data, tmp_path):
    lines = (shared_data/'pku_mmd/Data/Skeleton/PKU_Skeleton_Renew/0016-M.txt').read_text().splitlines()
    p = tmp_path/'0016-M.txt'
    p.write_text('\n'.join(lines[:99] + [' '.join(lines[99].split()[:77])]))   # truncated in the middle of line 100
    with pytest.raises(FormatError, match=r'0016-M\.txt: expected 150 numbers a line.*row 100'): read_pkummd(p)
    p.write_text('\n'.join(lines[:10] + ['NaN ' + ' '.join(lines[10].split()[1:])] + lines[11:]))
    with pytest.raises(FormatError, match=r'0016-M\.txt, line 11 \(frame 10\): NaN or inf'): read_pkummd(p)
    p.write_text('\n'.join(l + ' 0' for l in lines[:5]))
    with pytest.raises(FormatError, match=r'got 151'): read_pkummd(p)
    p.write_text('')
    with pytest.raises(FormatError, match=r'0016-M\.txt: no frames'): read_pkummd(p)
    p.write_text('\n'.join(lines[:1000]))
    lab = shared_data/'pku_mmd/Label/Train_Label_PKU_final/0016-M.txt'
    with pytest.raises(FormatError, match=r'0016-M\.txt, line 7: segment \[1079, 1180\) runs past the 1000 frames'): read_pkummd(p, lab)
    with pytest.raises(FormatError, match=r'line 7: segment'): read_pkummd(p, lab, clip=True)   # a start past the end: refused
    p.write_text('\n'.join(lines[:1250]))
    assert read_pkummd(p, lab, clip=True).segments[-1] == (14, 1224, 1250)                      # an end past it: cut
    bad = tmp_path/'label.txt'
    bad.write_text('26,109,154,1\n0,5,9,1\n')
    with pytest.raises(FormatError, match=r'label\.txt, line 2: unknown class 0'): read_pkummd_labels(bad)
    bad.write_text('26,109\n')
    with pytest.raises(FormatError, match=r'label\.txt, line 1: expected'): read_pkummd_labels(bad)
    bad.write_text('26,120,110,1\n')
    with pytest.raises(FormatError, match=r'line 1: segment \[120, 110\) is empty'): read_pkummd_labels(bad)
    bad.write_text('0002-L, 0003-L\n')
    with pytest.raises(FormatError, match=r"label\.txt, line 1: expected a 'Training videos:' header"): read_pkummd_split(bad)

# ---------------------------------------------------------------- BABEL / AMASS
def test_babel_files(shared_data):
    assert read_babel_classes(shared_data/'babel/action_label_2_idx.json') == BABEL_CLASSES
    rates = json.loads((shared_data/'babel/featp_2_fps.json').read_text())
    assert len(rates) == 12660
    dense = read_babel(shared_data/'babel/babel_dense_excerpt_sid7692.reconstructed.json')
    ann = dense['7692']
    assert rates[ann['feat_p']] == 60.0 and ann['dur'] == 3.83
    T = int(round(ann['dur'] * 30))
    labels, segs = babel_frame_labels(ann, T, subset=1)
    assert labels.shape == (T,) and segs == [(2, 0, 30), (2, 90, T)]        # 'stand'; 'hop' is background in subset 1
    _, segs = babel_frame_labels(ann, T)
    hop, stand = BABEL_CLASSES.index('hop') + 1, BABEL_CLASSES.index('stand') + 1
    assert segs == [(stand, 0, 30), (hop, 30, 90), (stand, 90, T)]
    test = read_babel(shared_data/'babel/babel_test_excerpt_sid3312.reconstructed.json')['3312']
    assert len(test['frame_ann']['labels']) == 19
    assert babel_frame_labels(test, 100) == (None, [])
    seq = babel_sequence('3312', test, np.zeros((600, 25, 3)), 120.0)
    assert seq.labels is None and seq.num_frames == 150 and not babel_keep(seq, 1) and babel_keep(seq)

def _ann(*segs, dur=10.0):
    return {'babel_sid': 1, 'dur': dur, 'frame_ann': {'labels': [{'act_cat': c, 'start_t': s, 'end_t': e} for c, s, e in segs]}}

def test_babel_overlap_rule():
    walk, stand, turn, jump = 1, 2, 3, 4
    f = lambda *segs, **kw: babel_frame_labels(_ann(*segs), 10, fps=1, **kw)[1]
    assert f((['walk'], 0, 10), (['turn'], 2, 4), subset=1) == [(walk, 0, 2), (turn, 2, 4), (walk, 4, 10)]   # shortest wins
    assert f((['turn'], 2, 4), (['walk'], 0, 10), subset=1) == [(walk, 0, 2), (turn, 2, 4), (walk, 4, 10)]   # order-free
    assert f((['walk'], 0, 10), (['hop'], 2, 4), subset=1) == [(walk, 0, 10)]       # non-subset class: background
    assert f((['hop'], 0, 10), subset=1) == []
    assert f((['jump', 'stand'], 0, 5), subset=1) == [(stand, 0, 5)]                # same segment: class order
    assert f((['turn'], 3, 6), (['walk'], 2, 5), subset=1) == [(walk, 2, 5), (turn, 5, 6)]   # tie: earlier start
    assert f((['walk'], 8, 12.5), subset=1) == [(walk, 8, 10)]                       # end_t past the end: clipped
    hop = BABEL_CLASSES.index('hop') + 1
    assert f((['walk'], 0, 10), (['hop'], 2, 4)) == [(1, 0, 2), (hop, 2, 4), (1, 4, 10)]   # whole set: shortest wins
    assert babel_frame_labels(_ann((['walk'], 0.5, 1)), 3, fps=2, subset=1)[1] == [(walk, 1, 2)]   # start_t <= t < end_t
    seq_only = {'babel_sid': 2, 'dur': 2.0, 'frame_ann': None, 'seq_ann': {'labels': [{'act_cat': ['sit', 'kick']}]}}
    assert babel_frame_labels(seq_only, 60, subset=2)[1] == [(1, 0, 60)]           # seq_ann, tie -> class order
    with pytest.raises(FormatError, match='BABEL sid 1, frame_ann label 0'): babel_frame_labels(_ann((['walk'], 3, 1)), 10)
    with pytest.raises(FormatError, match='after the end'): babel_frame_labels(_ann((['walk'], 30, 31)), 10, fps=1)

def test_babel_sequence_and_keep():
    ann = _ann((['walk'], 0, 2), (['dance'], 1, 3), dur=3.0)
    j = np.random.default_rng(0).normal(size=(360, 25, 3))
    s1, s3 = babel_sequence(5, ann, j, 120.0, subset=1), babel_sequence(5, ann, j, 120.0, subset=3)
    assert s1.joints.shape == (90, 1, 25, 3) and s1.fps == 30 and s1.segments == [(1, 0, 60)]
    assert s3.segments == [(3, 30, 90)] and s3.class_names == ('background', 'jog', 'wave', 'dance', 'gesture')
    np.testing.assert_allclose(s1.joints[1, 0], j[4], rtol=1e-6)
    assert babel_keep(s1, 1) and not babel_keep(s1, 2) and babel_keep(s3, 3)
    whole = babel_sequence(5, ann, j, 120.0)
    assert babel_keep(whole, 1) and babel_keep(whole, 3) and not babel_keep(whole, 2)
    assert not babel_keep(babel_sequence(5, ann, np.zeros((4004, 25, 3)), 120.0))      # 1001 frames at 30 fps
    assert set(BABEL_SUBSETS) == {1, 2, 3}

def test_babel_bad_json(tmp_path):
    (tmp_path/'train.json').write_text('{"1": {"dur": 1.0,\n "frame_ann": nul}}')
    with pytest.raises(FormatError, match=r'train\.json, line 2: not valid JSON'): read_babel(tmp_path/'train.json')

def test_amass_needs_body_model(shared_data, tmp_path, monkeypatch):
    path = shared_data/'amass/dmpl_sample.npz'
    z = np.load(path)
    assert z['poses'].shape == (235, 156) and z['gender'].item() == b'female'
    monkeypatch.setitem(sys.modules, 'smplx', None)          # as if smplx were not installed
    with pytest.raises(MissingBodyModel) as e: read_amass_joints(path, amass_root=tmp_path)
    msg = str(e.value)
    for s in ('dmpl_sample.npz', 'SMPL+H', 'mano.is.tue.mpg.de', "'Extended SMPL+H model'", 'pip install smplx',
              str(tmp_path/'body_models/smplh/female/model.npz'), '{male,female,neutral}/model.npz'):
        assert s in msg, s
    with pytest.raises(MissingBodyModel): read_skeleton(path, amass_root=tmp_path)

def test_amass_through_smplx(shared_data, tmp_path, monkeypatch):
    "The SMPL+H path, with a stand-in for smplx (the real model cannot be shipped): shapes, arguments, NTU mapping."
    torch = pytest.importorskip('torch')
    calls = {}
    class FakeSMPLH:
        def __init__(self, **kw): calls['init'] = kw
        def __call__(self, **kw):
            calls.setdefault('sizes', []).append(kw['body_pose'].shape)
            n = kw['global_orient'].shape[0]
            joints = torch.arange(73, dtype=torch.float32)[None, :, None].expand(n, 73, 3) + kw['transl'][:, None]
            return types.SimpleNamespace(joints=joints)
    monkeypatch.setitem(sys.modules, 'smplx', types.SimpleNamespace(SMPLH=FakeSMPLH))
    model = tmp_path/'body_models/smplh/female/model.npz'; model.parent.mkdir(parents=True); model.write_bytes(b'')
    j, fps = read_amass_joints(shared_data/'amass/dmpl_sample.npz', amass_root=tmp_path)
    assert j.shape == (235, 25, 3) and abs(fps - 120.00004577636719) < 1e-9
    assert calls['init']['gender'] == 'female' and calls['init']['flat_hand_mean'] and calls['init']['num_betas'] == 16
    assert calls['sizes'] == [(235, 63)]
    trans = np.load(shared_data/'amass/dmpl_sample.npz')['trans']
    np.testing.assert_allclose(j[:, 1], 3 + trans, rtol=1e-5)   # NTU joint 2 (spine middle) = SMPL-H joint 3

def test_amass_precomputed(tmp_path):
    np.save(tmp_path/'j.npy', np.ones((50, 52, 3)))
    with pytest.warns(UserWarning, match='52 joints'):
        j, fps = read_amass_joints(tmp_path/'j.npy', fps=100)
    assert j.shape == (50, 25, 3) and fps == 100
    with pytest.raises(FormatError, match=r'j\.npy: a \.npy of joint positions stores no frame rate'): read_amass_joints(tmp_path/'j.npy')
    np.savez(tmp_path/'x.npz', foo=np.ones(3), fps=30)
    with pytest.raises(FormatError, match=r"x\.npz: expected joint positions"): read_amass_joints(tmp_path/'x.npz')

# ---------------------------------------------------------------- PYSKL
def test_pyskl_real(shared_data):
    path = shared_data/'pyskl/example_UCF101_skeleton.pkl'
    raw = pickle.load(open(path, 'rb'))
    (s,) = read_pyskl(path)
    assert s.joints.shape == (163, 2, 17, 2) and s.layout == 'coco17' and s.num_frames == raw['total_frames']
    np.testing.assert_array_equal(s.joints, raw['keypoint'].astype(np.float32).transpose(1, 0, 2, 3))
    assert s.meta['keypoint_score'].shape == (163, 2, 17) and (s.labels == raw['label'] + 1).all()
    assert s.name == 'v_ApplyEyeMakeup_g01_c01' and s.meta['img_shape'] == (256, 340)
    assert read_skeleton(path).name == s.name

def test_pyskl_dataset_and_errors(tmp_path):
    anns = [{'frame_dir': f'S001C001P001R001A00{i + 1}', 'keypoint': np.ones((2, 7, 25, 3)), 'label': i, 'total_frames': 7}
            for i in range(3)]
    with open(tmp_path/'ntu60_3danno.pkl', 'wb') as f: pickle.dump({'split': {'xsub_train': [a['frame_dir'] for a in anns[:2]]}, 'annotations': anns}, f)
    seqs = read_pyskl(tmp_path/'ntu60_3danno.pkl', class_names=NTU60_CLASSES)
    assert [s.labels[0] for s in seqs] == [1, 2, 3] and seqs[2].meta['splits'] == [] and seqs[0].layout == 'ntu25'
    assert read_skeleton(tmp_path/'ntu60_3danno.pkl', index=2).labels[0] == 3
    anns[1]['keypoint'] = np.ones((2, 7, 18, 3))
    with open(tmp_path/'bad.pkl', 'wb') as f: pickle.dump(anns, f)
    with pytest.raises(FormatError, match=r'bad\.pkl: expected 25 \(NTU\) or 17 \(COCO\) joints'): read_pyskl(tmp_path/'bad.pkl')
    (tmp_path/'junk.pkl').write_bytes(b'not a pickle')
    with pytest.raises(FormatError, match=r'junk\.pkl: not a readable pickle'): read_pyskl(tmp_path/'junk.pkl')

# ---------------------------------------------------------------- dispatch
def test_read_skeleton_dispatch(shared_data, tmp_path):
    d = shared_data
    assert read_skeleton(d/'ntu_rgbd/raw_skeleton/S001C001P001R001A001.skeleton').num_frames == 103
    assert read_skeleton(d/'ntu_rgbd/preprocessed/S001C001P001R001A001.skeleton.npy').num_frames == 103
    assert read_skeleton(d/'pku_mmd/Data/Skeleton/PKU_Skeleton_Renew/0016-M.txt').num_frames == 1318
    (tmp_path/'x.csv').write_text('1,2')
    with pytest.raises(FormatError, match=r'x\.csv: unknown skeleton format'): read_skeleton(tmp_path/'x.csv')
    with pytest.raises(FormatError, match=r'BABEL annotations hold labels'): read_skeleton(d/'babel/action_label_2_idx.json')
    with pytest.raises(FileNotFoundError, match='nope.skeleton'): read_skeleton(tmp_path/'nope.skeleton')
    with pytest.raises(FormatError, match=r'val_label\.pkl: looks like an ST-GCN'): read_skeleton(d/'ntu_rgbd/preprocessed/val_label.pkl')

# ---------------------------------------------------------------- round trips
coords = st.floats(-10, 10, width=32, allow_subnormal=False).map(lambda v: v if v != 0 else 1.0)

@st.composite
def ntu_seqs(draw):
    T, M = draw(st.integers(1, 8)), draw(st.integers(1, 3))
    joints = draw(arrays(np.float32, (T, M, 25, 3), elements=coords))
    present = draw(arrays(np.bool_, (T, M)))
    joints[~present] = 0
    action = draw(st.integers(1, 120))
    return Sequence(joints, labels=np.full(T, action), segments=[(action, 0, T)], name=f'S001C002P003R004A{action:03d}')

@settings(deadline=None, max_examples=40)
@given(seq=ntu_seqs(), crlf=st.booleans())
def test_ntu_round_trip(tmp_path_factory, seq, crlf):
    path = tmp_path_factory.mktemp('ntu')/f'{seq.name}.skeleton'
    write_ntu_skeleton(seq, path, crlf=crlf)
    assert (b'\r\n' in path.read_bytes()) == crlf
    T, M = seq.joints.shape[:2]
    back = read_ntu_skeleton(path, max_bodies=M)
    present = np.abs(seq.joints).reshape(T, M, -1).sum(-1) > 0
    order = sorted((m for m in range(M) if present[:, m].any()), key=lambda m: (present[:, m].argmax(), m))
    expected = np.zeros_like(seq.joints); expected[:, :len(order)] = seq.joints[:, order]
    np.testing.assert_array_equal(back.joints, expected)
    assert (back.labels == seq.labels).all() and back.segments == seq.segments
    np.testing.assert_array_equal(back.meta['nbodys'], present.sum(1))

@st.composite
def pku_seqs(draw):
    T = draw(st.integers(1, 40))
    joints = draw(arrays(np.float32, (T, draw(st.integers(1, 2)), 25, 3), elements=st.floats(-5, 5, width=32, allow_subnormal=False)))
    labels = np.array(draw(st.lists(st.integers(0, 51), min_size=T, max_size=T)))
    segs = labels_to_segments(labels)
    conf = draw(st.lists(st.integers(0, 2), min_size=len(segs), max_size=len(segs)))
    return Sequence(joints, labels=labels, segments=segs, name='0001-L', meta={'confidence': conf})

@settings(deadline=None, max_examples=40)
@given(seq=pku_seqs(), inclusive=st.booleans())
def test_pkummd_round_trip(tmp_path_factory, seq, inclusive):
    d = tmp_path_factory.mktemp('pku')
    write_pkummd(seq, d/'0001-L.txt', d/'0001-L_label.txt', end_inclusive=inclusive)
    back = read_pkummd(d/'0001-L.txt', d/'0001-L_label.txt', end_inclusive=inclusive)
    T, M = seq.joints.shape[:2]
    np.testing.assert_array_equal(back.joints[:, :M], seq.joints)
    assert not back.joints[:, M:].any()
    assert back.segments == seq.segments and (back.labels == seq.labels).all()
    assert back.meta['confidence'] == seq.meta['confidence']
    assert sorted(p.name for p in d.iterdir()) == ['0001-L.txt', '0001-L_label.txt']   # nothing temporary left

# ---------------------------------------------------------------- issue 12: PKU-MMD label checks
def _pku_pair(d, skel_name, label_name, rows, T=100):
    np.savetxt(d/skel_name, np.ones((T, 150)), fmt='%g')
    (d/'labels').mkdir(exist_ok=True)
    (d/'labels'/label_name).write_text(''.join(f'{l},{s},{e},1\n' for l, s, e in rows))
    return d/skel_name, d/'labels'/label_name

def test_pkummd_overlap_of_different_classes_warns(tmp_path):
    skel, lab = _pku_pair(tmp_path, '0001-L.txt', '0001-L.txt', [(5, 10, 30), (7, 20, 40), (5, 50, 60), (5, 55, 70)])
    with pytest.warns(UserWarning, match=r'labels/0001-L\.txt, lines 1 and 2: segments \[10, 30\) of class 5 and \[20, 40\) of class 7 overlap') as w:
        s = read_pkummd(skel, lab)
    assert len([x for x in w if 'overlap' in str(x.message)]) == 1       # lines 3 and 4: same class, no warning
    assert s.segments == [(5, 10, 30), (7, 20, 40), (5, 50, 60), (5, 55, 70)]
    with pytest.warns(UserWarning, match=r'lines 1 and 2'): read_skeleton(skel, labels=lab)

def test_pkummd_label_file_of_another_video_refused(tmp_path):
    skel, lab = _pku_pair(tmp_path, '0001-L.txt', '0002-R.txt', [(5, 10, 30)])
    with pytest.raises(FormatError, match=r'0002-R\.txt: a label file of video 0002-R, but the skeleton file .*0001-L\.txt is video 0001-L'):
        read_pkummd(skel, lab)
    _, ok = _pku_pair(tmp_path, '0001-L.txt', '0001-L_label.txt', [(5, 10, 30)])
    assert read_pkummd(skel, ok).segments == [(5, 10, 30)]                # the same video under another name: fine
    plain, other = _pku_pair(tmp_path, 'walk.txt', 'walk_labels.txt', [(5, 10, 30)])
    assert read_pkummd(plain, other).segments == [(5, 10, 30)]            # names without a video id: not compared

# ---------------------------------------------------------------- issue 12: no bare exceptions
def test_babel_binary_json(tmp_path):
    (tmp_path/'train.json').write_bytes(b'{"1": \xff\xfe\x00\x80garbage')
    with pytest.raises(FormatError, match=r'train\.json: not a text file \(byte 6 is not UTF-8\)'): read_babel(tmp_path/'train.json')
    (tmp_path/'action_label_2_idx.json').write_bytes(b'\x89PNG\r\n\x1a\n')
    with pytest.raises(FormatError, match=r'action_label_2_idx\.json: not a text file'):
        read_babel_classes(tmp_path/'action_label_2_idx.json')

@pytest.mark.parametrize('ann, field', [
    ({'dur': '3.0', 'seq_ann': None, 'frame_ann': None}, "'dur'"),
    ({'dur': True, 'seq_ann': None, 'frame_ann': None}, "'dur'"),
    ({'dur': 3.0, 'feat_p': 7, 'frame_ann': None, 'seq_ann': None}, "'feat_p'"),
    ({'dur': 3.0, 'frame_ann': [1, 2]}, "'frame_ann'"),
    ({'dur': 3.0, 'frame_ann': {'labels': 'walk'}}, "frame_ann 'labels'"),
    ({'dur': 3.0, 'frame_ann': {'labels': ['walk']}}, 'frame_ann label 0'),
    ({'dur': 3.0, 'frame_ann': {'labels': [{'act_cat': 5, 'start_t': 0, 'end_t': 1}]}}, "frame_ann label 0: 'act_cat'"),
    ({'dur': 3.0, 'frame_ann': {'labels': [{'act_cat': ['walk'], 'start_t': '0', 'end_t': 1}]}}, "frame_ann label 0: 'start_t'"),
    ({'dur': 3.0, 'seq_ann': {'labels': [{'act_cat': [['walk']]}]}, 'frame_ann': None}, "seq_ann label 0: 'act_cat'"),
])
def test_babel_fields_of_the_wrong_type(tmp_path, ann, field):
    (tmp_path/'val.json').write_text(json.dumps({'42': {'babel_sid': 42, **ann}}))
    with pytest.raises(FormatError, match=rf"val\.json: sequence '42': .*{field}"): read_babel(tmp_path/'val.json')
    with pytest.raises(FormatError, match=r'BABEL sid 42'): babel_frame_labels({'babel_sid': 42, **ann}, 90)

def test_pyskl_bad_annotations(tmp_path):
    def dump(obj, name='x.pkl'):
        with open(tmp_path/name, 'wb') as f: pickle.dump(obj, f)
        return tmp_path/name
    kp = np.ones((1, 5, 17, 2), np.float32)
    with pytest.raises(FormatError, match=r"x\.pkl: annotation 1: expected a dict \(keypoint, label, \.\.\.\), got int"):
        read_pyskl(dump({'split': {}, 'annotations': [{'keypoint': kp}, 3]}))
    with pytest.raises(FormatError, match=r"x\.pkl: 'annotations' must be a list of dicts, got str"):
        read_pyskl(dump({'split': {}, 'annotations': 'abc'}))
    with pytest.raises(FormatError, match=r"x\.pkl: 'split' must map split names to lists of frame_dir, got list"):
        read_pyskl(dump({'split': ['a'], 'annotations': [{'keypoint': kp}]}))
    with pytest.raises(FormatError, match=r"x\.pkl: annotation 0 \(v\): label 'walk' is not an integer class index"):
        read_pyskl(dump({'frame_dir': 'v', 'keypoint': kp, 'label': 'walk'}))
    with pytest.raises(FormatError, match=r"x\.pkl: annotation 0 \(v\): keypoint holds 0 frames"):
        read_pyskl(dump({'frame_dir': 'v', 'keypoint': np.ones((1, 0, 17, 2)), 'label': 0}))
    with pytest.raises(FormatError, match=r"x\.pkl: annotation 0 \(v\): keypoint is not a numeric array"):
        read_pyskl(dump({'frame_dir': 'v', 'keypoint': np.array([['a']]), 'label': 0}))
    with pytest.raises(FormatError, match=r"x\.pkl: annotation 0 \(v\): total_frames 'five' is not an integer"):
        read_pyskl(dump({'frame_dir': 'v', 'keypoint': kp, 'label': 0, 'total_frames': 'five'}))

def test_stgcn_string_labels_and_empty_frames(tmp_path):
    np.save(tmp_path/'d.npy', np.ones((2, 3, 4, 25, 2), np.float32))
    with open(tmp_path/'l.pkl', 'wb') as f: pickle.dump((['a', 'b'], [0, 'walk']), f)
    with pytest.raises(FormatError, match=r"l\.pkl: sample 1 \(b\): label 'walk' is not an integer class index"):
        read_stgcn(tmp_path/'d.npy', tmp_path/'l.pkl')
    np.save(tmp_path/'e.npy', np.ones((2, 3, 0, 25, 2), np.float32))
    with pytest.raises(FormatError, match=r'e\.npy: holds 0 frames'): read_stgcn(tmp_path/'e.npy')

def test_txt2npy_zero_frames(tmp_path):
    p = tmp_path/'S001C001P001R001A001.skeleton.npy'
    np.save(p, np.array({'skel_body0': np.zeros((0, 25, 3)), 'nbodys': []}, dtype=object), allow_pickle=True)
    with pytest.raises(FormatError, match=r'S001C001P001R001A001\.skeleton\.npy: holds 0 frames'): read_ntu_npy(p)

def test_max_bodies_must_be_positive(tmp_path):
    from snipnb.formats import select_bodies
    p = tmp_path/'S001C001P001R001A001.skeleton'
    write_ntu_skeleton(Sequence(np.ones((3, 1, 25, 3), np.float32), name='S001C001P001R001A001'), p)
    for bad in (-1, 0, 1.5):
        with pytest.raises(ValueError, match=rf'S001C001P001R001A001\.skeleton: max_bodies must be a positive integer, got {bad}'):
            read_ntu_skeleton(p, max_bodies=bad)
    with pytest.raises(ValueError, match=r'max_bodies must be a positive integer, got -2'): select_bodies([[]], -2)
    npy = tmp_path/'S001C001P001R001A001.skeleton.npy'
    np.save(npy, np.array({'skel_body0': np.ones((3, 25, 3))}, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r'skeleton\.npy: max_bodies must be a positive integer, got -1'): read_ntu_npy(npy, max_bodies=-1)
    assert read_ntu_skeleton(p, max_bodies=1).joints.shape == (3, 1, 25, 3)

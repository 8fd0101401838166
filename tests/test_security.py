"""No code runs from a data file: every reader that unpickles refuses a hostile pickle before anything in it runs.

Each hostile file would create a marker file if its code ran (through os.system, builtins.exec or subprocess);
the tests assert the marker is never created and the error names the file and the callable it tried to load.
The real samples must read exactly as plain `pickle` / `np.load(allow_pickle=True)` read them."""
import builtins, datetime, os, pickle, subprocess
from pathlib import Path
import numpy as np
import pytest

from snipnb.formats import FormatError, read_pyskl, read_skeleton, read_stgcn, read_ntu_npy

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

class SystemCall:
    "Unpickling this runs a shell command."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

class ExecCall:
    "Unpickling this runs Python source."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))

class SubprocessCall:
    "Unpickling this starts a process."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (subprocess.call, (['touch', self.marker],))

PAYLOADS = {'system': (SystemCall, f'{os.system.__module__}.system'), 'exec': (ExecCall, 'builtins.exec'),
            'subprocess': (SubprocessCall, 'subprocess.call')}

@pytest.fixture(params=sorted(PAYLOADS))
def hostile(request, tmp_path):
    "(a hostile object, the marker it would create, the module.name it asks the unpickler for)."
    cls, qualname = PAYLOADS[request.param]
    marker = tmp_path/'pwned'
    return cls(marker), marker, qualname

def _dump(obj, path):
    with open(path, 'wb') as f: pickle.dump(obj, f)
    return path

def _refused(call, path, marker, qualname):
    "`call()` must refuse the file before running anything in it, naming the file and the callable."
    with pytest.raises(FormatError) as e: call()
    assert not marker.exists(), f"the pickle's code ran: {marker} was created"
    msg = str(e.value)
    assert str(path) in msg and qualname in msg and 'trusted=True' in msg, msg

def _kp(T=5, V=25): return np.ones((1, T, V, 3), np.float32)

# ---------------------------------------------------------------- every reader that unpickles
def test_pyskl_pickle_top_level(hostile, tmp_path):
    obj, marker, qn = hostile
    p = _dump(obj, tmp_path/'evil.pkl')
    _refused(lambda: read_pyskl(p), p, marker, qn)
    _refused(lambda: read_skeleton(p), p, marker, qn)

def test_pyskl_dict_with_hostile_value_nested(hostile, tmp_path):
    obj, marker, qn = hostile
    ann = {'frame_dir': 'a', 'keypoint': _kp(), 'label': 0, 'total_frames': 5, 'extra': {'deep': [1, obj]}}
    p = _dump({'split': {'train': ['a']}, 'annotations': [ann]}, tmp_path/'ntu60_3danno.pkl')
    _refused(lambda: read_pyskl(p), p, marker, qn)
    _refused(lambda: read_skeleton(p, index=0), p, marker, qn)
    p2 = _dump({'frame_dir': 'a', 'keypoint': _kp(), 'label': obj, 'total_frames': 5}, tmp_path/'one.pickle')
    _refused(lambda: read_skeleton(p2), p2, marker, qn)

def test_stgcn_label_pickle(hostile, tmp_path):
    obj, marker, qn = hostile
    np.save(tmp_path/'val_data.npy', np.ones((2, 3, 4, 25, 2), np.float32))
    p = _dump((['S001C001P001R001A001.skeleton', 'S001C001P001R001A002.skeleton'], [0, obj]), tmp_path/'val_label.pkl')
    _refused(lambda: read_stgcn(tmp_path/'val_data.npy', p), p, marker, qn)
    _refused(lambda: read_skeleton(tmp_path/'val_data.npy', labels=p), p, marker, qn)

def test_txt2npy_with_hostile_value(hostile, tmp_path):
    obj, marker, qn = hostile
    d = {'file_name': 'S001C001P001R001A001', 'nbodys': [1] * 4, 'skel_body0': np.ones((4, 25, 3)), 'njoints': obj}
    p = tmp_path/'S001C001P001R001A001.skeleton.npy'
    np.save(p, np.array(d, dtype=object), allow_pickle=True)
    _refused(lambda: read_ntu_npy(p), p, marker, qn)
    _refused(lambda: read_skeleton(p), p, marker, qn)

def test_object_npy_hostile_array(hostile, tmp_path):
    "Any object-dtype .npy (not only a txt2npy dict): its payload is a pickle."
    obj, marker, qn = hostile
    p = tmp_path/'anything.npy'
    np.save(p, np.array([obj, 1], dtype=object), allow_pickle=True)
    _refused(lambda: read_skeleton(p), p, marker, qn)
    _refused(lambda: read_ntu_npy(p), p, marker, qn)

def test_load_corpus_over_txt2npy_folder(hostile, tmp_path):
    "load_corpus('ntu60', root=...) over *.skeleton.npy reads them with read_ntu_npy: refused there too."
    from snipnb.datasets import load_corpus
    obj, marker, qn = hostile
    root = tmp_path/'ntu'; root.mkdir()
    good = {'file_name': 'S001C001P001R001A001', 'nbodys': [1] * 4, 'skel_body0': np.ones((4, 25, 3))}
    np.save(root/'S001C001P001R001A001.skeleton.npy', np.array(good, dtype=object), allow_pickle=True)
    p = root/'S001C001P002R001A002.skeleton.npy'
    np.save(p, np.array({**good, 'file_name': obj}, dtype=object), allow_pickle=True)
    _refused(lambda: load_corpus('ntu60', root=root, cache_dir=tmp_path/'cache', progress=False), p, marker, qn)

# ---------------------------------------------------------------- what is admitted, and the opt-in
def test_refuses_harmless_classes_too_unless_trusted(tmp_path):
    "Only numpy arrays, dtypes, scalars and plain values load; anything else needs trusted=True."
    ann = {'frame_dir': 'a', 'keypoint': _kp(), 'label': 0, 'total_frames': 5, 'date': datetime.date(2020, 1, 1)}
    p = _dump(ann, tmp_path/'dated.pkl')
    with pytest.raises(FormatError, match=r'dated\.pkl: refused to unpickle datetime\.date.*trusted=True'): read_pyskl(p)
    (s,) = read_pyskl(p, trusted=True)
    assert s.num_frames == 5

@pytest.mark.parametrize('protocol', range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_values_every_protocol(tmp_path, protocol):
    "Arrays (any dtype), numpy scalars, sets, bytes and complex read under every pickle protocol."
    kp = np.arange(2 * 6 * 17 * 2, dtype=np.float16).reshape(2, 6, 17, 2)
    ann = {'frame_dir': 'v', 'keypoint': kp, 'keypoint_score': np.ones((2, 6, 17), np.float32), 'label': np.int64(3),
           'total_frames': np.int32(6), 'img_shape': (256, 340), 'tags': {'x', b'y'}, 'z': 1 + 2j,
           'when': np.datetime64('2020-01-01'), 'rec': np.zeros(2, dtype=[('a', 'f4'), ('b', 'U3')])}
    p = tmp_path/'v.pkl'
    with open(p, 'wb') as f: pickle.dump([ann], f, protocol=protocol)
    (s,) = read_pyskl(p)
    np.testing.assert_array_equal(s.joints, kp.astype(np.float32).transpose(1, 0, 2, 3))
    assert (s.labels == 4).all() and s.meta['img_shape'] == (256, 340)

# ---------------------------------------------------------------- the real samples read as before
def test_real_samples_read_identically(shared_data, tmp_path):
    pk = shared_data/'pyskl/example_UCF101_skeleton.pkl'
    raw = pickle.load(open(pk, 'rb'))                       # the trusted reference: plain pickle
    (s,) = read_pyskl(pk)
    (t,) = read_pyskl(pk, trusted=True)
    np.testing.assert_array_equal(s.joints, raw['keypoint'].astype(np.float32).transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(s.meta['keypoint_score'], raw['keypoint_score'].astype(np.float32).transpose(1, 0, 2))
    np.testing.assert_array_equal(s.joints, t.joints)
    assert s.name == t.name == raw['frame_dir'] and (s.labels == t.labels).all()

    npy = shared_data/'ntu_rgbd/preprocessed/S001C001P001R001A001.skeleton.npy'
    d = np.load(npy, allow_pickle=True).item()
    n = read_ntu_npy(npy)
    np.testing.assert_array_equal(n.joints[:, 0], d['skel_body0'].astype(np.float32))
    np.testing.assert_array_equal(n.meta['nbodys'], d['nbodys'])
    np.testing.assert_array_equal(read_skeleton(npy).joints, n.joints)
    np.testing.assert_array_equal(read_ntu_npy(npy, trusted=True).joints, n.joints)

    lab = shared_data/'ntu_rgbd/preprocessed/val_label.pkl'
    names, labels = pickle.load(open(lab, 'rb'))
    np.save(tmp_path/'val_data.npy', np.ones((len(names), 3, 4, 25, 2), np.float32))
    seqs = read_stgcn(tmp_path/'val_data.npy', lab)
    assert [s.name for s in seqs] == [n.replace('.skeleton', '') for n in names]
    assert [int(s.labels[0]) for s in seqs] == [l + 1 for l in labels]

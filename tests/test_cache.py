"""Corpus caches under damage: rebuild on request, damaged files diagnosed and healed, disk full, racing builders."""
import errno, json, os, shutil
from pathlib import Path
import numpy as np
import pytest
from snipnb import datasets as D
from snipnb.datasets import Corpus, build_cache, load_corpus
from snipnb.skeleton import Sequence, labels_to_segments

def seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    for i, T in enumerate(lengths):
        lab = np.repeat(rng.integers(0, 3, size=(T + 4) // 5), 5)[:T]
        yield Sequence(rng.normal(size=(T, 1, 25, 3)), labels=lab, segments=labels_to_segments(lab), name=f'r{i}',
                       class_names=('background', 'a', 'b'), meta={'split': 'train'})

def leftovers(folder:Path) -> list:
    "Temporary or set-aside folders a build left next to its caches."
    return sorted(p.name for p in folder.iterdir() if '.tmp-' in p.name)

# ---- load_corpus(rebuild=True) ------------------------------------------------------------------

def test_rebuild_replaces_an_existing_cache(tmp_path):
    c = load_corpus('synthetic', size='quick', cache_dir=tmp_path, progress=False)
    (c.path/'marker').write_text('written after the build')       # anything not from a fresh build
    again = load_corpus('synthetic', size='quick', cache_dir=tmp_path, rebuild=True, progress=False)
    assert again.path == c.path and not (c.path/'marker').exists(), "rebuild=True kept the old cache"
    np.testing.assert_array_equal(again[3].joints, c[3].joints)
    assert leftovers(tmp_path) == []

def test_build_cache_replace(tmp_path):
    build_cache(seqs([10]), tmp_path/'c', progress=False)
    build_cache(seqs([12]), tmp_path/'c', progress=False)                  # default: the existing cache wins
    assert Corpus(tmp_path/'c').lengths.tolist() == [10]
    build_cache(seqs([12]), tmp_path/'c', progress=False, replace=True)    # replace: the fresh build wins
    assert Corpus(tmp_path/'c').lengths.tolist() == [12] and leftovers(tmp_path) == []

# ---- damaged caches ---------------------------------------------------------------------------

def _truncate(f, n): f.write_bytes(f.read_bytes()[:-n])
def _offsets_short(p): np.save(p/'offsets.npy', np.load(p/'offsets.npy')[:20])
def _offsets_unordered(p):
    o = np.load(p/'offsets.npy'); o[[5, 6]] = o[[6, 5]]; np.save(p/'offsets.npy', o)

DAMAGE = {   # what a user's disk, a killed copy or a stray command can do to a finished cache -> the file to name
    'frames truncated':       (lambda p: _truncate(p/'frames.npy', 1000), 'frames.npy'),
    'labels truncated':       (lambda p: _truncate(p/'labels.npy', 10), 'labels.npy'),
    'frames header zeroed':   (lambda p: (p/'frames.npy').write_bytes(b'\0' * 16 + (p/'frames.npy').read_bytes()[16:]), 'frames.npy'),
    'labels header zeroed':   (lambda p: (p/'labels.npy').write_bytes(b'\0' * 16 + (p/'labels.npy').read_bytes()[16:]), 'labels.npy'),
    'index truncated':        (lambda p: _truncate(p/'index.json', len((p/'index.json').read_bytes()) // 2), 'index.json'),
    'offsets shorter':        (_offsets_short, 'offsets.npy'),
    'offsets out of order':   (_offsets_unordered, 'offsets.npy'),
    'recordings truncated':   (lambda p: _truncate(p/'recordings.json', 100), 'recordings.json'),
    'frames missing':         (lambda p: (p/'frames.npy').unlink(), 'frames.npy'),
}

@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
    "A finished quick synthetic cache (built once), copied into each test."
    folder = tmp_path_factory.mktemp('pristine')
    c = load_corpus('synthetic', size='quick', cache_dir=folder, progress=False)
    return folder, c.path.name, c.names, c.lengths.tolist(), np.asarray(c[3].joints).copy()

def _damaged_copy(pristine, tmp_path, kind):
    folder, name, *_ = pristine
    shutil.copytree(folder/name, tmp_path/name)
    DAMAGE[kind][0](tmp_path/name)
    return tmp_path/name

@pytest.mark.parametrize('kind', DAMAGE)
def test_damaged_cache_is_named_with_how_to_fix(pristine, tmp_path, kind):
    "Loading a damaged cache directly (no source to rebuild from) names the file, the cache and the fix."
    path = _damaged_copy(pristine, tmp_path, kind)
    with pytest.raises(ValueError) as e: Corpus(path)
    msg = str(e.value)
    assert DAMAGE[kind][1] in msg and str(path) in msg, msg
    assert 'damaged' in msg and 'delete' in msg and 'rebuild=True' in msg, msg

@pytest.mark.parametrize('kind', DAMAGE)
def test_damaged_cache_is_rebuilt_by_load_corpus(pristine, tmp_path, kind):
    "load_corpus knows the source: it warns which file of which cache is damaged and rebuilds it."
    _, name, names, lengths, joints3 = pristine
    _damaged_copy(pristine, tmp_path, kind)
    with pytest.warns(UserWarning, match=f"{DAMAGE[kind][1]}.*{name}.*rebuilding"):
        c = load_corpus('synthetic', size='quick', cache_dir=tmp_path, progress=False)
    assert c.path == tmp_path/name and c.names == names and c.lengths.tolist() == lengths
    np.testing.assert_array_equal(c[3].joints, joints3)
    assert leftovers(tmp_path) == []
    Corpus(c.path)                                                   # and it is whole again

def test_intact_cache_loads_without_warning(pristine, tmp_path):
    folder, name, names, *_ = pristine
    shutil.copytree(folder/name, tmp_path/name)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert load_corpus('synthetic', size='quick', cache_dir=tmp_path, progress=False).names == names

# ---- disk full during a build ------------------------------------------------------------------

class FullDiskFile:
    "A file on a disk that fills after `room` bytes: writes fail with ENOSPC, and so does the close that flushes."
    def __init__(self, path, mode, room):
        self.f, self.room, self.failed = open(path, mode), room, False
    def write(self, b):
        if len(b) > self.room:
            self.failed = True; raise OSError(errno.ENOSPC, 'No space left on device')
        self.room -= len(b); return self.f.write(b)
    def close(self):
        self.f.close()
        if self.failed: self.failed = False; raise OSError(errno.ENOSPC, 'No space left on device')
    def __getattr__(self, k): return getattr(self.f, k)

def _fill_on_frames(monkeypatch):
    monkeypatch.setattr(D, 'open', lambda p, mode='r': FullDiskFile(p, mode, 20_000), raising=False)

def _fill_on_offsets(monkeypatch):
    real = np.save
    def save(file, arr, *a, **k):
        if str(file).endswith('offsets.npy'): raise OSError(errno.ENOSPC, 'No space left on device')
        return real(file, arr, *a, **k)
    monkeypatch.setattr(np, 'save', save)

@pytest.mark.parametrize('fill', [_fill_on_frames, _fill_on_offsets])
def test_disk_full_cleans_up_and_says_so(tmp_path, monkeypatch, fill):
    fill(monkeypatch)
    with pytest.raises(OSError) as e: build_cache(seqs([40, 50, 60]), tmp_path/'c', progress=False)
    assert e.value.errno == errno.ENOSPC and f'no space left on {tmp_path}' in str(e.value), str(e.value)
    assert list(tmp_path.iterdir()) == []                             # the temporary cache is gone

# ---- two builders racing at the final rename ----------------------------------------------------

def test_loser_of_the_final_rename_uses_the_winners_cache(tmp_path, monkeypatch):
    "Another builder finishes the same cache between this build's last write and its rename."
    real, won = os.replace, []
    def replace(src, dst):
        if Path(dst) == tmp_path/'c' and not won:
            won.append(1); build_cache(seqs([7, 8]), tmp_path/'c', progress=False)   # the winner
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    assert build_cache(seqs([10]), tmp_path/'c', progress=False) == tmp_path/'c'
    assert won and Corpus(tmp_path/'c').lengths.tolist() == [7, 8]                 # the winner's cache, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c']

def test_loser_of_a_rebuild_race_uses_the_winners_cache(tmp_path, monkeypatch):
    "Two rebuilds (replace=True) of the same cache race: the one that renames second uses the first's."
    build_cache(seqs([5]), tmp_path/'c', progress=False)
    real, won = os.replace, []
    def replace(src, dst):
        if Path(dst) == tmp_path/'c' and '.tmp-' in Path(src).name and not won:
            won.append(1); build_cache(seqs([7, 8]), tmp_path/'c', progress=False, replace=True)
        return real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    build_cache(seqs([10]), tmp_path/'c', progress=False, replace=True)
    assert won and Corpus(tmp_path/'c').lengths.tolist() == [7, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c']

def test_cache_without_recorded_sizes_still_loads(pristine, tmp_path):
    "Caches built before sizes were recorded (same CACHE_VERSION) load; a damaged recordings.json is named on first use."
    folder, name, names, *_ = pristine
    shutil.copytree(folder/name, tmp_path/name)
    index = json.loads((tmp_path/name/'index.json').read_text()); del index['bytes']
    (tmp_path/name/'index.json').write_text(json.dumps(index))
    assert Corpus(tmp_path/name).names == names
    _truncate(tmp_path/name/'recordings.json', 100)
    c = Corpus(tmp_path/name)                                        # not caught by the cheap checks...
    with pytest.raises(ValueError, match='recordings.json.*damaged.*rebuild=True'): c[0]   # ...but named when read

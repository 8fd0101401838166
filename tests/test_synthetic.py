"""snipnb.synthetic: determinism, rigid bodies, labels, splits, difficulty knobs (class subsets: `Corpus.subset`, tests/test_datasets.py)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from snipnb.skeleton import labels_to_segments, segments_to_labels
from snipnb.synthetic import (SYNTHETIC_CLASSES, SYNTHETIC_ACTIONS, SYNTHETIC_SIZES, SyntheticConfig,
                              make_synthetic, synthetic_recording, plan_recording, bone_lengths,
                              anchor_classes, MIN_DEPTH, MIN_SEGMENT_FRAMES)

@pytest.fixture(scope='module')
def quick(): return make_synthetic('quick', progress=False)

def _check_recording(seq, config=None):
    cfg = config or SyntheticConfig()
    assert seq.joints.dtype == np.float32 and seq.joints.shape[1:] == (1, 25, 3)
    assert np.isfinite(seq.joints).all()
    depth = seq.joints[..., 2][(seq.joints != 0).any(-1)]
    assert depth.min() > MIN_DEPTH - 6 * cfg.noise_std - 1e-5            # in front of the camera
    assert cfg.frames[0] <= seq.num_frames <= cfg.frames[1]
    assert cfg.actions[0] <= len(seq.segments) <= cfg.actions[1]
    assert seq.fps == 30 and seq.class_names == SYNTHETIC_CLASSES
    assert labels_to_segments(seq.labels) == seq.segments
    np.testing.assert_array_equal(segments_to_labels(seq.segments, seq.num_frames), seq.labels)
    assert seq.name == f"synth_s{seq.meta['subject']:03d}_r{seq.meta['index']:05d}"
    plan = seq.meta['plan']
    assert plan[0][1] == 0 and plan[-1][2] == seq.num_frames and all(a[2] == b[1] for a, b in zip(plan, plan[1:]))

def test_same_seed_same_arrays_other_seed_differs():
    a, b = synthetic_recording(11, 5, seed=3), synthetic_recording(11, 5, seed=3)
    np.testing.assert_array_equal(a.joints, b.joints); np.testing.assert_array_equal(a.labels, b.labels)
    c = synthetic_recording(11, 5, seed=4)
    assert a.joints.shape != c.joints.shape or not np.array_equal(a.joints, c.joints)

def test_recording_independent_of_generation_order(quick):
    seq = quick['val'][3]
    alone = synthetic_recording(seq.meta['index'], seq.meta['subject'], 'val', 0, SyntheticConfig(), anchor_classes(3))
    np.testing.assert_array_equal(alone.joints, seq.joints)
    again = make_synthetic('quick', progress=False)
    for split in quick:
        for x, y in zip(quick[split], again[split]): np.testing.assert_array_equal(x.joints, y.joints)

def test_bone_lengths_constant_within_recording_and_differ_between_subjects():
    lengths = []
    for index, subject in ((0, 1), (1, 2), (2, 3)):
        seq = synthetic_recording(index, subject, clean=True)
        L = bone_lengths(seq.joints)[:, 0]
        np.testing.assert_allclose(L.max(0) - L.min(0), 0, atol=1e-4)   # float32 coordinates several metres from the camera
        lengths.append(L[0])
    assert all(np.abs(lengths[i] - lengths[j]).max() > 0.01 for i in range(3) for j in range(i))
    # clean=True is the same motion as a config without noise and dropouts
    quiet = synthetic_recording(0, 1, config=SyntheticConfig(noise_std=0, dropout_rate=0))
    np.testing.assert_array_equal(quiet.joints, synthetic_recording(0, 1, clean=True).joints)

def test_same_subject_same_body_across_recordings():
    L1 = bone_lengths(synthetic_recording(3, 7, clean=True).joints)[0, 0]
    L2 = bone_lengths(synthetic_recording(4, 7, clean=True).joints)[0, 0]
    np.testing.assert_allclose(L1, L2, atol=1e-4)

def test_sensor_noise_and_dropouts():
    noisy, clean = synthetic_recording(5, 2), synthetic_recording(5, 2, clean=True)
    kept = (noisy.joints != 0).all(-1)
    diff = (noisy.joints - clean.joints)[kept]
    assert 0.5 * SyntheticConfig().noise_std < diff.std() < 2 * SyntheticConfig().noise_std
    assert all(0 <= s < e <= noisy.num_frames for _, s, e, _ in noisy.meta['dropouts'])

def test_quick_splits(quick):
    assert {k: len(v) for k, v in quick.items()} == SYNTHETIC_SIZES['quick']
    for split, seqs in quick.items():
        assert {l for s in seqs for l, *_ in s.segments} == set(range(1, len(SYNTHETIC_CLASSES)))   # every class
        for s in seqs:
            _check_recording(s)
            assert s.meta['split'] == split and s.meta['labels_for_training'] == (split != 'pretrain')
    subjects = {k: {s.meta['subject'] for s in v} for k, v in quick.items()}
    splits = list(subjects)
    assert all(not subjects[a] & subjects[b] for i, a in enumerate(splits) for b in splits[i + 1:])
    names = [s.name for v in quick.values() for s in v]
    assert len(set(names)) == len(names)

def test_stand_up_follows_sit_down(quick):
    for s in quick['train']:
        kinds = [k for k, *_ in s.meta['plan']]
        for i, k in enumerate(kinds):
            if k == 'sit down': assert kinds[i + 1] == 'stand up' or kinds[i + 1:i + 3] == ['background seated', 'stand up']
            if k == 'stand up': assert 'sit down' in kinds[max(0, i - 2):i]

@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 99999), subject=st.integers(1, 999), difficulty=st.floats(0, 1))
def test_recording_invariants(seed, index, subject, difficulty):
    cfg = SyntheticConfig.from_difficulty(difficulty)
    _check_recording(synthetic_recording(index, subject, seed=seed, config=cfg), cfg)

@settings(deadline=None, max_examples=200)
@given(seed=st.integers(0, 2**31), anchors=st.lists(st.sampled_from(SYNTHETIC_ACTIONS), max_size=3, unique=True),
       background=st.floats(0, 0.6))
def test_plan_invariants(seed, anchors, background):
    cfg = SyntheticConfig(background_fraction=background)
    plan = plan_recording(np.random.default_rng(seed), cfg, tuple(anchors))
    kinds = [k for k, *_ in plan]
    actions = [k for k in kinds if k in SYNTHETIC_ACTIONS]
    assert cfg.frames[0] <= plan[-1][2] <= cfg.frames[1] and cfg.actions[0] <= len(actions) <= cfg.actions[1]
    assert set(anchors) <= set(actions)
    assert all(e - s >= MIN_SEGMENT_FRAMES for _, s, e in plan)
    assert all(a != b for a, b in zip(kinds, kinds[1:]))          # neighbours never merge into one segment

def test_difficulty_knobs():
    easy, medium, hard = (SyntheticConfig.from_difficulty(d) for d in ('easy', 'medium', 'hard'))
    for knob in ('noise_std', 'dropout_rate', 'transition_s', 'confusability', 'camera_yaw_deg', 'distractor_rate'):
        assert getattr(easy, knob) < getattr(medium, knob) < getattr(hard, knob)
    assert SyntheticConfig() == medium
    assert SyntheticConfig.from_difficulty(0.3, noise_std=0.0).noise_std == 0
    with pytest.raises(ValueError, match='easy'): SyntheticConfig.from_difficulty('impossible')
    with pytest.raises(ValueError): SyntheticConfig.from_difficulty(2.0)
    with pytest.raises(TypeError): SyntheticConfig.from_difficulty(nois_std=0.1)

def test_sizes():
    with pytest.raises(ValueError, match='quick'): make_synthetic('huge', progress=False)
    with pytest.raises(ValueError, match='at least'): make_synthetic(10, progress=False)
    small = make_synthetic(24, seed=2, difficulty='easy', progress=False)
    assert sum(map(len, small.values())) == 24 and all(len(v) >= 5 for v in small.values())
    assert all(s.meta['difficulty'] == 0 for v in small.values() for s in v)

def test_default_benchmark_is_unchanged_by_the_domain_knobs():
    "The benchmark's recordings are pinned (generator version 1): the domain knobs' defaults draw the same numbers as before them."
    import hashlib
    from snipnb.synthetic import synthetic_recording, anchor_classes
    h = hashlib.sha1()
    for i in range(6): h.update(synthetic_recording(i, 1 + i % 3, 'train', 0, anchors=anchor_classes(i)).joints.tobytes())
    assert h.hexdigest() == '75682996725bbf394b2a0c644fd00a445080931d'    # measured before the domain knobs existed (31054a8)

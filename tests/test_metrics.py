"""snipnb.metrics: hand-computed cases, invariants (hypothesis), slow references, and the PKU-MMD fixture."""
import json
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from snipnb.metrics import (detection_map, detection_ap, pkummd_map, pkummd_match, read_pkummd_predictions,
                            read_pkummd_ground_truth, write_pkummd_predictions, frame_accuracy, edit_score,
                            f1_at_overlap, segment_counts, segmentation_metrics, segment_iou)

GT = [('v', 1, 0, 10), ('v', 1, 20, 30)]

# ---------- detection mAP: hand-computed cases
def test_perfect_and_empty():
    assert detection_map([('v', 1, 0, 10, .9), ('v', 1, 20, 30, .8)], GT) == {.1: 1., .2: 1., .3: 1., .4: 1., .5: 1., 'mean': 1.}
    assert detection_map([], GT, tious=(.5,)) == {.5: 0., 'mean': 0.}

def test_ranked_ap():
    preds = [('v', 1, 0, 10, .9), ('v', 1, 40, 50, .8), ('v', 1, 21, 30, .7)]
    assert detection_map(preds, GT, tious=(.5,))[.5] == pytest.approx(.5 + .5 * 2 / 3)
    assert detection_map(preds, GT, tious=(.95,))[.95] == pytest.approx(.5)

def test_class_without_ground_truth_is_excluded():
    r = detection_map([('v', 1, 0, 10, .9), ('v', 1, 20, 30, .8), ('v', 2, 0, 5, .99)], GT + [('w', 3, 0, 5)],
                      tious=(.5,), per_class=True)
    assert r[.5] == .5 and sorted(r['per_class']) == [1, 3]
    ap, classes = detection_ap([('v', 2, 0, 5, .99)], GT)
    assert list(classes) == [1, 2] and ap[0, 0] == 0 and np.isnan(ap[0, 1])

def test_ties_keep_input_order():
    gt = [('v', 1, 0, 10)]
    assert detection_map([('v', 1, 40, 50, .5), ('v', 1, 0, 10, .5)], gt, tious=(.5,))[.5] == pytest.approx(.5)
    assert detection_map([('v', 1, 0, 10, .5), ('v', 1, 40, 50, .5)], gt, tious=(.5,))[.5] == 1.

def test_touching_segments_do_not_overlap():
    assert segment_iou([0], [10], [10], [20])[0, 0] == 0
    assert detection_map([('v', 1, 10, 20, .9)], [('v', 1, 0, 10)], tious=(1e-9,))[1e-9] == 0

def test_best_free_ground_truth_is_taken():
    assert detection_map([('v', 1, 3, 13, .9), ('v', 1, 0, 10, .8)], [('v', 1, 0, 10), ('v', 1, 4, 14)], tious=(.5,))[.5] == 1.

def test_arrays_and_dataframes():
    preds = [(1, 1, 0, 10, .9), (1, 1, 40, 50, .8)]
    ref = detection_map(preds, [(1, 1, 0, 10)])
    assert detection_map(np.array(preds), np.array([(1, 1, 0, 10)])) == ref

def test_dataframes():
    pd = pytest.importorskip('pandas')
    preds = [(1, 1, 0, 10, .9), (1, 1, 40, 50, .8)]
    ref = detection_map(preds, [(1, 1, 0, 10)])
    assert detection_map(pd.DataFrame(preds), pd.DataFrame([(1, 1, 0, 10)])) == ref

# ---------- detection mAP: a slow reference (loops, as BABEL's getLocMAP)
def _ap_from_pr(prec, rec):
    mprec, mrec = np.r_[0, prec, 0], np.r_[0, rec, 1]
    for i in range(len(mprec) - 2, -1, -1): mprec[i] = max(mprec[i], mprec[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])

def slow_map(preds, gts, th):
    aps = []
    for c in sorted({g[1] for g in gts}):
        P = sorted([p for p in preds if p[1] == c], key=lambda p: -p[4])  # Python's sort is stable
        G = [g for g in gts if g[1] == c]; npos = len(G); tp = []
        for p in P:
            best, best_j = 0, None
            for j, g in enumerate(G):
                if g[0] != p[0]: continue
                inter = max(0, min(g[3], p[3]) - max(g[2], p[2])); union = (g[3] - g[2]) + (p[3] - p[2]) - inter
                iou = inter / union if union > 0 else 0.
                if iou >= th and iou > best: best, best_j = iou, j
            if best_j is not None: del G[best_j]
            tp.append(best_j is not None)
        if not any(tp): aps.append(0.); continue
        ctp = np.cumsum(tp)
        aps.append(_ap_from_pr(ctp / np.arange(1, len(tp) + 1), ctp / npos))
    return float(np.mean(aps))

def random_detections(rng, n_gt=15, n_pred=40, ties=False):
    def seg():
        s = int(rng.integers(0, 97)); return s, int(min(100, s + rng.integers(1, 30)))
    gts = [(f'v{rng.integers(3)}', int(rng.integers(1, 4)), *seg()) for _ in range(n_gt)]
    scores = rng.integers(0, 5, n_pred) / 5 if ties else rng.permutation(n_pred) / n_pred
    return [(f'v{rng.integers(3)}', int(rng.integers(1, 4)), *seg(), float(scores[k])) for k in range(n_pred)], gts

@pytest.mark.parametrize('ties', [False, True])
def test_matches_slow_reference(ties):
    rng = np.random.default_rng(0)
    for _ in range(60):
        preds, gts = random_detections(rng, ties=ties)
        ours = detection_map(preds, gts, tious=(.1, .3, .5, .7))
        for t in (.1, .3, .5, .7): assert ours[t] == pytest.approx(slow_map(preds, gts, t), abs=1e-12)

# ---------- detection mAP: invariants
seeds = st.integers(0, 2**32 - 1)

@settings(deadline=None, max_examples=60)
@given(seeds)
def test_shuffling_predictions_with_distinct_scores(seed):
    rng = np.random.default_rng(seed)
    preds, gts = random_detections(rng)
    shuffled = [preds[i] for i in rng.permutation(len(preds))]
    assert detection_map(shuffled, gts) == pytest.approx(detection_map(preds, gts), abs=1e-12)

@settings(deadline=None, max_examples=60)
@given(seeds)
def test_perfect_prediction_scores_one(seed):
    rng = np.random.default_rng(seed)
    _, gts = random_detections(rng, n_gt=int(rng.integers(1, 20)))
    preds = [(*g, float(rng.random())) for g in gts]
    assert detection_map(preds, gts)['mean'] == pytest.approx(1.)

@settings(deadline=None, max_examples=60)
@given(seeds)
def test_monotone_score_transform(seed):
    rng = np.random.default_rng(seed)
    preds, gts = random_detections(rng, ties=bool(seed % 2))
    moved = [(*p[:4], np.exp(3 * p[4]) - 7) for p in preds]
    assert detection_map(moved, gts) == detection_map(preds, gts)

# ---------- PKU-MMD: loops written the way the official evaluate.py reads
# (ECHO960/PKU-MMD, evaluate.py at b492698ba826527268a9086b53b761a175921570: calc_pr, match, f1, ap, process)
def ref_overlap(p, g):  # rows (label, start, end, confidence, video)
    if int(p[0]) != int(g[0]) or p[4] != g[4]: return 0
    return (min(p[2], g[2]) - max(p[1], g[1])) / (max(p[2], g[2]) - min(p[1], g[1]))

def ref_match(props, ratio, grounds):
    chosen = [-1] * len(props); count = [0] * len(grounds)
    for x, p in enumerate(props):
        for y, g in enumerate(grounds):
            if int(g[0]) != int(p[0]): continue
            if ref_overlap(p, g) < ratio: continue
            if ref_overlap(p, g) < ref_overlap(p, grounds[chosen[x]]): continue  # chosen[x] == -1: grounds[-1]
            chosen[x] = y
        if chosen[x] != -1: count[chosen[x]] += 1
    return chosen, count, sum(c > 0 for c in count)

def ref_pr(positive, n, g): return (positive / n, positive / g) if n and g else (0, 0)

def ref_f1(props, ratio, grounds):
    positive = ref_match(props, ratio, grounds)[2]
    p, r = ref_pr(positive, len(props), len(grounds))
    return 2 * p * r / (p + r)  # ZeroDivisionError when nothing is hit, as the script

def ref_ap(props, ratio, grounds):
    props = sorted(props, key=lambda x: x[3])
    chosen, count, positive = ref_match(props, ratio, grounds)
    left = len(props); best, old_r = ref_pr(positive, left, len(grounds)); score = 0
    for x in range(len(props)):
        left -= 1
        if chosen[x] == -1: continue
        count[chosen[x]] -= 1
        if count[chosen[x]] == 0: positive -= 1
        p, r = ref_pr(positive, left, len(grounds))
        if p > best: best = p
        score += best * (old_r - r); old_r = r
    return score

def official_metric(pred_by_video, gt_by_video, theta, n_labels=51):
    "process(): videos in the order given, proposals and ground truths pooled class by class."
    vp = [[(*map(float, p[:4]), v) for p in pred_by_video[v]] for v in pred_by_video]
    vg = [[(*map(float, g[:3]), 1., v) for g in gt_by_video.get(v, [])] for v in pred_by_video]
    a_props = [[p for x in vp for p in x if int(p[0]) == c] for c in range(n_labels + 1)]
    a_grounds = [[g for x in vg for g in x if int(g[0]) == c] for c in range(n_labels + 1)]
    all_props, all_grounds = sum(a_props, []), sum(a_grounds, [])
    try: f1 = ref_f1(all_props, theta, all_grounds)
    except ZeroDivisionError: f1 = 0.
    return {'f1': f1, 'ap': ref_ap(all_props, theta, all_grounds),
            'map_action': sum(ref_ap(a_props[c], theta, a_grounds[c]) for c in range(1, n_labels + 1)) / n_labels,
            'map_video': sum(ref_ap(vp[x], theta, vg[x]) for x in range(len(vp))) / len(vp),
            '2dap': sum(ref_ap(all_props, (r + 1) * .05, all_grounds) for r in range(20)) / 20}

def _by_video(rows):
    out = {}
    for r in rows: out.setdefault(r[0], []).append(tuple(r[1:5]))
    return out

def test_pkummd_shared_ground_truth():
    gt = [('a', 1, 0, 10, 1), ('a', 2, 20, 30, 2), ('b', 1, 0, 10, 1)]
    preds = [('a', 1, 0, 10, .9), ('a', 1, 1, 10, .8), ('a', 2, 20, 30, .7), ('b', 1, 0, 10, .6)]
    assert list(pkummd_match(preds, gt)) == [0, 0, 1, 2]                 # two proposals on ground truth 0
    r = pkummd_map(preds, gt, num_classes=2)
    assert r['f1'] == pytest.approx(2 * .75 / 1.75)                      # 3 ground truths hit, 4 proposals
    assert r['ap'] == pytest.approx(5 / 6) and r['map_video'] == pytest.approx(11 / 12)
    assert pkummd_map([('b', 1, 0, 10, .6)], [('b', 1, 0, 10)], num_classes=1)['ap'] == 1.  # one perfect proposal
    # the best ground truth of each proposal, not a one-to-one assignment: both proposals take gt 1 (9/11 and 1)
    assert list(pkummd_match([('v', 1, 3, 13, .9), ('v', 1, 4, 14, .8)], [('v', 1, 0, 10), ('v', 1, 4, 14)])) == [1, 1]

def test_pkummd_match_starts_against_the_last_ground_truth():
    a, b, p = ('v', 1, 0, 10), ('v', 2, 100, 110), [('v', 1, 20, 30, .9)]   # overlap with a: -10/30
    assert list(pkummd_match(p, [a, b], -.5)) == [-1] and list(pkummd_match(p, [b, a], -.5)) == [1]
    assert ref_match([(1, 20, 30, .9, 'v')], -.5, [(1, 0, 10, 1, 'v'), (2, 100, 110, 1, 'v')])[0] == [-1]
    assert ref_match([(1, 20, 30, .9, 'v')], -.5, [(2, 100, 110, 1, 'v'), (1, 0, 10, 1, 'v')])[0] == [1]
    assert list(pkummd_match([('v', 1, 0, 10, .9)], [('w', 1, 50, 60)], 0.)) == [0]  # another video: overlap 0 >= 0
    assert list(pkummd_match([('v', 1, 0, 10, .9)], [('v', 1, 0, 10), ('v', 1, 0, 10)])) == [1]  # ties: the last

def test_pkummd_f1_is_zero_where_the_script_raises():
    preds, gt = [('v', 1, 5, 15, .9)], [('v', 1, 20, 30)]
    with pytest.raises(ZeroDivisionError): ref_f1([(1, 5, 15, .9, 'v')], .5, [(1, 20, 30, 1, 'v')])
    assert pkummd_map(preds, gt)['f1'] == 0. and pkummd_map([], gt)['f1'] == 0.

def test_pkummd_2dap_thresholds_are_floats():
    r = pkummd_map([('v', 1, 0, 3, .9)], [('v', 1, 0, 10)], theta=.3)  # overlap exactly .3; 6 * .05 > .3
    assert (r['ap'], r['2dap']) == (1., 5 / 20)

@pytest.mark.parametrize('theta', [.1, .3, .5, 0., -.4])
def test_pkummd_matches_official_loop_on_random_data(theta):
    rng = np.random.default_rng(1)
    for k in range(30):
        preds, gts = random_detections(rng, n_gt=25, n_pred=50, ties=bool(k % 2))
        gts = [g + (1,) for g in gts]
        videos = sorted({p[0] for p in preds} | {g[0] for g in gts})
        preds.sort(key=lambda p: videos.index(p[0]))  # rows video by video, as the files are read
        gt_v = {v: [g[1:] for g in gts if g[0] == v] for v in videos}
        pred_v = {v: [p[1:] for p in preds if p[0] == v] for v in videos}
        ref = official_metric(pred_v, gt_v, theta, n_labels=3)
        ours = pkummd_map(preds, gts, theta=theta, num_classes=3, videos=videos)
        for key in ref: assert ours[key] == ref[key], (k, key)   # same operations in the same order: bit for bit

def test_pkummd_write_read_roundtrip(tmp_path):
    preds = [('0001-M', 5, 187, 281, 0.338812), ('0001-M', 43, 276, 430, 0.447702), ('0002-L', 2, 0, 9, 1.0)]
    write_pkummd_predictions(preds, tmp_path, videos=['0003-R'])
    assert (tmp_path/'0003-R.txt').read_text() == ''
    assert read_pkummd_predictions(tmp_path) == preds

@pytest.fixture
def pkummd_fixture(shared_data):
    folder = shared_data/'pkummd_eval'
    if not (folder/'expected.json').exists(): pytest.skip(f"{folder} has no expected.json")
    return folder, json.loads((folder/'expected.json').read_text())

def test_pkummd_fixture_matches_the_reference_loops(pkummd_fixture):
    folder, _ = pkummd_fixture
    preds, gts = read_pkummd_predictions(folder/'pred'), read_pkummd_ground_truth(folder/'ground')
    videos = sorted({p[0] for p in preds})
    for theta in (.1, .5):
        ref = official_metric(_by_video(preds), {v: [g[1:] for g in gts if g[0] == v] for v in videos}, theta)
        ours = pkummd_map(preds, gts, theta=theta)
        for k in ref: assert ours[k] == ref[k], (theta, k)

def test_pkummd_fixture_expected_json(pkummd_fixture):
    folder, expected = pkummd_fixture
    preds, gts = read_pkummd_predictions(folder/'pred'), read_pkummd_ground_truth(folder/'ground')
    for th in ('0.1', '0.3', '0.5'):
        ours = pkummd_map(preds, gts, theta=float(th))
        for k, v in expected[th].items(): assert abs(ours[k] - v) < 1e-9, (th, k)
        assert abs(ours['2dap'] - expected['2dap']) < 1e-9

# ---------- segmentation metrics (MS-TCN)
TRUE = [0, 1, 1, 1, 1, 0, 2, 2, 2, 2]

def test_segmentation_hand_cases():
    assert frame_accuracy(TRUE, TRUE) == 1 and frame_accuracy([1, 0, 0, 2], [1, 1, -1, -1]) == .5
    assert edit_score(TRUE, TRUE) == 1 and edit_score([0] * 10, TRUE) == 0
    assert edit_score([1, 0, 1, 2], [1, 1, 1, 2]) == pytest.approx(2 / 3)
    assert f1_at_overlap(TRUE, TRUE) == {.1: 1., .25: 1., .5: 1.}
    assert f1_at_overlap([0] * 10, TRUE) == {.1: 0., .25: 0., .5: 0.}
    assert segment_counts([0, 1, 0, 0, 0, 0, 2, 2, 2, 2], TRUE, .5) == (1, 1, 1)
    assert segment_counts([0, 1, 1, 0, 1, 0, 2, 2, 2, 2], TRUE, .1) == (2, 1, 0)
    assert segment_counts([1, 0, 0], [0, 1, 1], .1) == (0, 1, 1)  # touching: no shared frame
    m = segmentation_metrics([[0, 1, 1, 0, 0, 0, 2, 2, 2, 2], [1, 1, 0, 0]], [TRUE, [1, 1, 1, 0]])
    assert m == pytest.approx({'accuracy': 11 / 14, 'edit': 1., 'f1@10': 1., 'f1@25': 1., 'f1@50': 1.})

@settings(deadline=None, max_examples=60)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
def test_segmentation_perfect(labels):
    m = segmentation_metrics([labels], [labels])
    assert m['accuracy'] == 1 and m['edit'] == 1
    if any(labels): assert m['f1@50'] == 1

# ---------- bad input is refused, naming the row (issue 12, section 4); valid input scores as before (fixture tests above)
NAN = float('nan')
PRED = [('v', 1, 0, 10, .9), ('v', 1, 20, 30, .8)]

@pytest.mark.parametrize('metric', [detection_map, pkummd_map])
def test_nan_scores_are_refused(metric):
    with pytest.raises(ValueError, match=r"predictions: row 1 \('v', 1, 20, 30, nan\): score is nan"):
        metric([PRED[0], ('v', 1, 20, 30, NAN)], GT)
    with pytest.raises(ValueError, match=r'row 0 .*score is nan'): metric([('v', 1, 0, 10, NAN), ('v', 1, 40, 50, NAN)], GT)
    with pytest.raises(ValueError, match=r'ground truth: row 0 .*start is nan'): metric(PRED, [('v', 1, NAN, 10)])

@pytest.mark.parametrize('metric', [detection_map, pkummd_map, pkummd_match])
def test_segments_must_end_after_they_start(metric):
    with pytest.raises(ValueError, match=r"ground truth: row 1 \('v', 1, 30, 20\): end 20 <= start 30"):
        metric(PRED, [('v', 1, 0, 10), ('v', 1, 30, 20)])
    with pytest.raises(ValueError, match=r"predictions: row 0 \('v', 1, 5, 5, 0.9\): end 5 <= start 5"):
        metric([('v', 1, 5, 5, .9)], GT)

def test_labels_outside_the_class_range_are_refused():
    with pytest.raises(ValueError, match=r'predictions: row 1 .*label 0 .*1\.\.'):   # 0 is background: never a segment
        detection_map([PRED[0], ('v', 0, 20, 30, .8)], GT)
    with pytest.raises(ValueError, match=r'ground truth: row 0 .*label 4 outside 1\.\.3'):
        detection_map(PRED, [('v', 4, 0, 10)], num_classes=3)
    with pytest.raises(ValueError, match=r'predictions: row 0 .*label 0 outside 1\.\.51'):
        pkummd_map([('v', 0, 0, 10, .9)], GT)
    with pytest.raises(ValueError, match=r'ground truth: row 0 .*label 52 outside 1\.\.51'):
        pkummd_map(PRED, [('v', 52, 0, 10)])
    with pytest.raises(ValueError, match=r'predictions: row 0 .*label 1\.5 is not an integer'):
        detection_map([('v', 1.5, 0, 10, .9)], GT)
    with pytest.raises(ValueError, match=r"ground truth: row 0 .*'x'.*not a number"):
        detection_map(PRED, [('v', 1, 'x', 10)])
    assert detection_map(PRED, GT, num_classes=1)['mean'] == 1.

def test_thresholds_are_checked():
    with pytest.raises(ValueError, match='no tIoU thresholds'): detection_map(PRED, GT, tious=())
    with pytest.raises(ValueError, match=r'tIoU thresholds must be in \(0, 1\]'): detection_map(PRED, GT, tious=(.5, NAN))
    with pytest.raises(ValueError, match=r'tIoU thresholds must be in \(0, 1\]'): detection_ap(PRED, GT, tious=(0,))
    with pytest.raises(ValueError, match='theta is nan'): pkummd_map(PRED, GT, theta=NAN)

def test_missing_or_empty_pkummd_folders_are_refused(tmp_path):
    for read in (read_pkummd_predictions, read_pkummd_ground_truth):
        with pytest.raises(FileNotFoundError, match=f'{tmp_path}/nowhere: no such folder'): read(tmp_path/'nowhere')
        with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no '\*.txt' files"): read(tmp_path)
    (tmp_path/'a.txt').write_text('')                                   # a video without proposals: no rows, no error
    assert read_pkummd_predictions(tmp_path) == []

def test_pkummd_prediction_files_with_bad_numbers_name_the_line(tmp_path):
    for text, why in [('1,0,10,nan\n', 'score is nan'), ('0,0,10,.5\n', 'label 0 outside 1..K'), ('1.5,0,10,.5\n', 'label 1.5 is not an integer'),
                      ('1,10,10,.5\n', 'end 10 <= start 10')]:
        (tmp_path/'v.txt').write_text('1,0,10,.9\n' + text)
        with pytest.raises(ValueError, match=rf'v.txt, line 2: .*{why}'): read_pkummd_predictions(tmp_path)

def test_segmentation_metrics_refuse_bad_labels():
    with pytest.raises(ValueError, match=r'video 0: predicted frame 2 is nan'): segmentation_metrics([[0, 1, NAN]], [[0, 1, 1]])
    with pytest.raises(ValueError, match=r'video 1: predicted frame 2 has label 7 outside 0\.\.2'):
        segmentation_metrics([[0, 1, 1], [0, 1, 7]], [[0, 1, 1], [0, 1, 1]], num_classes=2)
    with pytest.raises(ValueError, match=r'video 0: true frame 0 has label -2 outside 0\.\.2 \(or -1: ignored\)'):
        segmentation_metrics([[0, 1, 1]], [[-2, 1, 1]], num_classes=2)
    with pytest.raises(ValueError, match=r'video 0: predicted frame 1 has label -1'): segmentation_metrics([[0, -1]], [[0, 1]])
    with pytest.raises(ValueError, match='no overlap thresholds'): segmentation_metrics([[0, 1]], [[0, 1]], overlaps=())
    with pytest.raises(ValueError, match=r'overlap thresholds must be in \(0, 1\]'): f1_at_overlap([0, 1], [0, 1], overlaps=(0,))
    with pytest.raises(ValueError, match=r'predicted frame 0 is nan'): edit_score([NAN, 1], [0, 1])
    assert segmentation_metrics([[0, 1, 1]], [[0, 1, -1]], num_classes=1)['accuracy'] == 1.     # -1: ignored (true labels)

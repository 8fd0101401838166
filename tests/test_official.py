"""The official configurations: pinned parameter counts, one official SnipCLR step on CPU, and the DC and
CrosSCLR terms against slow reference computations written from the official code."""
import math
import pytest
import torch, torch.nn.functional as F
from snipnb.backbones import count_parameters, REFERENCE_PARAMS
from snipnb.contrastive import (build_pretext, preset_config, CrosSCLR, PRETEXTS, METHODS, PRESETS, OFFICIAL_COUNTS,
                                OFFICIAL_UNUSED, moco_logits)

# OFFICIAL_COUNTS (snipnb.contrastive): encoder_q parameters of the official code, counted by instantiating the official
# classes (sources in 08_contrastive). Here they are rebuilt from their parts, each part counted on snipnb's modules.
LINEAR = 256 * 128 + 128                              # RVTCLR/SnipCLR fc1 (and fc2): one Linear(256, 128)
MLP = 256 * 256 + 256 + 256 * 128 + 128               # MLP head (AimCLR, CrosSCLR), the DC branch's fc, SnipCLR's mlp2
DC = 2 * 256 * 128 + (3 * LINEAR + 128 * 256 + 256 + 2 * 256) + MLP   # IntraPart + InterPart + fc
SNIPCLR_BACKBONE = REFERENCE_PARAMS['agcn', (2, 5, 8)] - 2 * 150      # 2s-AGCN without its data BN over M*V*C = 150

@pytest.mark.parametrize('method', list(OFFICIAL_COUNTS))
def test_official_encoder_counts(method):
    pt = build_pretext(method, preset='official', queue_size=8)
    assert count_parameters(pt.encoder_q) == OFFICIAL_COUNTS[method] - OFFICIAL_UNUSED.get(method, 0)

def test_official_counts_are_the_sum_of_their_parts():
    quarter = REFERENCE_PARAMS['stgcn16', (5, 8)]
    assert OFFICIAL_COUNTS['aimclr'] == OFFICIAL_COUNTS['crossclr'] == quarter + MLP
    assert OFFICIAL_COUNTS['rvtclr'] == quarter + 2 * LINEAR + DC
    assert OFFICIAL_COUNTS['snipclr'] == SNIPCLR_BACKBONE + 2 * LINEAR + DC + MLP + OFFICIAL_UNUSED['snipclr']

def test_official_snipclr_parts():
    enc = build_pretext('snipclr', preset='official', queue_size=8).encoder_q
    assert count_parameters(enc.backbone) == SNIPCLR_BACKBONE
    assert count_parameters(enc.heads) == 2 * LINEAR
    assert count_parameters(enc.dc) == DC
    assert count_parameters(enc.snippet) == MLP
    assert enc.backbone.config['strides'] == [2, 5, 8] and enc.backbone.config['data_bn'] is None
    assert float(enc.backbone.A[2].max()) == 1.0 and float(enc.backbone.A[2].sum(0).max()) > 1   # raw 0/1 graph

def test_presets_override_and_snipnb_corrections():
    off, ours = preset_config('snipclr', 'official'), preset_config('snipclr', 'snipnb')
    assert off['options']['similarity'] == 'dot' and ours['options']['similarity'] == 'cosine'
    assert off['backbone_options']['graph'] == 'agcn_raw' and ours['backbone_options']['graph'] == 'agcn'
    assert 'lr_rule' not in ours['train'] and off['train']['lr_rule'] == 'snipclr'
    assert ours['train']['clip_len'] == off['train']['clip_len'] == 300
    pt = build_pretext('snipclr', preset='official', queue_size=8, strides=(5, 8), similarity='cosine')
    assert pt.backbone.config['strides'] == [5, 8] and pt.similarity == 'cosine'
    assert set(PRESETS) == {'light', 'official', 'snipnb'} and all(set(p) == set(METHODS) for p in PRESETS.values())
    with pytest.raises(ValueError, match='unknown preset'): build_pretext('aimclr', preset='paper')

def test_official_snipclr_step_on_cpu():
    "One official-preset SnipCLR step on 300-frame clips: base + DC + snippet parts, 150-frame views, a 19-snippet grid."
    torch.manual_seed(0)
    pt = build_pretext('snipclr', preset='official', queue_size=64)
    assert pt.config['query_augment'] == 'strong' and pt.config['key_augment'] == 'skeletonclr'
    seen = []
    hook = pt.encoder_q.register_forward_hook(lambda m, args, kw, out: seen.append((tuple(args[0].shape), kw.get('dc', False), out)),
                                              with_kwargs=True)
    x = torch.randn(2, 3, 300, 25, 1)
    out = pt(x, torch.Generator().manual_seed(0), epoch=0)
    hook.remove()
    parts = {k: v for k, v in out.items() if k != 'loss'}
    assert set(parts) == {'instance', 'tempo_positive', 'tempo_rank', 'dc', 'snippet'}
    weights = {'snippet': 1.5}
    assert out['loss'].item() == pytest.approx(sum(weights.get(k, 1.0) * v.item() for k, v in parts.items()), rel=1e-6)
    (query_shape, _, q), (dc_shape, is_dc, _) = seen
    assert query_shape == (2, 3, 150, 25, 1) and dc_shape == (2, 3, 300, 25, 1) and is_dc    # tempo view; full-length DC view
    assert q['snippets'].shape == (2, 128, 19) and q['pooled'].shape == (2, 256, 19)
    out['loss'].backward()
    assert pt.encoder_q.dc.intra.se[0].weight.grad is not None
    assert int(pt.queue.ptr) == 2 and int(pt.snippet_queue.ptr) == 0        # the official frozen snippet pointer

# ---- the DC term against a slow reference -------------------------------------------------------------
def _identity_rvtclr(**kw):
    "RVTCLR with identity views and a fixed key encoder (momentum 1), so the views can be rebuilt outside."
    torch.manual_seed(0)
    return build_pretext('rvtclr', 'stgcn16', queue_size=24, num_persons=1, momentum=1.0, temperature=0.5, query_augment='none',
                         key_augment='none', dc_augment='none', **kw)

@pytest.mark.parametrize('epoch, unscaled', [(0, False), (0, True), (3, False), (3, True)])
def test_dc_term_against_reference(epoch, unscaled):
    from snipnb.augment import relative_tempo
    pt = _identity_rvtclr(mining_epoch=2, dc_unscaled_positive=unscaled).eval()   # eval: BN is a fixed function
    x = torch.randn(4, 3, 48, 25, 1)
    queue = pt.queue.keys.clone().double()
    out = pt(x, torch.Generator().manual_seed(7), epoch=epoch)
    views = relative_tempo(x, x, torch.Generator().manual_seed(7))
    with torch.no_grad():
        q, k = pt.encoder_q(views.query)['z'].double(), pt.encoder_k(views.key)['z'].double()
        q_dc = pt.encoder_q(x, dc=True)['dc'].double()
    T, mining = 0.5, epoch >= 2           # a mild temperature keeps both losses far from zero
    dc_total, inst_total = 0., 0.
    for n in range(4):
        inst = [float(q[n] @ k[n]) / T] + [float(q[n] @ queue[j]) / T for j in range(len(queue))]
        pos = float(q_dc[n] @ k[n]) / (1.0 if unscaled and not mining else T)
        dcl = [pos] + [float(q_dc[n] @ queue[j]) / T for j in range(len(queue))]
        zi, zd = math.log(sum(math.exp(v) for v in inst)), math.log(sum(math.exp(v) for v in dcl))
        target = [math.exp(v - zi) for v in inst]
        dc_total -= sum(t * (v - zd) for t, v in zip(target, dcl))
        positives = {0}
        if mining:     # top-1 of the instance and of the DC similarities join the mask (official topk_onehot)
            positives |= {1 + max(range(len(queue)), key=lambda j: float(q[n] @ queue[j])),
                          1 + max(range(len(queue)), key=lambda j: float(q_dc[n] @ queue[j]))}
        inst_total -= sum(inst[p] - zi for p in positives) / len(positives)
    assert out['dc'].item() == pytest.approx(dc_total / 4, rel=1e-4)
    assert out['instance'].item() == pytest.approx(inst_total / 4, rel=1e-4)

# ---- CrosSCLR's cross-view mining against a slow reference ----------------------------------------------
def _ckm_reference(qa, ka, qua, qb, qub, T, topk, context):
    "Per sample, as LinguoLi/CrosSCLR net/crossclr.py + processor/pretrain_crossclr.py compute it."
    total = 0.
    K = len(qua)
    for n in range(len(qa)):
        sa = [float(qa[n] @ qua[j]) for j in range(K)]
        sb = [float(qb[n] @ qub[j]) for j in range(K)]
        logits = [float(qa[n] @ ka[n])] + sa + ([sa[j] * sb[j] for j in range(K)] if context else [])
        logits = [v / T for v in logits]
        near = sorted(range(K), key=lambda j: -sb[j])[:topk]
        pos = [0] + [1 + j for j in near] + ([1 + K + j for j in near] if context else [])
        z = math.log(sum(math.exp(v) for v in logits))
        total -= sum(logits[p] - z for p in pos) / len(pos)
    return total / len(qa)

@pytest.mark.parametrize('context', [True, False])
@pytest.mark.parametrize('topk', [1, 3])
def test_crossclr_mining_against_reference(context, topk):
    from snipnb.contrastive import motion_stream, bone_stream
    torch.manual_seed(0)
    pt = CrosSCLR('stgcn16', streams=('joint', 'motion', 'bone'), cross_epoch=1, context=context, topk=topk,
                  queue_size=20, num_persons=1, momentum=1.0, temperature=0.5, query_augment='none', key_augment='none').eval()
    x = torch.randn(3, 3, 24, 25, 1)
    queues = {s: pt._pair(s)[2].keys.clone().double() for s in pt.streams}
    before = pt(x, torch.Generator().manual_seed(0), epoch=0)            # single-stream phase
    inputs = {'joint': x, 'motion': motion_stream(x), 'bone': bone_stream(x)}
    with torch.no_grad():
        q = {s: pt._pair(s)[0](inputs[s])['z'].double() for s in pt.streams}
        k = {s: pt._pair(s)[1](inputs[s])['z'].double() for s in pt.streams}
    for s in pt.streams:   # before the cross epoch: each stream's plain InfoNCE against its own queue
        lg = moco_logits(q[s], k[s], queues[s], 0.5)
        assert before[s].item() == pytest.approx(F.cross_entropy(lg, torch.zeros(3, dtype=torch.long)).item(), rel=1e-4)
    queues = {s: pt._pair(s)[2].keys.clone().double() for s in pt.streams}   # the queues moved by one batch
    after = pt(x, torch.Generator().manual_seed(0), epoch=1)
    for a in pt.streams:
        partners = [b for b in pt.streams if b != a]
        want = sum(_ckm_reference(q[a], k[a], queues[a], q[b], queues[b], 0.5, topk, context) for b in partners) / 2
        assert after[a].item() == pytest.approx(want, rel=1e-4)

def test_crossclr_official_quirks():
    pt = build_pretext('crossclr', preset='official', queue_size=8)
    assert pt.streams == ('joint', 'motion', 'bone') and pt.config['shared_head'] and pt.config['official_momentum']
    assert pt.stream_q['bone'].heads['z'][2] is pt.encoder_q.heads['z']
    x = torch.randn(2, 3, 50, 25, 2)
    joint, motion = ([p.clone() for p in enc.parameters()] for enc in (pt.encoder_k.backbone, pt.stream_k['motion'].backbone))
    pt(x, torch.Generator().manual_seed(0), epoch=150)                   # cross phase: joint keys frozen (official bug)
    assert all(torch.equal(a, b) for a, b in zip(joint, pt.encoder_k.backbone.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(motion, pt.stream_k['motion'].backbone.parameters()))
    ours = build_pretext('crossclr', preset='snipnb', queue_size=8)
    assert not ours.config['shared_head'] and 'bone' in ours.streams

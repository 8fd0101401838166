"""Backbones, U-fusion decoder, heads and localizer: pinned sizes, shapes, gradients, invariances, compilation."""
import os, time
import pytest
import torch, torch.nn as nn
from snipnb.backbones import (BACKBONES, REFERENCE_PARAMS, UNIK_UNUSED_BIAS, build_backbone, count_parameters,
                              backbone_state, load_backbone_state, backbone_from_state, conv_length)
from snipnb.ufusion import UFusion, build_localizer, OFFICIAL_UFUSION_PARAMS
from snipnb.contrastive import MLPHead, SnippetHead

# REFERENCE_PARAMS (snipnb.backbones) holds the counts of the reference implementations, with their sources in
# 05_backbones (backbone only, NTU-25, 3D, M=2). UNIK's reference allocates 250 S_LSU.bias parameters its forward
# never reads; snipnb leaves them out.
@pytest.mark.parametrize('name,strides', list(REFERENCE_PARAMS))
def test_parameter_counts_are_pinned(name, strides):
    ref = REFERENCE_PARAMS[name, strides] - (UNIK_UNUSED_BIAS if name == 'unik' else 0)
    assert count_parameters(build_backbone(name, strides=strides)) == ref

def test_reference_counts_agree_with_each_other():
    for name, width in (('stgcn', 64), ('stgcn16', 16), ('agcn', 64), ('unik', 64)):   # block 2's shortcut conv 1x1 + BN
        assert REFERENCE_PARAMS[name, (2, 5, 8)] - REFERENCE_PARAMS[name, (5, 8)] == width * width + width + 2 * width
    assert REFERENCE_PARAMS['unik', (5, 8)] - UNIK_UNUSED_BIAS == REFERENCE_PARAMS['agcn', (5, 8)]   # W has B's shape

def test_other_pinned_sizes():
    assert count_parameters(build_backbone('unik', num_heads=4)) == 3_787_613 - UNIK_UNUSED_BIAS   # UNIK's NTU config
    assert count_parameters(UFusion((64, 128, 256))) == OFFICIAL_UFUSION_PARAMS                   # SnipCLR NestedUNet

@pytest.mark.parametrize('name', list(BACKBONES))
def test_default_shapes(name):
    net = build_backbone(name)
    out = net(torch.randn(2, 3, 23, 25, 2))
    assert [f.shape[2] for f in out['features'].values()] == net.lengths(23) == [23] * 4 + [12] * 3 + [6] * 3
    assert out['features'][10].shape == (2, net.channels[-1], 6, 25)
    assert out['embedding'].shape == (2, net.channels[-1])

@pytest.mark.parametrize('T', [1, 2, 9, 16, 37, 50, 64, 101])
@pytest.mark.parametrize('strides', [(5, 8), (2, 5, 8)])
def test_shapes_for_many_lengths(T, strides):
    net = build_backbone('stgcn16', strides=strides, channels=(8, 8, 8, 8, 8, 8, 8, 8, 8, 16))
    out = net(torch.randn(2, 3, T, 25, 2))
    expect = T
    for b in range(1, 11):
        if b in strides: expect = (expect - 1) // 2 + 1
        assert out['features'][b].shape == (2, net.channels[b - 1], expect, 25)
        assert conv_length(out['features'][b - 1].shape[2] if b > 1 else T, 2 if b in strides else 1) == expect

@pytest.mark.parametrize('name', list(BACKBONES))
def test_gradients_reach_every_parameter(name):
    net = build_backbone(name, strides=(2, 5, 8))
    net(torch.randn(2, 3, 16, 25, 2))['embedding'].square().mean().backward()
    assert [k for k, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []

def _randomize_bn(net):
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * .1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + .5)
    return net.eval()

@pytest.mark.parametrize('name', list(BACKBONES))
def test_permuting_persons_keeps_the_embedding(name):
    # shared ('vc') data BN; 2s-AGCN/UNIK's per-slot 'mvc' BN is person-order dependent by design
    net = _randomize_bn(build_backbone(name, data_bn='vc', channels=(16,) * 4, strides=(2,)))
    x = torch.randn(2, 3, 12, 25, 3)
    perm = x[..., [2, 0, 1]]
    with torch.no_grad():
        a, b = net(x), net(perm)
    torch.testing.assert_close(a['embedding'], b['embedding'], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a['features'][4], b['features'][4], rtol=1e-5, atol=1e-5)

def test_checkpoint_records_config(tmp_path):
    net = build_backbone('stgcn16', strides=(2, 5, 8))
    torch.save(backbone_state(net), tmp_path/'b.pt')
    state = torch.load(tmp_path/'b.pt', weights_only=True)
    x = torch.randn(2, 3, 16, 25, 2)
    torch.testing.assert_close(backbone_from_state(state).eval()(x)['embedding'], net.eval()(x)['embedding'])
    with pytest.raises(ValueError, match=r"strides.*\[2, 5, 8\].*\[5, 8\]"):
        load_backbone_state(build_backbone('stgcn16'), state)
    with pytest.raises(ValueError, match='channels'):
        load_backbone_state(build_backbone('stgcn'), state)

@pytest.mark.parametrize('T', [37, 50, 64, 100, 150, 300])
@pytest.mark.parametrize('head', ['ufusion', 'linear'])
def test_localizer_output_length_equals_input_length(T, head):
    loc = build_localizer('stgcn16', head=head, num_classes=4, strides=(2, 5, 8))
    assert loc(torch.randn(1, 3, T, 25, 1)).shape == (1, T, 5)

@pytest.mark.parametrize('T', [37, 300])
def test_official_agcn_localizer(T):
    loc = build_localizer('agcn', num_classes=4, strides=(2, 5, 8), num_persons=1)
    assert loc.taps == (1, 7, 10)
    assert loc(torch.randn(1, 3, T, 25, 1)).shape == (1, T, 5)

@pytest.mark.parametrize('taps', [(1, 10), (2, 5, 9, 10), (4, 7, 10), (3,)])
def test_taps_change_without_code_changes(taps):
    loc = build_localizer('stgcn16', taps=taps, num_classes=3, strides=(2, 5, 8))
    assert loc.taps == taps and loc.head.fusion.channels == tuple(loc.backbone.channels[b - 1] for b in taps)
    assert loc(torch.randn(2, 3, 45, 25, 2)).shape == (2, 45, 4)

def test_contrastive_heads():
    feats = build_backbone('stgcn16', strides=(2, 5, 8))(torch.randn(2, 3, 150, 25, 1))
    out = SnippetHead(256)(feats['features'][10])
    assert out['snippets'].shape == (2, 128, 19) and out['pooled'].shape == (2, 256, 19)
    torch.testing.assert_close(out['snippets'].norm(dim=1), torch.ones(2, 19))
    with pytest.raises(ValueError, match='t_grid'): SnippetHead(256, t_grid=20)(feats['features'][10])
    assert MLPHead(256)(feats['embedding']).shape == (2, 128)

@pytest.mark.parametrize('name', list(BACKBONES))
def test_forward_traces_as_one_graph(name):
    "fullgraph=True with dynamo's eager backend: fails on any graph break, without inductor's compile time."
    torch._dynamo.reset()
    net = build_backbone(name, channels=(8,) * 4, strides=(2,)).eval()
    x = torch.randn(2, 3, 12, 25, 2)
    compiled = torch.compile(net, fullgraph=True, backend='eager')
    torch.testing.assert_close(compiled(x)['embedding'], net(x)['embedding'])

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get('SNIPNB_SLOW') != '1', reason='set SNIPNB_SLOW=1: inductor compiles for 1-2 minutes on a cold cache')
def test_inductor_compile_on_cpu():
    "Real torch.compile (inductor) of a small model on CPU, forward and backward (4 s with a warm inductor cache)."
    torch._dynamo.reset()
    net = build_localizer('stgcn16', num_classes=4, strides=(2, 5, 8))
    x = torch.randn(2, 3, 37, 25, 2)
    compiled = torch.compile(net, fullgraph=True)
    t0 = time.time()
    y, y_ref = compiled(x), net(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    y.square().mean().backward()
    assert time.time() - t0 < 300

# Precision check: every model forward+backward in float32 and under bf16 autocast, eager and compiled, against a
# float64 eager reference of the same weights (TF32 off). The loss is a fixed random linear functional of the output.
# Tolerances (relative L2 error of the output and of the full gradient vector, cosine of the gradients):
# - float32, eager or compiled: outputs < 1e-4, gradients < 1e-2 (float32 eager measures ~1e-7 / 2e-4..2e-3 on CPU);
# - bf16 autocast: outputs < 3e-2, gradients < 0.5 with cosine > 0.9 (measured on CPU: outputs 3e-3..1.6e-2,
#   gradients 0.13-0.32, cosine 0.95-0.99). Gradient errors are large because every convolution here feeds a
#   BatchNorm, whose backward removes the mean and the scale direction, so a weight's gradient is a small residual
#   and bf16 rounding of the activations is amplified in it. A plain stack of ten Conv+BN+ReLU layers (no graph, no
#   snipnb code) measures the same: float32 gradients 2.6e-3, bf16 0.26, with bf16 outputs at 2e-3.
def _model(name, strides=(2, 5, 8)):
    return build_localizer('agcn', num_classes=4, strides=strides) if name == 'localizer' else build_backbone(name, strides=strides)

def _run(model, x, w, dtype, compiled):
    model.zero_grad(set_to_none=True)
    fn = torch.compile(model) if compiled else model
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == 'bf16'):
        y = fn(x)
        y = (y['embedding'] if isinstance(y, dict) else y).to(x.dtype)
    (y * w.to(x.dtype)).sum().backward()
    return y.detach().double(), torch.cat([p.grad.flatten().double() for p in model.parameters()])

def _rel(a, b): return float((a - b).norm() / b.norm().clamp_min(1e-30))

def precision_errors(name, device, modes, N=8, T=64):
    "{(dtype, compiled): (output rel err, gradient rel err, gradient cosine)} against float64 eager."
    import copy
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = _model(name).to(device).train()
    x = torch.randn(N, 3, T, 25, 2, device=device)
    with torch.no_grad(): out = model(x)
    w = torch.randn_like(out['embedding'] if isinstance(out, dict) else out)
    y64, g64 = _run(copy.deepcopy(model).double(), x.double(), w, 'fp64', False)
    errs = {}
    for dtype, compiled in modes:
        torch._dynamo.reset()
        y, g = _run(model, x, w, dtype, compiled)
        errs[dtype, compiled] = (_rel(y, y64), _rel(g, g64), float(torch.nn.functional.cosine_similarity(g, g64, dim=0)))
        print(name, device, dtype, 'compiled' if compiled else 'eager', 'out %.2e grad %.2e cos %.4f' % errs[dtype, compiled])
    return errs

def check_precision(errs):
    for (dtype, compiled), (out, grad, cos) in errs.items():
        if dtype == 'fp32': assert out < 1e-4 and grad < 1e-2, (dtype, compiled, out, grad)
        else: assert out < 3e-2 and grad < 0.5 and cos > 0.9, (dtype, compiled, out, grad, cos)

@pytest.mark.parametrize('name', [*BACKBONES, 'localizer'])
def test_cpu_fp32_and_bf16_match_float64(name):
    check_precision(precision_errors(name, 'cpu', [('fp32', False), ('bf16', False)]))

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', [*BACKBONES, 'localizer'])
def test_gpu_bf16_and_compiled_match_float64(name):
    check_precision(precision_errors(name, 'cuda', [(d, c) for d in ('fp32', 'bf16') for c in (False, True)]))

def test_benchmark_notebook_runs_under_papermill(repo, tmp_path):
    import json
    from conftest import run_tool
    run_tool('papermill', str(repo/'nbs'/'benchmark.ipynb'), str(tmp_path/'bench.ipynb'), '--cwd', str(tmp_path),
             '-p', 'device', 'cpu', '-p', 'batch', '2', '-p', 'T', '12', '-p', 'backbones', 'stgcn16',
             '-p', 'dtypes', 'fp32', '-p', 'modes', 'eager', '-p', 'warmup', '1', '-p', 'iters', '1',
             '-p', 'out_dir', str(tmp_path/'out'), '-p', 'stream_minutes', '0.2', '-p', 'stream_chunk', '30',
             '-p', 'latency_minutes', '0.05', '-p', 'stream_window', '32', cwd=tmp_path)
    stream = json.loads((tmp_path/'out'/'stream_benchmark.json').read_text())['rows']
    assert [(r['chunk'], r['frames']) for r in stream] == [(30, 360), (1, 90)] and all(r['held_frames_max'] > 0 for r in stream)
    rows = json.loads((tmp_path/'out'/'benchmark.json').read_text())['rows']
    assert [(r['backbone'], r['dtype'], r['mode'], r['params']) for r in rows] == [('stgcn16', 'fp32', 'eager', REFERENCE_PARAMS['stgcn16', (5, 8)])]
    assert (tmp_path/'out'/'benchmark.csv').read_text().startswith('backbone,')

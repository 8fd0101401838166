"""Trainer: exact resume after SIGKILL, checkpoint safety, the CLI under torchrun, the pretrain notebook."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import run_tool
from snipnb.train import load_checkpoint, CheckpointError, pretrain, pretrained_backbone, save_checkpoint
from snipnb.backbones import build_backbone, load_backbone_state, backbone_state

TINY = ['--size', 'quick', '--method', 'snipclr', '--backbone', 'stgcn16', '--batch-size', '4', '--clip-len', '32',
        '--max-steps', '6', '--queue-size', '64', '--lr', '0.05', '--device', 'cpu', '--no-progress', '--mining-epoch', '2']

def _train_cmd(out, *extra):
    return [sys.executable, '-m', 'snipnb.cli', *TINY, '--out-dir', str(out), *extra]

def _env(tmp_path):
    return {**os.environ, 'SNIPNB_CACHE_DIR': str(tmp_path/'cache'), 'OMP_NUM_THREADS': '1'}

def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    env = _env(tmp_path)
    full = subprocess.run(_train_cmd(tmp_path/'full', '--epochs', '3'), env=env, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    cut = tmp_path/'cut'
    proc = subprocess.Popen(_train_cmd(cut, '--epochs', '3', '--checkpoint-every-steps', '2'), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:      # wait for a checkpoint taken inside epoch 2
        if (cut/'last.pt').exists():
            try: s = torch.load(cut/'last.pt', weights_only=True)
            except Exception: s = None                          # being replaced right now
            if s and s['epoch'] == 1 and s['step_in_epoch'] > 0: break
        time.sleep(0.05)
    assert proc.poll() is None, 'training finished before it could be interrupted'
    proc.send_signal(signal.SIGKILL); proc.wait()
    killed = torch.load(cut/'last.pt', weights_only=True)
    assert killed['epoch'] < 3
    res = subprocess.run(_train_cmd(cut, '--epochs', '3', '--resume'), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = load_checkpoint(tmp_path/'full'/'last.pt'), load_checkpoint(cut/'last.pt')
    assert a['epoch'] == b['epoch'] == 3
    for k, v in a['model'].items(): assert torch.equal(v, b['model'][k]), k     # weights, key encoder, queues
    rows = [json.loads(l) for l in (cut/'metrics.jsonl').read_text().splitlines()]
    assert [r['epoch'] for r in rows] == [1, 2, 3]                              # no row logged twice after resuming
    assert not [p for p in cut.iterdir() if '.tmp-' in p.name]

def test_truncated_and_foreign_checkpoints_are_refused(tmp_path):
    p = tmp_path/'last.pt'
    torch.save({'x': 1}, p)
    with pytest.raises(CheckpointError, match='not a snipnb checkpoint'): load_checkpoint(p)
    save_checkpoint(p, {'model': {'w': torch.zeros(100)}, 'model_config': {}})
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match='last.pt: cannot read'): load_checkpoint(p)
    with pytest.raises(CheckpointError, match='no such checkpoint'): load_checkpoint(tmp_path/'missing.pt')

def test_pretrained_backbone_and_config_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv('SNIPNB_CACHE_DIR', str(tmp_path/'cache'))
    common = dict(corpus_options={'size': 'quick'}, epochs=1, batch_size=4, clip_len=32, max_steps=2, device='cpu',
                  pretext_options={'queue_size': 64}, progress=False)
    tr = pretrain('synthetic', 'rvtclr', 'stgcn16', out_dir=tmp_path/'run', **common)
    bb = pretrained_backbone(tmp_path/'run'/'last.pt')
    assert bb.config == tr.model.backbone.config
    with pytest.raises(ValueError, match='configuration mismatch'):
        load_backbone_state(build_backbone('stgcn16', strides=(2, 5, 8), num_persons=1), backbone_state(bb))
    with pytest.raises(CheckpointError, match='made for another model'):     # resuming with another backbone
        pretrain('synthetic', 'rvtclr', 'agcn', out_dir=tmp_path/'run', resume=True, **common)

def test_torchrun_two_processes(tmp_path):
    "The CLI under torchrun: 2 CPU processes (gloo), one tiny epoch, a checkpoint that loads."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'snipnb.cli',
           *TINY, '--epochs', '1', '--max-steps', '2', '--out-dir', str(tmp_path/'ddp')]
    res = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    s = load_checkpoint(tmp_path/'ddp'/'last.pt')
    assert s['epoch'] == 1 and s['history'][0]['clips_per_s'] > 0
    assert int(s['model']['queue.ptr']) == 2 * 4 * 2        # 2 steps x 4 clips x 2 ranks entered the queue

def test_pretrain_notebook_under_papermill(repo, tmp_path):
    out = tmp_path/'pt'
    run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'out.ipynb'), '-p', 'epochs', '1',
             '-p', 'batch_size', '4', '-p', 'clip_len', '32', '-p', 'max_steps', '2', '-p', 'queue_size', '64',
             '-p', 'device', 'cpu', '-p', 'out_dir', str(out), '-p', 'lr_steps', '1', '-p', 'strides', '5,8',   # papermill: int and str
             '-p', 'data_bn', 'none', '-p', 'pretext_json', '{"similarity": "dot"}', cwd=tmp_path,
             env={'SNIPNB_CACHE_DIR': str(tmp_path/'cache')})
    summary = json.loads((out/'summary.json').read_text())
    assert summary['epochs'] == 1 and summary['method'] == 'snipclr' and summary['preset'] == 'light'
    cfg = load_checkpoint(out/'last.pt')
    assert cfg['model_config']['backbone']['data_bn'] is None and cfg['model_config']['similarity'] == 'dot'
    assert cfg['train_config']['steps'] == [1] and cfg['model_config']['preset'] == 'light'
    bb = pretrained_backbone(out/'last.pt')
    assert sum(p.numel() for p in bb.parameters()) == summary['backbone_parameters']
    assert (out/'losses.html').exists() and (out/'metrics.csv').exists()

def test_pretrain_notebook_says_what_is_missing(repo, tmp_path):
    res = run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'out.ipynb'), '-p', 'dataset', 'babel',
                   '-p', 'out_dir', str(tmp_path/'pt'), cwd=tmp_path, check=False,
                   env={'SNIPNB_BABEL_ROOT': str(tmp_path/'no_babel'), 'SNIPNB_CACHE_DIR': str(tmp_path/'cache')})
    assert res.returncode != 0
    assert 'DatasetNotFound' in res.stderr + res.stdout and 'babel.is.tue.mpg.de' in res.stderr + res.stdout

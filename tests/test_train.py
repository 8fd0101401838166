"""Trainer: exact resume after SIGKILL, checkpoint safety, the CLI under torchrun, the pretrain notebook."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from conftest import run_tool
from snipnb.train import load_checkpoint, CheckpointError, pretrained_backbone, save_checkpoint
from snipnb.experiments import pretrain
from snipnb.backbones import build_backbone, load_backbone_state, backbone_state

TINY = ['--size', 'quick', '--method', 'snipclr', '--backbone', 'stgcn16', '--batch-size', '4', '--clip-len', '32',
        '--max-steps', '6', '--queue-size', '64', '--lr', '0.05', '--device', 'cpu', '--no-progress',
        '--pretext-options', '{"mining_epoch": 2}']

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
    lr = tr.cfg.lr
    with pytest.raises(CheckpointError, match=f'lr: {lr} -> {lr * 2}'):           # resuming with another lr
        pretrain('synthetic', 'rvtclr', 'stgcn16', out_dir=tmp_path/'run', resume=True, **{**common, 'epochs': 2, 'lr': lr * 2})
    with pytest.warns(UserWarning, match='training settings differ'):             # unless the caller says so
        tr2 = pretrain('synthetic', 'rvtclr', 'stgcn16', out_dir=tmp_path/'run', resume=True, override=True,
                       **{**common, 'epochs': 2, 'lr': lr * 2})
    assert tr2.epoch == 2 and load_checkpoint(tmp_path/'run'/'last.pt')['train_config']['lr'] == lr * 2

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
    "The notebook's torchrun launch (gpus 2: 2 CPU processes) with dictionary options as JSON and papermill's int for steps."
    out = tmp_path/'pt'
    run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'out.ipynb'), '-p', 'epochs', '1',
             '-p', 'batch_size', '4', '-p', 'clip_len', '32', '-p', 'max_steps', '2', '-p', 'queue_size', '64',
             '-p', 'device', 'cpu', '-p', 'out_dir', str(out), '-p', 'steps', '1', '-p', 'gpus', '2',
             '-p', 'backbone_options', '{"strides": [5, 8], "data_bn": null}', '-p', 'pretext_options', '{"similarity": "dot"}',
             cwd=tmp_path, env={'SNIPNB_CACHE_DIR': str(tmp_path/'cache'), 'OMP_NUM_THREADS': '1'})
    summary = json.loads((out/'summary.json').read_text())
    assert summary['epochs'] == 1 and summary['method'] == 'snipclr' and summary['preset'] == 'light'
    assert int(load_checkpoint(out/'last.pt')['model']['queue.ptr']) == 2 * 4 * 2     # 2 steps x 4 clips x 2 processes
    cfg = load_checkpoint(out/'last.pt')
    assert cfg['model_config']['backbone']['data_bn'] is None and cfg['model_config']['similarity'] == 'dot'
    assert cfg['train_config']['steps'] == [1] and cfg['model_config']['preset'] == 'light'
    bb = pretrained_backbone(out/'last.pt')
    assert sum(p.numel() for p in bb.parameters()) == summary['backbone_parameters']
    assert (out/'losses.html').exists() and (out/'metrics.csv').exists()

def test_cli_and_notebook_give_the_same_checkpoint(repo, tmp_path):
    "The same options on the command line and as papermill parameters: the same weights on CPU for the same seed."
    env = _env(tmp_path)
    cli = subprocess.run([sys.executable, '-m', 'snipnb.cli', '--size', 'quick', '--epochs', '1', '--batch-size', '4',
                          '--clip-len', '32', '--max-steps', '2', '--queue-size', '64', '--seed', '3', '--device', 'cpu',
                          '--no-progress', '--out-dir', str(tmp_path/'cli')], env=env, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-2000:]
    run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'nb.ipynb'), '-p', 'size', 'quick', '-p', 'epochs', '1',
             '-p', 'batch_size', '4', '-p', 'clip_len', '32', '-p', 'max_steps', '2', '-p', 'queue_size', '64', '-p', 'seed', '3',
             '-p', 'device', 'cpu', '-p', 'out_dir', str(tmp_path/'nb'), cwd=tmp_path, env=env)
    a, b = load_checkpoint(tmp_path/'cli'/'last.pt'), load_checkpoint(tmp_path/'nb'/'last.pt')
    assert a['train_config'] == b['train_config'] and a['model_config'] == b['model_config']
    assert a['train_config']['seed'] == 3 and a['model_config']['queue_size'] == 64
    assert a['model'].keys() == b['model'].keys()
    for k, v in a['model'].items(): assert torch.equal(v, b['model'][k]), k     # weights, key encoder, queues

FIT_LOCALIZER = [sys.executable, '-c', 'import sys; from snipnb.cli import fit_localizer_main; fit_localizer_main(sys.argv[1:])']

@pytest.mark.parametrize('command, cmd', [('pretrain', [sys.executable, '-m', 'snipnb.cli']), ('fit-localizer', FIT_LOCALIZER)])
def test_help_lists_every_option(tmp_path, command, cmd):
    from snipnb.cli import command_options
    res = subprocess.run([*cmd, '--help'], capture_output=True, text=True, env=_env(tmp_path))
    assert res.returncode == 0 and res.stdout.startswith(f'usage: snipnb-{command}'), res.stderr
    text = ' '.join(res.stdout.split())                                    # argparse wraps lines
    for o in command_options(command).values():
        assert f"--{o.name.replace('_', '-')}" in text, o.name
        if o.doc: assert ' '.join(o.doc.split()).replace('%%', '%') in text, o.name

def test_cli_refuses_bad_values_before_loading_anything(tmp_path):
    res = subprocess.run([sys.executable, '-m', 'snipnb.cli', '--epochs', 'two', '--out-dir', str(tmp_path/'run')],
                         capture_output=True, text=True, env=_env(tmp_path))
    assert res.returncode == 2 and "epochs: expected int, got 'two'" in res.stderr
    res = subprocess.run([sys.executable, '-m', 'snipnb.cli', '--pretext-options', '{"queue_size": 32', '--out-dir', str(tmp_path/'run')],
                         capture_output=True, text=True, env=_env(tmp_path))
    assert res.returncode == 2 and 'pretext_options: expected a JSON object' in res.stderr
    assert not (tmp_path/'run').exists() and not (tmp_path/'cache').exists()

@pytest.mark.parametrize('notebook, command, own', [('pretrain', 'pretrain', ['gpus']), ('localize', 'fit-localizer', [])])
def test_notebook_parameters_are_the_cli_options(repo, notebook, command, own):
    "One set of names: an experiment notebook's parameters are its command's options (and the notebook's own)."
    from snipnb.cli import command_options
    nb = json.loads((repo/'nbs'/f'{notebook}.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))
    names = [l.split(':')[0] for l in ''.join(cell['source']).splitlines() if l.strip() and not l.startswith('#')]
    assert sorted(names) == sorted([*command_options(command), *own])

def test_cli_entry_points_return_none(monkeypatch, repo):
    "`snipnb-pretrain = \"snipnb.cli:main\"` (and snipnb-fit-localizer) in [project.scripts]: the console script exits with the entry point's return value."
    import snipnb.cli
    calls = []
    monkeypatch.setattr(snipnb.cli, 'run_command', lambda command, argv: calls.append(command) or object())
    assert snipnb.cli.main(['--epochs', '1']) is None and snipnb.cli.fit_localizer_main(['--epochs', '1']) is None
    assert calls == ['pretrain', 'fit-localizer']
    scripts = (repo/'pyproject.toml').read_text()
    assert 'snipnb-pretrain = "snipnb.cli:main"' in scripts and 'snipnb-fit-localizer = "snipnb.cli:fit_localizer_main"' in scripts

@pytest.mark.parametrize('command', ['pretrain', 'fit-localizer'])
def test_every_option_is_documented(command):
    from snipnb.cli import command_options
    assert [k for k, o in sorted(command_options(command).items()) if not o.doc] == []

def test_fit_localizer_command_writes_the_results(tmp_path):
    "snipnb-fit-localizer runs the localization experiment: checkpoint, predictions and metric table in the run folder."
    res = subprocess.run([*FIT_LOCALIZER, '--protocol', 'scratch', '--size', 'quick', '--subset', '1', '--epochs', '1',
                          '--batch-size', '8', '--clip-len', '64', '--max-steps', '2', '--device', 'cpu', '--no-progress',
                          '--backbone-options', '{"channels": [4, 4, 4, 4, 8, 8, 8, 16, 16, 16]}', '--out-dir', str(tmp_path/'loc')],
                         capture_output=True, text=True, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    row = json.loads((tmp_path/'loc'/'metrics.json').read_text())
    assert row['protocol'] == 'scratch' and row['clip_len'] == 64 and 0 <= row['mAP avg'] <= 1
    assert f"results: {tmp_path/'loc'}" in res.stdout and (tmp_path/'loc'/'last.pt').exists()
    assert (tmp_path/'loc'/'predictions.csv').read_text().startswith('video,label,start,end,score')

def test_pretrain_notebook_says_what_is_missing(repo, tmp_path):
    res = run_tool('papermill', str(repo/'nbs'/'pretrain.ipynb'), str(tmp_path/'out.ipynb'), '-p', 'dataset', 'babel',
                   '-p', 'out_dir', str(tmp_path/'pt'), cwd=tmp_path, check=False,
                   env={'SNIPNB_BABEL_ROOT': str(tmp_path/'no_babel'), 'SNIPNB_CACHE_DIR': str(tmp_path/'cache')})
    assert res.returncode != 0
    assert 'DatasetNotFound' in res.stderr + res.stdout and 'babel.is.tue.mpg.de' in res.stderr + res.stdout

# ---- issue 12, section 3: interrupted training keeps its log; resume refuses changed settings ----
import csv, errno, warnings
import torch.nn as nn
from snipnb.train import Trainer, TrainConfig

class Killed(Exception): "Stands for a SIGKILL at a chosen point of training."

def _toy_data(epoch, skip, shard):
    g = torch.Generator().manual_seed(epoch)
    for x in torch.randn(8, 16, 1, generator=g)[skip:]: yield {'x': x, 'y': 3 * x + 1}

def _toy_step(model, batch, epoch, gen):
    noise = torch.randn(batch['x'].shape, generator=gen) * 0.01
    loss = ((model(batch['x'] + noise) - batch['y']) ** 2).mean()
    return {'loss': loss, **({'extra': loss.detach() * 2} if epoch >= 1 else {})}   # a term that appears in epoch 2

class _ToyTrainer(Trainer):
    "The line-fitting toy; `kill` = ('step', epoch, step) or ('epoch_end_save', epoch) stops it there."
    def __init__(self, out, kill=None, steps_counter=None, **cfg):
        torch.manual_seed(0)
        cfg = TrainConfig(**{'epochs': 3, 'lr': 0.05, 'warmup_epochs': 1, 'steps': (2,), 'device': 'cpu', 'batch_size': 16, **cfg})
        self.kill, self.steps_counter = kill, steps_counter
        step = self._counting_step
        super().__init__(nn.Linear(1, 1), step, _toy_data, cfg, out, model_config={'name': 'line'}, progress=False)

    def _counting_step(self, model, batch, epoch, gen):
        if self.kill and self.kill[0] == 'step' and (epoch, self.step_in_epoch) == self.kill[1:]: raise Killed()
        if self.steps_counter is not None: self.steps_counter.append((epoch, self.step_in_epoch))
        return _toy_step(model, batch, epoch, gen)

    def save(self, path=None):
        if self.kill and self.kill[0] == 'epoch_end_save' and self.step_in_epoch == 0 and self.epoch == self.kill[1]: raise Killed()
        super().save(path)

def _rows(out):
    drop = ('seconds', 'clips_per_s')
    jl = [{k: v for k, v in json.loads(l).items() if k not in drop} for l in (out/'metrics.jsonl').read_text().splitlines()]
    with open(out/'metrics.csv', newline='') as f: cs = list(csv.DictReader(f))
    return jl, cs

def _check_interrupted_run_logs_like_uninterrupted(tmp_path, kill, every_steps):
    full = _ToyTrainer(tmp_path/'full', checkpoint_every_steps=every_steps); full.fit()
    cut = tmp_path/'cut'
    with pytest.raises(Killed): _ToyTrainer(cut, kill=kill, checkpoint_every_steps=every_steps).fit()
    resumed = _ToyTrainer(cut, checkpoint_every_steps=every_steps); resumed.fit(resume=True)
    assert torch.equal(resumed.model.weight, full.model.weight)
    (fj, _), (cj, cc) = _rows(tmp_path/'full'), _rows(cut)
    assert [r['epoch'] for r in cj] == [1, 2, 3]                                  # each epoch logged once
    steps = lambda d: [json.loads(l) for l in (d/'steps.jsonl').read_text().splitlines()]
    assert steps(cut) == steps(tmp_path/'full')                                    # every step's loss once, as uninterrupted
    assert len(steps(cut)) == 3 * resumed.steps_per_epoch and steps(cut)[-1]['epoch'] == 3
    for a, b in zip(fj, cj):                                                       # mean over ALL the epoch's steps
        assert a.keys() == b.keys(), (a, b)
        for k in a: assert b[k] == pytest.approx(a[k], rel=1e-12), (k, a, b)
    header = list(cc[0].keys())
    assert set(header) == {k for r in cj for k in r} | {'seconds', 'clips_per_s'}   # fixed columns: the union of keys
    for r, c in zip(cj, cc):                                                       # no value under the wrong header
        for k in header:
            if k in r: assert float(c[k]) == pytest.approx(r[k], rel=1e-6), (k, r, c)
            elif k not in ('seconds', 'clips_per_s'): assert c[k] == '', (k, c)

def test_kill_between_last_step_checkpoint_and_epoch_end_save_keeps_the_epoch_loss(tmp_path):
    "checkpoint at step 8 of 8 (the last), killed at the epoch-end save: the resumed epoch has 0 steps left"
    _check_interrupted_run_logs_like_uninterrupted(tmp_path, ('epoch_end_save', 2), every_steps=4)

def test_resume_mid_epoch_logs_the_mean_over_all_steps(tmp_path):
    "checkpoint at step 3, killed at step 5 of epoch 2: the logged loss averages steps 0-7, not 3-7"
    _check_interrupted_run_logs_like_uninterrupted(tmp_path, ('step', 1, 5), every_steps=3)

def test_metrics_csv_has_fixed_columns(tmp_path):
    "a loss term that appears only from epoch 2 gets its column; rows never shift"
    tr = _ToyTrainer(tmp_path/'run'); tr.fit()
    jl, cs = _rows(tmp_path/'run')
    assert 'extra' in cs[0] and cs[0]['extra'] == '' and float(cs[1]['extra']) == pytest.approx(jl[1]['extra'])

def test_resume_with_other_settings_is_refused_unless_overridden(tmp_path):
    _ToyTrainer(tmp_path/'run', epochs=2).fit()
    other = _ToyTrainer(tmp_path/'run', epochs=4, lr=0.1, batch_size=32, device='cpu', checkpoint_every_steps=2)
    with pytest.raises(CheckpointError) as e: other.fit(resume=True)
    msg = str(e.value)
    assert 'last.pt' in msg and 'lr: 0.05 -> 0.1' in msg and 'batch_size: 16 -> 32' in msg and 'override' in msg
    assert 'epochs' not in msg and 'checkpoint_every_steps' not in msg              # not what is trained
    assert other.epoch == 0                                                         # refused before loading anything
    same = _ToyTrainer(tmp_path/'run', epochs=3); same.fit(resume=True)             # more epochs: allowed
    assert same.epoch == 3
    with pytest.warns(UserWarning, match=r'lr: 0\.05 -> 0\.1'): other.fit(resume=True, override=True)
    assert other.epoch == 4 and load_checkpoint(tmp_path/'run'/'last.pt')['train_config']['lr'] == 0.1
    assert other.history[-1]['lr'] == pytest.approx(0.1 * 0.1)                     # the new base lr, x gamma after epoch 2
    cos = _ToyTrainer(tmp_path/'cos', epochs=2, schedule='cosine'); cos.fit()
    with pytest.raises(CheckpointError, match='epochs: 2 -> 4'):                    # cosine: epochs shape the schedule
        _ToyTrainer(tmp_path/'cos', epochs=4, schedule='cosine').fit(resume=True)

def test_unwritable_out_dir_is_found_before_training(tmp_path):
    (tmp_path/'afile').write_text('not a folder')
    steps = []
    with pytest.raises(OSError, match='afile/run: cannot write'):
        _ToyTrainer(tmp_path/'afile'/'run', steps_counter=steps).fit()
    assert steps == []                                                              # no step was trained in vain
    if os.geteuid() != 0:                                                           # root writes anywhere
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
        with pytest.raises(OSError, match='ro: cannot write'): _ToyTrainer(ro, steps_counter=steps).fit()
        assert steps == []

@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full to fill a "disk"')
def test_disk_full_while_saving_a_checkpoint(tmp_path):
    "The temporary file is a link to /dev/full: every write fails with ENOSPC, as on a full disk."
    p = tmp_path/'last.pt'
    save_checkpoint(p, {'model': {'w': torch.zeros(10)}, 'model_config': {}, 'epoch': 1})
    os.symlink('/dev/full', tmp_path/f'.last.pt.tmp-{os.getpid()}')
    with pytest.raises(OSError, match=f'no space left on {tmp_path}') as e:
        save_checkpoint(p, {'model': {'w': torch.zeros(100_000)}, 'model_config': {}, 'epoch': 2})
    assert e.value.errno == errno.ENOSPC
    assert load_checkpoint(p)['epoch'] == 1                                         # the previous checkpoint is intact
    assert sorted(f.name for f in tmp_path.iterdir()) == ['last.pt']                # nothing half-written left

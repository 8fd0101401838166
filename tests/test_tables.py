"""The results tables: a table built end to end through papermill with the tiny preset, resumed without rerunning; the statistics against hand-worked cases."""
import json, math
import numpy as np
import pytest
from conftest import run_tool

pd = pytest.importorskip('pandas')
pytest.importorskip('scipy')
from snipnb.tables import (paired_test, holm, table_cells, row_columns, get_table, table_preset, table_corpus_options, run_label,
                           BABEL_ROWS, BABEL_COLUMNS, cell_key)
from snipnb.synthetic import SYNTHETIC_SUBSETS

def test_paired_t_against_a_hand_worked_case():
    "Differences 0.10, 0.03, 0.09: mean 0.07333, sd 0.037859, t = 3.355 on 2 df, two-sided p = 1 - t / sqrt(t^2 + 2) = 0.0785."
    r = paired_test([0.60, 0.55, 0.70], [0.50, 0.52, 0.61])
    assert r['n'] == 3 and math.isclose(r['diff'], 0.22 / 3, rel_tol=1e-9)
    assert math.isclose(r['t'], 3.3549, abs_tol=1e-4) and math.isclose(r['p'], 1 - r['t'] / math.sqrt(r['t'] ** 2 + 2), rel_tol=1e-9)
    assert math.isclose(r['p'], 0.0785, abs_tol=1e-4)
    # four seeds: 3 degrees of freedom
    d = np.array([1.0, -1.0, 1.0, 3.0])                                  # mean 1, sd 1.633, t = 1 / (1.633 / 2) = 1.2247
    r = paired_test(d, np.zeros(4))
    assert math.isclose(r['t'], 1 / (np.std(d, ddof=1) / 2), rel_tol=1e-9)
    from scipy import stats
    assert math.isclose(r['p'], 2 * stats.t.sf(r['t'], 3), rel_tol=1e-9)

def test_holm_against_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, rng.integers(1, 8))
        order = np.argsort(p); m = len(p)
        expect = np.empty(m); running = 0
        for i, j in enumerate(order):
            running = max(running, min(1, (m - i) * p[j])); expect[j] = running
        np.testing.assert_allclose(holm(p), expect, rtol=1e-12)

def test_cells_cover_every_row_and_its_columns():
    cells = table_cells(subsets=(1, 2), seeds=(0, 1, 2))
    assert {(c['row'], c['column']) for c in cells} == {(r, c) for r in BABEL_ROWS for c in row_columns('babel', r)}
    assert len(cells) == len({cell_key(c) for c in cells}) == 2 * 3 * sum(len(row_columns('babel', r)) for r in BABEL_ROWS)

@pytest.mark.parametrize('table', ['babel', 'transfer', 'ablations', 'pkummd'])
def test_table_tiny_through_papermill_and_resume(repo, tmp_path, table):
    "A whole table with the tiny preset on synthetic data: every row and column in the CSVs; a second run reruns no cell."
    p, (all_rows, columns) = table_preset('tiny', table), get_table(table)
    rows = list(p['rows'] or all_rows)
    env = {'SNIPNB_CACHE_DIR': str(tmp_path/'cache'), 'SNIPNB_OUTPUT_DIR': str(tmp_path/'outputs')}
    args = ['papermill', str(repo/'nbs'/f'table_{table}.ipynb'), str(tmp_path/'t.ipynb'), '-p', 'preset', 'tiny',
            '-p', 'dataset', 'synthetic', '-p', 'out_dir', str(tmp_path/'res'), '-p', 'device', 'cpu', '-p', 'progress', 'False']
    run_tool(*args, cwd=tmp_path, env=env)
    cells = pd.read_csv(tmp_path/'res'/'cells.csv')
    assert {(r, c) for r, c in zip(cells.row, cells.column)} == {(r, c) for r in rows for c in row_columns(table, r)}
    assert cells['mAP avg'].between(0, 1).all() and (cells.seed == 0).all() and (cells.subset == p['subsets'][0]).all()
    summary = pd.read_csv(tmp_path/'res'/'table.csv', index_col=0)
    assert list(summary.index) == rows and list(summary.columns) == [f"{p['subsets'][0]} {c}" for c in columns]
    assert (tmp_path/'res'/'table.md').read_text().count('\n') == len(rows) + 2
    tests = pd.read_csv(tmp_path/'res'/'tests.csv')
    expect = sum(len(row_columns(table, r)) for r in rows if all_rows[r]['baseline'] in rows)
    assert len(tests) == expect and tests['p'].isna().all()               # one seed: no test, said as NaN, not a number
    assert (tmp_path/'outputs'/'tables'/f"{table}-{run_label(table, 'tiny', 'synthetic')}"/'figure.html').exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path/'res'/'cells').iterdir()}
    assert len(stamps) == len(cells)
    run_tool(*args, cwd=tmp_path, env=env)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path/'res'/'cells').iterdir()} == stamps
    last = cells.iloc[-1]
    done = json.loads((tmp_path/'res'/'cells'/f"{cell_key(dict(last))}.json").read_text())
    assert done['row'] == last['row'] and done['table'] == table

def test_transfer_pretrains_on_the_source_domain(tmp_path):
    "The transfer table's encoders learn from the source domain (its own cache), its cells fine-tune on the target's."
    from snipnb.datasets import load_corpus
    p = table_preset('tiny', 'transfer')
    src, tgt = (load_corpus('synthetic', cache_dir=tmp_path, progress=False, **table_corpus_options(p, 'synthetic', source=s))
                for s in (True, False))
    assert src.path != tgt.path
    names = lambda c: {c.class_names[l] for i in range(len(c)) for l, *_ in c[i].segments}
    assert not names(src) & set(SYNTHETIC_SUBSETS[3]) and set(SYNTHETIC_SUBSETS[3]) <= names(tgt)

def test_table_analyses_tiny_through_papermill(repo, tmp_path):
    "Table 4 with the tiny preset: boundary errors per fine-tuned row, the snippet-variance split per encoder."
    env = {'SNIPNB_CACHE_DIR': str(tmp_path/'cache'), 'SNIPNB_OUTPUT_DIR': str(tmp_path/'outputs')}
    run_tool('papermill', str(repo/'nbs'/'table_analyses.ipynb'), str(tmp_path/'a.ipynb'), '-p', 'preset', 'tiny', '-p', 'recordings', '2',
             '-p', 'rows', 'floor,scratch,rvtclr,rvtclr+snippet,ceiling', '-p', 'out_dir', str(tmp_path/'res'),
             '-p', 'table1_dir', str(tmp_path/'t1'), '-p', 'device', 'cpu', '-p', 'progress', 'False', cwd=tmp_path, env=env)
    b = pd.read_csv(tmp_path/'res'/'boundaries.csv', index_col=0)
    assert list(b.index) == ['scratch', 'rvtclr', 'rvtclr+snippet', 'ceiling']           # the rows with a fine-tuning cell
    assert list(b.columns) == ['boundary error 1 finetune', 'boundary recall 1 finetune']
    v = pd.read_csv(tmp_path/'res'/'snippet_variance.csv', index_col=0)
    assert list(v.index) == ['floor', 'rvtclr', 'rvtclr+snippet', 'ceiling']
    assert v['within share mean'].between(0, 1).all()

"""Print the results tables from the finished cells under results/ as Markdown (for the README), rewriting each table's files.

    python tools/results_markdown.py                      # every table folder under results/
    python tools/results_markdown.py babel/cpu pkummd/cpu  # some of them

Runs nothing: `build_table(..., run=False)` reads the cells that are done. Each table: mean ± std over seeds (a cell
with fewer seeds than the table's most says n=k), then the paired tests of each `+snippet` row against its method
(t, p, Holm-adjusted p, bootstrap 95% interval of the mean difference).
"""
import json, sys
from pathlib import Path
from snipnb.tables import build_table, summary_table, baseline_tests

def folders(args):
    root = Path('results')
    if args: return [root/f'table_{a}' if not a.startswith('table_') else root/a for a in args]
    return sorted(p for t in root.glob('table_*') for p in t.iterdir() if (p/'cells').is_dir())

def main(args):
    for folder in folders(args):
        table, label = folder.parent.name.removeprefix('table_'), folder.name
        cells = [json.loads(p.read_text()) for p in sorted((folder/'cells').glob('*.json'))]
        if not cells: continue
        preset, dataset = cells[0]['preset'], cells[0]['dataset']
        seeds = sorted({c['seed'] for c in cells})
        metric = 'PKU-MMD mAP@0.5' if dataset.startswith('pkummd') else 'mAP avg'
        metrics = [metric] + (['mAP avg'] if metric != 'mAP avg' else []) + ['accuracy', 'boundary error']
        print(f"\n### {table} ({dataset}, preset {preset}{', ' + label if label != preset else ''}): {len(cells)} cells, seeds {seeds}\n")
        built = build_table(table, preset, dataset, seeds=seeds, metric=metrics[0], out=folder, progress=False, run=False)
        df = built['frame']
        for m in metrics:                                 # one read of the cells; the other metrics from the same frame
            t = built['table'] if m == metrics[0] else summary_table(df, m, baseline_tests(df, m))
            t = t.copy()
            t.columns = [f'{s}: {c}' if len(set(x[0] for x in t.columns)) > 1 else c for s, c in t.columns]
            print(f"{m}:\n\n{t.to_markdown()}\n")
        tests = built['tests'].dropna(subset=['p'])
        if len(tests):
            cols = ['row', 'baseline', 'column', 'n', 'diff', 't', 'p', 'p_holm', 'ci_low', 'ci_high']
            print(f"paired tests ({metrics[0]}):\n\n{tests[cols].round(4).to_markdown(index=False)}\n")

if __name__ == '__main__': main(sys.argv[1:])

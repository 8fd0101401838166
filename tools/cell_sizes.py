"""Sizes of the exported cells of the library notebooks (nbs/NN_*.ipynb with a `#| default_exp`).

    python tools/cell_sizes.py [--nbs nbs] [--top 15] [--only 13_viz 10_metrics] [--check]

Prints the number of exported cells, the median, 90th percentile and largest size in lines (the
`#| export` directive and trailing blank lines not counted), how many cells are over 30 and over 40
lines, how many cells over 40 lines have no reason written above them, and the largest cells (notebook,
cell id, lines). Issue 13 asks for a median of 12 lines or fewer and no cell over 40 lines without a reason
written above it: a markdown cell right above the code cell with a sentence starting `Long cell:`.
With `--check` the exit status is 1 when those targets are missed.
"""
import argparse, json, re, statistics
from pathlib import Path

EXPORT = re.compile(r'^\s*#\|\s*export[s]?\s*$')
REASON = re.compile(r'(^|[\s*_>])Long cell:', re.M)   # the sentence above a cell over 40 lines that says why
MEDIAN_TARGET, LONG = 12, 40

def library_notebooks(nbs:Path) -> list:
    "The numbered notebooks that export a module."
    return [p for p in sorted(nbs.glob('[0-9][0-9]_*.ipynb')) if '#| default_exp' in p.read_text()]

def exported_cells(nb_path:Path, reasons:bool=False) -> list:
    "(notebook, cell id, lines) of every exported code cell of one notebook; with `reasons`, a 4th field: a `Long cell:` reason above it."
    out, above = [], ''
    for c in json.loads(nb_path.read_text())['cells']:
        text = ''.join(c['source'])
        lines = text.rstrip().splitlines()
        if c['cell_type'] == 'markdown': above = text; continue
        if c['cell_type'] == 'code' and any(EXPORT.match(l) for l in lines):
            code = [l for l in lines if not l.lstrip().startswith('#|')]
            out.append((nb_path.name, c.get('id', '?'), len(code)) + ((bool(REASON.search(above)),) if reasons else ()))
        above = ''
    return out

def percentile(values:list, q:float) -> float:
    "The q-th percentile (0-100), linear between closest ranks."
    v = sorted(values)
    if len(v) == 1: return float(v[0])
    k = (len(v) - 1) * q / 100
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)

def summary(cells:list) -> dict:
    "Median, 90th percentile, max and counts over 30/40 lines of (notebook, id, lines[, reason]) rows."
    sizes = [c[2] for c in cells]
    s = {'cells': len(sizes), 'median': statistics.median(sizes), 'p90': round(percentile(sizes, 90), 1),
         'max': max(sizes), 'over_30': sum(n > 30 for n in sizes), 'over_40': sum(n > LONG for n in sizes)}
    if cells and len(cells[0]) > 3: s['over_40_unexplained'] = sum(c[2] > LONG and not c[3] for c in cells)
    return s

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nbs', default=str(Path(__file__).resolve().parents[1]/'nbs'), help='the notebooks folder')
    ap.add_argument('--top', type=int, default=15, help='how many of the largest cells to list')
    ap.add_argument('--only', nargs='*', default=None, help='measure only notebooks whose name contains one of these')
    ap.add_argument('--check', action='store_true', help='exit 1 when the median or an unexplained long cell misses the target')
    args = ap.parse_args(argv)
    nbs = [nb for nb in library_notebooks(Path(args.nbs)) if args.only is None or any(o in nb.name for o in args.only)]
    cells = [c for nb in nbs for c in exported_cells(nb, reasons=True)]
    if not cells: raise SystemExit(f'no exported cells under {args.nbs}')
    s = summary(cells)
    print(f"exported cells: {s['cells']}  median: {s['median']}  p90: {s['p90']}  max: {s['max']}  "
          f"over 30: {s['over_30']}  over 40: {s['over_40']} (without a reason: {s['over_40_unexplained']})")
    print(f'largest {min(args.top, len(cells))}:')
    for nb, cid, n, why in sorted(cells, key=lambda c: -c[2])[:args.top]:
        print(f'  {n:4d}  {nb}  {cid}' + ('  (reason above)' if why else ''))
    if args.check and (s['median'] > MEDIAN_TARGET or s['over_40_unexplained']):
        raise SystemExit(f"cell sizes miss the target: median {s['median']} (<= {MEDIAN_TARGET}), "
                         f"{s['over_40_unexplained']} cells over {LONG} lines without a `Long cell:` reason above")
    return s

if __name__ == '__main__': main()

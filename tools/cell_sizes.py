"""Sizes of the exported cells of the library notebooks (nbs/NN_*.ipynb with a `#| default_exp`).

    python tools/cell_sizes.py [--nbs nbs] [--top 15]

Prints the number of exported cells, the median, 90th percentile and largest size in lines (the
`#| export` directive and trailing blank lines not counted), how many cells are over 30 and over 40
lines, and the largest cells (notebook, cell id, lines). Issue 13 asks for a median of 12 lines or
fewer and no cell over 40 lines without a reason written above it.
"""
import argparse, json, re, statistics
from pathlib import Path

EXPORT = re.compile(r'^\s*#\|\s*export[s]?\s*$')

def library_notebooks(nbs:Path) -> list:
    "The numbered notebooks that export a module."
    return [p for p in sorted(nbs.glob('[0-9][0-9]_*.ipynb')) if '#| default_exp' in p.read_text()]

def exported_cells(nb_path:Path) -> list:
    "(notebook, cell id, lines) of every exported code cell of one notebook."
    out = []
    for c in json.loads(nb_path.read_text())['cells']:
        lines = ''.join(c['source']).rstrip().splitlines()
        if c['cell_type'] != 'code' or not any(EXPORT.match(l) for l in lines): continue
        code = [l for l in lines if not l.lstrip().startswith('#|')]
        out.append((nb_path.name, c.get('id', '?'), len(code)))
    return out

def percentile(values:list, q:float) -> float:
    "The q-th percentile (0-100), linear between closest ranks."
    v = sorted(values)
    if len(v) == 1: return float(v[0])
    k = (len(v) - 1) * q / 100
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)

def summary(cells:list) -> dict:
    sizes = [n for *_, n in cells]
    return {'cells': len(sizes), 'median': statistics.median(sizes), 'p90': round(percentile(sizes, 90), 1),
            'max': max(sizes), 'over_30': sum(n > 30 for n in sizes), 'over_40': sum(n > 40 for n in sizes)}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nbs', default=str(Path(__file__).resolve().parents[1]/'nbs'), help='the notebooks folder')
    ap.add_argument('--top', type=int, default=15, help='how many of the largest cells to list')
    args = ap.parse_args(argv)
    cells = [c for nb in library_notebooks(Path(args.nbs)) for c in exported_cells(nb)]
    if not cells: raise SystemExit(f'no exported cells under {args.nbs}')
    s = summary(cells)
    print(f"exported cells: {s['cells']}  median: {s['median']}  p90: {s['p90']}  max: {s['max']}  "
          f"over 30: {s['over_30']}  over 40: {s['over_40']}")
    print(f'largest {min(args.top, len(cells))}:')
    for nb, cid, n in sorted(cells, key=lambda c: -c[2])[:args.top]: print(f'  {n:4d}  {nb}  {cid}')
    return s

if __name__ == '__main__': main()

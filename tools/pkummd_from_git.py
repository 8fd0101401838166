"""Extract the PKU-MMD phase 1 files held by a git mirror into a dataset root (default: data/pkummd).

The public repository AntonioSTO/is-rtmac keeps PKU-MMD phase 1 in its official layout at commit
b54002394c37e38d43b1ab46b949dd7c2ae818cc; the stored snapshot of that repository (the `fetch` tool of
this workplace, or any clone) may hold only part of the skeleton files. This copies every file of the
three official folders whose content is present, skips the rest, and says how many of each it found.
The data keeps the PKU-MMD terms of use: extract it into a git-ignored folder and never commit it.

    python tools/pkummd_from_git.py /work/.mirror/AntonioSTO+is-rtmac/repo            # -> data/pkummd
"""
import argparse, os, subprocess, sys
from pathlib import Path

COMMIT = 'b54002394c37e38d43b1ab46b949dd7c2ae818cc'
FOLDERS = ('Data/Skeleton/PKU_Skeleton_Renew', 'Label/Train_Label_PKU_final', 'Split/Split')


def git(repo, *args, data=None) -> bytes:
    return subprocess.run(['git', f'--git-dir={repo}', *args], input=data, capture_output=True, check=True).stdout


def tree(repo, commit, folder) -> list:
    "(blob id, path) of every file under folder at commit."
    out = git(repo, 'ls-tree', '-r', commit, folder).decode()
    return [(line.split()[2], line.split('\t', 1)[1]) for line in out.splitlines() if line.split()[1] == 'blob']


def present(repo, blobs) -> set:
    "The blob ids whose content the mirror holds (one `git cat-file --batch-check` call)."
    out = git(repo, 'cat-file', '--batch-check', data=''.join(b + '\n' for b in blobs).encode()).decode()
    return {line.split()[0] for line in out.splitlines() if not line.endswith('missing')}


def extract(repo, out, commit=COMMIT) -> dict:
    "Copy the present files of `FOLDERS` to out (Split/Split/* goes to out/Split/); returns found/total per folder."
    repo, out, counts = Path(repo), Path(out), {}
    if (repo/'.git').is_dir(): repo = repo/'.git'
    for folder in FOLDERS:
        files = tree(repo, commit, folder)
        if not files: sys.exit(f"{repo}: no files under {folder} at {commit}")
        have = present(repo, [b for b, _ in files])
        for blob, path in files:
            if blob not in have: continue
            dest = out/path.replace('Split/Split/', 'Split/')
            if dest.exists() and dest.stat().st_size > 0: continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(dest.suffix + '.tmp')
            tmp.write_bytes(git(repo, 'cat-file', 'blob', blob)); os.replace(tmp, dest)   # nothing half-written
        counts[folder] = (len(have), len(files))
    return counts


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('repo', help='a clone or bare mirror of AntonioSTO/is-rtmac')
    ap.add_argument('--out', default='data/pkummd', help='the dataset root to fill (git-ignored)')
    ap.add_argument('--commit', default=COMMIT)
    a = ap.parse_args()
    for folder, (n, total) in extract(a.repo, a.out, a.commit).items(): print(f"{folder}: {n} of {total} files")

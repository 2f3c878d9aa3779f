"""Runs the benchmarks: this library and the raw OS limit (mp_bench), and CPython's
multiprocessing (cpython_bench.py, run with python3.11 when there is one), side by side in one run.
Prints a table and writes the figures as JSON lines.

    python3 bench/run.py --build BUILD_DIR [--json FILE] [--quick] [--case NAME[,NAME...]]

Each case runs in a fresh process on both sides (as pyperf does): a case must not pay for the
memory an earlier case left in the process (a fork copies the page tables of everything held, and
glibc keeps freed heap), nor profit from its warm caches.

Columns: ours, CPython and raw in the case's unit; "vs CPython" is ours / CPython (for times,
below 1 is faster than CPython; for rates, above 1 is faster); "of raw" is the fraction of the OS
limit reached (1.0 = at the limit, whatever the unit).
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_lines(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=1800).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build', required=True)
    ap.add_argument('--json')
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--case')
    args = ap.parse_args()

    python = shutil.which('python3.11') or shutil.which('python3') or sys.executable
    pyver = subprocess.run([python, '-c', 'import sys; print(sys.version.split()[0])'],
                           stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
    mp_bench = os.path.join(args.build, 'bench', 'mp_bench')
    cpython_bench = os.path.join(HERE, 'cpython_bench.py')
    names = subprocess.run([mp_bench, '--list'], check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    if args.case:
        names = [n for n in names if n in args.case.split(',')]
    python_names = set(subprocess.run([python, cpython_bench, '--list'], check=True, stdout=subprocess.PIPE,
                                      text=True).stdout.split())
    quick = ['--quick'] if args.quick else []
    ours, cpython = [], {}
    for name in names:
        ours += run_lines([mp_bench, '--case', name] + quick)
        if name in python_names:
            cpython.update({r['case']: r['cpython'] for r in run_lines([python, cpython_bench, '--case', name] + quick)})

    machine = f'{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, kernel {platform.release()}'
    print(f'benchmarks on {machine}; CPython {pyver} ({python})')
    header = f'{"case":24} {"unit":15} {"ours":>10} {"CPython":>10} {"vs CPython":>11} {"raw":>10} {"of raw":>7}'
    print(header)
    print('-' * len(header))
    rows = []
    for r in ours:
        name, unit = r['case'], r['unit']
        cp = cpython.get(name)
        rate = unit.endswith('/s')
        vs = r['ours'] / cp if cp else float('nan')
        of_raw = (r['ours'] / r['raw']) if rate else (r['raw'] / r['ours'])
        print(f'{name:24} {unit:15} {r["ours"]:10.4g} {cp if cp is not None else float("nan"):10.4g} '
              f'{vs:11.3f} {r["raw"]:10.4g} {of_raw:7.2f}')
        rows.append({'case': name, 'unit': unit, 'ours': r['ours'], 'cpython': cp, 'raw': r['raw'],
                     'python': pyver, 'machine': machine, 'command': ' '.join(sys.argv)})
    if args.json:
        with open(args.json, 'w') as f:
            for row in rows:
                f.write(json.dumps(row) + '\n')
        print(f'figures written to {args.json}')
    # The mpi start method against mpi4py.futures: its own table (says "skipped" without MPI or mpi4py).
    if not args.case or args.case.startswith('mpi'):
        subprocess.run([sys.executable, os.path.join(HERE, 'mpi_bench.py'), '--build', args.build]
                       + (['--quick'] if args.quick else []) + (['--json', args.json] if args.json else []), check=True)


if __name__ == '__main__':
    main()

"""The "mpi" start method against mpi4py.futures.MPIPoolExecutor, both on 2 worker ranks of one
mpirun launch (-n 3) on this host, and the ratios.

    python3 bench/mpi_bench.py --build BUILD_DIR [--quick] [--json FILE]

Cases (same work, same chunking):
  mpi_map_1M_ints      map of a trivial function over 1,000,000 ints, chunksize 125000, Mtasks/s
                       (higher is better): ours is pool.map, mpi4py's executor.map
  mpi_apply_roundtrip  one task's round trip, µs (lower is better): ours is apply_async(...).get(),
                       mpi4py's submit(...).result()
"ours ÷ mpi4py" is printed as a speed-up either way (above 1: ours is faster).

mpi4py runs with the Python that has it (Debian's python3-mpi4py is for /usr/bin/python3), as
`mpirun -n 3 python3 -m mpi4py.futures mpi_bench.py --mpi4py`: rank 0 runs this script, the
others are MPIPoolExecutor's workers. Invoked that way, this file measures mpi4py.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MPIRUN_ENV = {'OMPI_ALLOW_RUN_AS_ROOT': '1', 'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1'}


def plus_one(x):
    return x + 1


def measure_mpi4py(quick):
    from mpi4py.futures import MPIPoolExecutor
    xs = range(1_000_000)
    with MPIPoolExecutor(max_workers=2) as ex:
        list(ex.map(plus_one, range(1000), chunksize=500))  # warm up
        best = float('inf')
        for _ in range(1 if quick else 3):
            t = time.perf_counter()
            out = list(ex.map(plus_one, xs, chunksize=125_000))
            best = min(best, time.perf_counter() - t)
            assert len(out) == 1_000_000 and out[-1] == 1_000_000
        print(json.dumps({'case': 'mpi_map_1M_ints', 'unit': 'Mtasks/s', 'mpi4py': 1.0 / best}))
        n = 50 if quick else 500
        for i in range(20):
            ex.submit(plus_one, i).result()
        best_rt = float('inf')
        for _ in range(3):
            t = time.perf_counter()
            for i in range(n):
                assert ex.submit(plus_one, i).result() == i + 1
            best_rt = min(best_rt, (time.perf_counter() - t) / n)
        print(json.dumps({'case': 'mpi_apply_roundtrip', 'unit': 'us/rt', 'mpi4py': best_rt * 1e6}), flush=True)


def python_with_mpi4py():
    for candidate in ['/usr/bin/python3', shutil.which('python3'), sys.executable]:
        if candidate and subprocess.run([candidate, '-c', 'import mpi4py.futures'], stderr=subprocess.DEVNULL).returncode == 0:
            return candidate
    return None


def run_lines(cmd):
    env = dict(os.environ, **MPIRUN_ENV)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, timeout=900, env=env).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith('{')]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--build')
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--json')
    ap.add_argument('--mpi4py', action='store_true', help='measure mpi4py (under mpirun -m mpi4py.futures)')
    args = ap.parse_args()
    if args.mpi4py:
        measure_mpi4py(args.quick)
        return
    ours_bin = os.path.join(args.build, 'bench', 'bench_mpi')
    mpirun = shutil.which('mpirun') or shutil.which('mpiexec')
    python = python_with_mpi4py()
    missing = [what for what, ok in [('bench_mpi (a build with MPI)', os.path.exists(ours_bin)),
                                      ('mpirun', mpirun), ('mpi4py', python)] if not ok]
    if missing:
        print('mpi benchmarks skipped: no ' + ', no '.join(missing))
        return
    launch = [mpirun, '--oversubscribe', '--allow-run-as-root', '-n', '3']
    quick = ['--quick'] if args.quick else []
    ours = {r['case']: r for r in run_lines(launch + [ours_bin] + quick)}
    theirs = {r['case']: r['mpi4py'] for r in run_lines(
        launch + [python, '-m', 'mpi4py.futures', os.path.abspath(__file__), '--mpi4py'] + quick)}
    print(f'mpi: 2 worker ranks under mpirun -n 3 on this host; mpi4py with {python}')
    header = f'{"case":24} {"unit":10} {"ours":>10} {"mpi4py":>10} {"speed-up":>9}'
    print(header)
    print('-' * len(header))
    rows = []
    for name, r in ours.items():
        cp = theirs.get(name)
        rate = '/s' in r['unit']
        speedup = (r['ours'] / cp if rate else cp / r['ours']) if cp else float('nan')
        print(f'{name:24} {r["unit"]:10} {r["ours"]:10.4g} {cp if cp else float("nan"):10.4g} {speedup:8.1f}x')
        rows.append({'case': name, 'unit': r['unit'], 'ours': r['ours'], 'mpi4py': cp, 'speedup': speedup})
    if args.json:
        with open(args.json, 'a') as f:
            for row in rows:
                f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
    main()

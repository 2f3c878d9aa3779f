"""Draws the benchmark figures that bench/run.py wrote as JSON lines: how many times faster than
CPython's multiprocessing each case is, and what fraction of the raw OS limit it reaches.

    python3 bench/plot.py BENCH.jsonl [--out docs/_static]

Writes, into --out (default: docs/_static next to this script):
    bench_vs_cpython.svg   speed-up over CPython per case (log scale; right of 1 is faster)
    bench_vs_raw.svg       fraction of the raw limit per case (log scale; 1 is at the limit)
    bench.csv              the figures behind both, for the docs' table
    bench.jsonl            a copy of the input, so the figures stay with the plots

Input lines are run.py's rows: {"case", "unit", "ours", "cpython", "raw", "python", "machine",
"command"}. A unit ending in "/s" is a rate (higher is better); any other is a time (lower is better).
The SVG is written by hand (no plotting package needed), with the run's machine and command in
its caption.
"""
import argparse
import csv
import html
import json
import math
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Layout of a horizontal bar chart, in SVG user units (pixels).
LABEL_W = 210      # case names
PLOT_W = 460       # the bars
VALUE_W = 70       # the figure printed after each bar
ROW_H = 20
TOP = 58           # title and axis labels
BOTTOM = 54        # tick labels and caption
FONT = 'font-family="DejaVu Sans, Arial, sans-serif"'


def is_rate(unit):
    # "MiB/s", "Mmsg/s": per second. Not "ms/start+join", which also holds "/s".
    return unit.endswith('/s')


def speedup_vs_cpython(row):
    """How many times faster than CPython (>1 faster), or None when CPython has no figure."""
    cp, ours = row.get('cpython'), row.get('ours')
    if not cp or not ours:
        return None
    return ours / cp if is_rate(row['unit']) else cp / ours


def fraction_of_raw(row):
    """The fraction of the raw OS limit reached (1 = at the limit), as run.py's "of raw"."""
    raw, ours = row.get('raw'), row.get('ours')
    if not raw or not ours:
        return None
    return ours / raw if is_rate(row['unit']) else raw / ours


def fmt(v, suffix='×'):
    if v >= 100:
        return f'{v:.0f}{suffix}'
    if v >= 10:
        return f'{v:.1f}{suffix}'
    if v >= 0.1:
        return f'{v:.2f}{suffix}'
    return f'{v:.2g}{suffix}'


def decades(values):
    """The powers of ten that frame the values and 1, as (low, high) exponents."""
    lo = min(min(values), 1.0)
    hi = max(max(values), 1.0)
    return math.floor(math.log10(lo)), max(math.ceil(math.log10(hi)), math.floor(math.log10(lo)) + 1)


def bar_chart(title, axis_label, rows, caption, two_colours=True, suffix='×'):
    """rows: [(case, value)] with value > 0. A log-scale bar chart from 1 to each value; with
    two_colours, bars below 1 are orange."""
    lo, hi = decades([v for _, v in rows])
    width = LABEL_W + PLOT_W + VALUE_W
    height = TOP + ROW_H * len(rows) + BOTTOM

    def x_of(v):
        return LABEL_W + PLOT_W * (math.log10(v) - lo) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" {FONT} font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
           f'{html.escape(title)}</text>',
           f'<text x="{LABEL_W + PLOT_W / 2}" y="38" text-anchor="middle" fill="#444">'
           f'{html.escape(axis_label)}</text>']
    plot_top, plot_bottom = TOP - 8, TOP + ROW_H * len(rows)
    # Grid: every power of ten, with 2 and 5 in between when the range is short.
    steps = [1, 2, 5] if hi - lo <= 3 else [1]
    for e in range(lo, hi + 1):
        for s in steps:
            v = s * 10 ** e
            if v > 10 ** hi:
                continue
            x = x_of(v)
            major = s == 1
            out.append(f'<line x1="{x:.1f}" y1="{plot_top}" x2="{x:.1f}" y2="{plot_bottom}" '
                       f'stroke="{"#bbb" if major else "#e4e4e4"}" stroke-width="1"/>')
            label = f'{v:g}' if v >= 0.001 else f'1e{e}'
            out.append(f'<text x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle" fill="#444">'
                       f'{label}</text>')
    x1 = x_of(1.0)
    for i, (case, v) in enumerate(rows):
        y = TOP + i * ROW_H
        colour = '#d9822b' if two_colours and v < 1.0 else '#2b7bb9'
        x = x_of(v)
        left, w = min(x, x1), max(abs(x - x1), 1.0)
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 14}" text-anchor="end">{html.escape(case)}</text>')
        out.append(f'<rect x="{left:.1f}" y="{y + 4}" width="{w:.1f}" height="{ROW_H - 7}" fill="{colour}">'
                   f'<title>{html.escape(case)}: {fmt(v, suffix)}</title></rect>')
        tx = max(x, x1) + 4
        out.append(f'<text x="{tx:.1f}" y="{y + 14}">{fmt(v, suffix)}</text>')
    out.append(f'<line x1="{x1:.1f}" y1="{plot_top}" x2="{x1:.1f}" y2="{plot_bottom}" stroke="black" stroke-width="1.5"/>')
    for j, line in enumerate(caption):
        out.append(f'<text x="6" y="{plot_bottom + 32 + 12 * j}" fill="#666" font-size="9">{html.escape(line)}</text>')
    out.append('</svg>')
    return '\n'.join(out) + '\n'


def read_rows(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f'{path}:{n}: not a JSON line: {e}')
            if not isinstance(row, dict) or not {'case', 'unit', 'ours'} <= row.keys():
                sys.exit(f'{path}:{n}: expected an object with "case", "unit" and "ours"')
            rows.append(row)
    if not rows:
        sys.exit(f'{path}: no figures')
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('jsonl')
    ap.add_argument('--out', default=os.path.normpath(os.path.join(HERE, '..', 'docs', '_static')))
    args = ap.parse_args()
    rows = read_rows(args.jsonl)
    os.makedirs(args.out, exist_ok=True)

    first = rows[0]
    caption = [f'{first.get("machine", "unknown machine")}; CPython {first.get("python", "?")}',
               f'python3 {first.get("command", "bench/run.py")}  |  drawn by bench/plot.py']

    vs_cp = [(r['case'], speedup_vs_cpython(r)) for r in rows]
    vs_cp = [(c, v) for c, v in vs_cp if v]
    vs_raw = [(r['case'], fraction_of_raw(r)) for r in rows]
    vs_raw = [(c, v) for c, v in vs_raw if v]
    with open(os.path.join(args.out, 'bench_vs_cpython.svg'), 'w') as f:
        f.write(bar_chart('multiprocessing for C++ against CPython',
                          'times faster than CPython\'s multiprocessing (log scale; right of 1 is faster)',
                          vs_cp, caption))
    with open(os.path.join(args.out, 'bench_vs_raw.svg'), 'w') as f:
        f.write(bar_chart('multiprocessing for C++ against the raw OS limit',
                          'fraction of the raw limit reached (log scale; 1 is at the limit)',
                          vs_raw, caption, two_colours=False, suffix=''))
    with open(os.path.join(args.out, 'bench.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['case', 'unit', 'ours', 'CPython', 'vs CPython', 'raw', 'of raw'])
        for r in rows:
            s, fr = speedup_vs_cpython(r), fraction_of_raw(r)
            w.writerow([r['case'], r['unit'], f'{r["ours"]:.4g}',
                        f'{r["cpython"]:.4g}' if r.get('cpython') else '',
                        f'{s:.2f}' if s else '', f'{r["raw"]:.4g}' if r.get('raw') else '',
                        f'{fr:.2f}' if fr else ''])
    copy = os.path.join(args.out, 'bench.jsonl')
    if os.path.abspath(copy) != os.path.abspath(args.jsonl):
        shutil.copyfile(args.jsonl, copy)
    print(f'{len(vs_cp)} cases against CPython, {len(vs_raw)} against the raw limit; written to {args.out}')


if __name__ == '__main__':
    main()

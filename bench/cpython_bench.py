"""The CPython half of the benchmarks: the same cases as bench_main.cpp, run with CPython's own
multiprocessing. Prints one JSON object per case: {"case", "unit", "cpython"}.

    python3 bench/cpython_bench.py [--quick] [--case NAME]
"""
import json
import os
import multiprocessing as mp
import statistics
import sys
import time


def median_per_op(repeats, n, body):
    return statistics.median(body(n) / n for _ in range(repeats))


def _echo(conn, other, size):
    other.close()
    buf = bytearray(size)
    try:
        while True:
            conn.recv_bytes_into(buf)
            conn.send_bytes(buf)
    except EOFError:
        pass


def pingpong(n, size):
    a, b = mp.Pipe()
    p = mp.get_context('fork').Process(target=_echo, args=(b, a, size))
    p.start()
    b.close()
    msg, buf = bytes(size), bytearray(size)
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes_into(buf)
    t = time.perf_counter() - t0
    a.close()
    p.join()
    return t


def _sink(conn, other, n, size):
    other.close()
    buf = bytearray(size)
    for _ in range(n):
        conn.recv_bytes_into(buf)
    conn.send_bytes(b'k')


def throughput(n, size):
    a, b = mp.Pipe()
    p = mp.get_context('fork').Process(target=_sink, args=(b, a, n, size))
    p.start()
    b.close()
    msg = bytes(size)
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
    a.recv_bytes()
    t = time.perf_counter() - t0
    p.join()
    return t


def _typed_echo(conn, other):
    other.close()
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def typed(n):
    a, b = mp.Pipe()
    p = mp.get_context('fork').Process(target=_typed_echo, args=(b, a))
    p.start()
    b.close()
    point = (1.5, 2.5, 7)  # the C++ side's Point{x, y, id}
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(point)
        point = a.recv()
    t = time.perf_counter() - t0
    a.close()
    p.join()
    return t


def noop():
    pass


def start_join(n, method):
    ctx = mp.get_context(method)
    t0 = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    return time.perf_counter() - t0


def lock_uncontended(n):
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return time.perf_counter() - t0


def _event_child(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event_pingpong(n):
    ping, pong = mp.Event(), mp.Event()
    p = mp.get_context('fork').Process(target=_event_child, args=(ping, pong, n))
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        ping.set()
        pong.wait()
        pong.clear()
    t = time.perf_counter() - t0
    p.join()
    return t


def _increment(value, k):
    for _ in range(k):
        with value.get_lock():
            value.value += 1


def value_locked_increment(n):
    v = mp.Value('l', 0)
    p = mp.get_context('fork').Process(target=_increment, args=(v, n // 2))
    p.start()
    t0 = time.perf_counter()
    _increment(v, n - n // 2)
    p.join()
    return time.perf_counter() - t0


def on_one_cpu(run):
    """The ping-pong on one CPU, as bench_main.cpp measures it (children inherit the mask)."""
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(saved)})
    try:
        return run()
    finally:
        os.sched_setaffinity(0, saved)


def main():
    quick = '--quick' in sys.argv
    only = sys.argv[sys.argv.index('--case') + 1] if '--case' in sys.argv else None
    reps = 1 if quick else 5

    def scale(n):
        return max(1, n // 50) if quick else n

    cases = [
        ('pipe_pingpong_8B', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(20000), lambda k: pingpong(k, 8))),
        ('pipe_throughput_1MiB', 'MiB/s', lambda: 1.0 / median_per_op(reps, scale(2000), lambda k: throughput(k, 1 << 20))),
        ('pipe_pingpong_8B_1cpu', 'us/roundtrip',
         lambda: on_one_cpu(lambda: 1e6 * median_per_op(reps, scale(20000), lambda k: pingpong(k, 8)))),
        ('pipe_typed_struct_1cpu', 'us/roundtrip',
         lambda: on_one_cpu(lambda: 1e6 * median_per_op(reps, scale(20000), typed))),
        ('process_fork', 'ms/start+join', lambda: 1e3 * median_per_op(reps, scale(500), lambda k: start_join(k, 'fork'))),
        ('process_spawn', 'ms/start+join', lambda: 1e3 * median_per_op(reps, scale(50), lambda k: start_join(k, 'spawn'))),
        ('process_forkserver', 'ms/start+join', lambda: (start_join(1, 'forkserver'), 1e3 * median_per_op(
            reps, scale(200), lambda k: start_join(k, 'forkserver')))[1]),
        ('lock_uncontended', 'ns/acq+rel', lambda: 1e9 * median_per_op(reps, scale(1000000), lock_uncontended)),
        ('lock_pingpong_2proc', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(20000), event_pingpong)),
        ('lock_pingpong_2proc_1cpu', 'us/roundtrip',
         lambda: on_one_cpu(lambda: 1e6 * median_per_op(reps, scale(20000), event_pingpong))),
        ('value_locked_increment_2proc', 'Mincr/s',
         lambda: 1e-6 / median_per_op(reps, scale(200000), value_locked_increment)),
    ]
    import cpython_bench_listener
    cases += cpython_bench_listener.cases(median_per_op, reps, scale)
    for name, unit, run in cases:
        if only and only != name:
            continue
        print(json.dumps({'case': name, 'unit': unit, 'cpython': run()}), flush=True)


if __name__ == '__main__':
    main()

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


def _queue_produce(q, n, size):
    item = bytes(size)
    for _ in range(n):
        q.put(item)


def queue_1to1(n, size):
    q = mp.Queue()
    p = mp.get_context('fork').Process(target=_queue_produce, args=(q, n, size))
    p.start()
    q.get()  # the first one: the feeder thread and both sides are running
    t0 = time.perf_counter()
    for _ in range(n - 1):
        q.get()
    t = time.perf_counter() - t0
    p.join()
    return t * n / max(1, n - 1)


def _queue_produce_stop(q, n, size):
    _queue_produce(q, n, size)
    q.put(b'')


def _queue_consume(q, done):
    got = 0
    while q.get():
        got += 1
    done.put(got)


def queue_2to2(n, size):
    q, done = mp.Queue(), mp.Queue()
    ctx = mp.get_context('fork')
    consumers = [ctx.Process(target=_queue_consume, args=(q, done)) for _ in range(2)]
    for c in consumers:
        c.start()
    t0 = time.perf_counter()
    producers = [ctx.Process(target=_queue_produce_stop, args=(q, k, size)) for k in (n // 2, n - n // 2)]
    for p in producers:
        p.start()
    done.get() + done.get()
    t = time.perf_counter() - t0
    for p in producers + consumers:
        p.join()
    return t


def _queue_echo(ping, pong):
    while True:
        v = ping.get()
        pong.put(v)
        if v < 0:
            return


def queue_pingpong(n):
    ping, pong = mp.Queue(), mp.Queue()
    p = mp.get_context('fork').Process(target=_queue_echo, args=(ping, pong))
    p.start()
    t0 = time.perf_counter()
    for i in range(n):
        ping.put(i)
        pong.get()
    t = time.perf_counter() - t0
    ping.put(-1)
    pong.get()
    p.join()
    return t


def _tiny(x):
    return x + 1


def pool_map(n):
    with mp.get_context('fork').Pool(2) as pool:
        xs = [1] * n
        t0 = time.perf_counter()
        r = pool.map(_tiny, xs)
        t = time.perf_counter() - t0
        assert len(r) == n
    return t


def pool_imap(n):
    with mp.get_context('fork').Pool(2) as pool:
        xs = [1] * n
        t0 = time.perf_counter()
        s = sum(pool.imap(_tiny, xs, 1))
        t = time.perf_counter() - t0
        assert s == 2 * n
    return t


def pool_apply_async(n):
    with mp.get_context('fork').Pool(2) as pool:
        pool.apply(_tiny, (0,))
        t0 = time.perf_counter()
        for _ in range(n):
            pool.apply_async(_tiny, (1,)).get()
        return time.perf_counter() - t0


_STATE_BYTES = 100 << 20


def _argument_probe(table, i):
    return table[i * 4096 % len(table)]


def pool_state_as_argument(n):
    # CPython has no worker state: the 100 MiB table goes with every task (pool start included,
    # as in ours).
    table = b'\x01' * _STATE_BYTES
    t0 = time.perf_counter()
    with mp.get_context('fork').Pool(2) as pool:
        s = sum(pool.apply(_argument_probe, (table, i)) for i in range(n))
        t = time.perf_counter() - t0
    assert s == n
    return t


def pool_start(n):
    ctx = mp.get_context('fork')
    t0 = time.perf_counter()
    for _ in range(n):
        pool = ctx.Pool(2)
        pool.close()
        pool.join()
    return time.perf_counter() - t0


def manager_dict_set_get(n):
    """A manager's DictProxy: d['k'] = i; d['k'] per operation (bench_main.cpp's case)."""
    with mp.get_context('fork').Manager() as m:
        d = m.dict()
        d['k'] = 0
        d['k']
        t0 = time.perf_counter()
        for i in range(n):
            d['k'] = i
            assert d['k'] == i
        return time.perf_counter() - t0


def manager_start_shutdown(n):
    """multiprocessing.Manager() under fork, then shutdown(), n times (bench_main.cpp's case)."""
    ctx = mp.get_context('fork')
    t0 = time.perf_counter()
    for _ in range(n):
        m = ctx.Manager()
        m.shutdown()
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
        ('queue_small_1to1', 'Mmsg/s', lambda: 1e-6 / median_per_op(reps, scale(200000), lambda k: queue_1to1(k, 32))),
        ('queue_small_2to2', 'Mmsg/s', lambda: 1e-6 / median_per_op(reps, scale(200000), lambda k: queue_2to2(k, 32))),
        ('queue_4MiB', 'MiB/s', lambda: 4.0 / median_per_op(reps, scale(500), lambda k: queue_1to1(k, 4 << 20))),
        ('queue_pingpong', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(20000), queue_pingpong)),
    ]
    cases += [
        ('pool_map_10k_tiny', 'Mtasks/s', lambda: 1e-6 / median_per_op(reps, scale(10000), pool_map)),
        ('pool_map_1M_tiny', 'Mtasks/s', lambda: 1e-6 / median_per_op(reps, scale(1000000), pool_map)),
        ('pool_imap_chunksize1_100k', 'ktasks/s', lambda: 1e-3 / median_per_op(reps, scale(100000), pool_imap)),
        ('pool_worker_state_100MiB', 'ms/task', lambda: 1e3 * median_per_op(reps, scale(20), pool_state_as_argument)),
        ('pool_apply_async_roundtrip', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(5000), pool_apply_async)),
        ('pool_start_close_join_fork', 'ms/pool', lambda: 1e3 * median_per_op(reps, scale(100), pool_start)),
    ]
    cases += [
        ('manager_dict_set_get', 'us/set+get', lambda: 1e6 * median_per_op(reps, scale(20000), manager_dict_set_get)),
        ('manager_start_shutdown', 'ms/start+stop', lambda: 1e3 * median_per_op(reps, scale(200), manager_start_shutdown)),
    ]
    import cpython_bench_listener
    cases += cpython_bench_listener.cases(median_per_op, reps, scale)
    if '--list' in sys.argv:
        print('\n'.join(name for name, _, _ in cases))
        return
    for name, unit, run in cases:
        if only and name not in only.split(','):
            continue
        print(json.dumps({'case': name, 'unit': unit, 'cpython': run()}), flush=True)


if __name__ == '__main__':
    main()

"""CPython's figures for bench_listener.cpp's cases (imported by cpython_bench.py)."""
import multiprocessing as mp
import pickle
import threading
import time
from multiprocessing.connection import Client, Listener


def auth_connect(n):
    key = b'bench key'
    with Listener(authkey=key, backlog=16) as listener:
        where = listener.address

        def connect():
            for _ in range(n):
                Client(where, authkey=key).close()

        t0 = time.perf_counter()
        client = threading.Thread(target=connect)
        client.start()
        for _ in range(n):
            listener.accept().close()
        client.join()
        return time.perf_counter() - t0


def _echo(conn, other):
    other.close()
    try:
        while True:
            conn.send(conn.recv())
    except EOFError:
        pass


def dict_roundtrip(n):
    a, b = mp.Pipe()
    p = mp.get_context('fork').Process(target=_echo, args=(b, a))
    p.start()
    b.close()
    d = {'key%d' % i: i for i in range(1000)}
    t0 = time.perf_counter()
    for _ in range(n):
        a.send(d)
        d = a.recv()
    t = time.perf_counter() - t0
    a.close()
    p.join()
    return t


def mixed_structure():
    return [{'id': i, 'name': 'item-%d' % i, 'score': i * 0.5, 'tags': ['a', 'b'], 'blob': bytes([1]) * 100}
            for i in range(5000)]


def pickle_mixed(n):
    value = mixed_structure()
    t0 = time.perf_counter()
    for _ in range(n):
        value = pickle.loads(pickle.dumps(value, 4))
    return time.perf_counter() - t0


def cases(median_per_op, reps, scale):
    return [
        ('auth_connect_unix', 'us/connect', lambda: 1e6 * median_per_op(reps, scale(2000), auth_connect)),
        ('pickle_dict1000_roundtrip', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(2000), dict_roundtrip)),
        # (the same Python code: bench_listener.cpp's two cases differ in the C++ type only)
        ('pickle_dict1000_value_roundtrip', 'us/roundtrip', lambda: 1e6 * median_per_op(reps, scale(2000), dict_roundtrip)),
        ('pickle_1MiB_mixed', 'ms/dumps+loads', lambda: 1e3 * median_per_op(reps, scale(50), pickle_mixed)),
    ]

#!/usr/bin/env python3
"""Checks that the docs cover the seed: Python multiprocessing's own Sphinx search index.

Usage: seed_coverage.py SEED_SEARCHINDEX_JS DOCS_SOURCE_DIR BUILD_DIR [SPHINX_BUILD]

Builds the docs from scratch (sphinx-build -W -E -a: an incremental build's index can lack the
pages it did not rewrite), into BUILD_DIR so that it never races the docs.build test, and reads Sphinx's own searchindex.js from the result: that is what a reader's search sees.

(a) Every section title of the seed ("alltitles") is a section title of the built docs. Only the
    front page's "Welcome to <project>'s documentation!" is normalised, since the project names
    differ.
(b) Every name of the seed's index ("indexentries") maps, through the table below, to something
    the built docs document: a C++ name declared by a ``cpp:`` directive (found in the built
    object index), a glossary term (found in the built index entries), or a literal that must
    appear in the .rst sources (for names whose C++ counterpart is a header, or that the C++
    manager does not serve yet and the docs say so).

Prints every missing title and name, the coverage figures, and exits 1 when anything is missing.
"""
import json
import pathlib
import subprocess
import sys

# Python index entry -> (kind, what). kind "cpp": a fully qualified C++ name that a cpp directive
# declares; "cpp_prefix": some declared name starts with it; "term": a glossary term; "text": a
# literal that must appear in some .rst source; "any": a list of (kind, what), one must hold.
NAMES = {
    # glossary
    "cpython": ("term", "cpython"),
    "gil": ("term", "gil"),
    "bytecode": ("term", "bytecode"),
    "global interpreter lock": ("term", "global interpreter lock"),
    "virtual machine": ("term", "virtual machine"),
    # modules: a Python module is a header (and for connection/dummy a namespace)
    "module": ("text", "Header: ``<multiprocessing/"),
    "multiprocessing": ("text", "namespace ``mp``"),
    "multiprocessing.connection": ("text", "namespace ``mp::connection``"),
    "multiprocessing.dummy": ("any", [("cpp_prefix", "mp::dummy::"), ("text", "``<multiprocessing/dummy.hpp>``"),
                                      ("text", "namespace ``mp::dummy``")]),
    "multiprocessing.managers": ("text", "``<multiprocessing/managers.hpp>``"),
    "multiprocessing.pool": ("text", "``<multiprocessing/pool.hpp>``"),
    "multiprocessing.sharedctypes": ("text", "``<multiprocessing/sharedctypes.hpp>``"),
    # module-level functions and classes of multiprocessing
    "array() (in module multiprocessing)": ("cpp", "mp::Array"),
    "value() (in module multiprocessing)": ("cpp", "mp::Value"),
    "boundedsemaphore (class in multiprocessing)": ("cpp", "mp::BoundedSemaphore"),
    "condition (class in multiprocessing)": ("cpp", "mp::Condition"),
    "connection (class in multiprocessing)": ("cpp", "mp::Connection"),
    "event (class in multiprocessing)": ("cpp", "mp::Event"),
    "joinablequeue (class in multiprocessing)": ("cpp", "mp::JoinableQueue"),
    "lock (class in multiprocessing)": ("cpp", "mp::Lock"),
    "pipe() (in module multiprocessing)": ("cpp", "mp::Pipe"),
    "process (class in multiprocessing)": ("cpp", "mp::Process"),
    "queue (class in multiprocessing)": ("cpp", "mp::Queue"),
    "rlock (class in multiprocessing)": ("cpp", "mp::RLock"),
    "semaphore (class in multiprocessing)": ("cpp", "mp::Semaphore"),
    "simplequeue (class in multiprocessing)": ("cpp", "mp::SimpleQueue"),
    "active_children() (in module multiprocessing)": ("cpp", "mp::active_children"),
    "cpu_count() (in module multiprocessing)": ("cpp", "mp::cpu_count"),
    "current_process() (in module multiprocessing)": ("cpp", "mp::current_process"),
    "freeze_support() (in module multiprocessing)": ("cpp", "mp::freeze_support"),
    "get_logger() (in module multiprocessing)": ("cpp", "mp::get_logger"),
    "log_to_stderr() (in module multiprocessing)": ("cpp", "mp::log_to_stderr"),
    "set_executable() (in module multiprocessing)": ("cpp", "mp::set_executable"),
    "authenticationerror": ("cpp", "mp::AuthenticationError"),
    "buffertooshort": ("cpp", "mp::BufferTooShort"),
    # Process
    "authkey (multiprocessing.process attribute)": ("cpp", "mp::Process::authkey"),
    "daemon (multiprocessing.process attribute)": ("cpp", "mp::Process::daemon"),
    "exitcode (multiprocessing.process attribute)": ("cpp", "mp::Process::exitcode"),
    "name (multiprocessing.process attribute)": ("cpp", "mp::Process::name"),
    "pid (multiprocessing.process attribute)": ("cpp", "mp::Process::pid"),
    "sentinel (multiprocessing.process attribute)": ("cpp", "mp::Process::sentinel"),
    "is_alive() (multiprocessing.process method)": ("cpp", "mp::Process::is_alive"),
    "join() (multiprocessing.process method)": ("cpp", "mp::Process::join"),
    "run() (multiprocessing.process method)": ("cpp", "mp::Process::run"),
    "start() (multiprocessing.process method)": ("cpp", "mp::Process::start"),
    "terminate() (multiprocessing.process method)": ("cpp", "mp::Process::terminate"),
    # Connection
    "close() (multiprocessing.connection method)": ("cpp", "mp::Connection::close"),
    "fileno() (multiprocessing.connection method)": ("cpp", "mp::Connection::fileno"),
    "poll() (multiprocessing.connection method)": ("cpp", "mp::Connection::poll"),
    "recv() (multiprocessing.connection method)": ("cpp", "mp::Connection::recv"),
    "recv_bytes() (multiprocessing.connection method)": ("cpp", "mp::Connection::recv_bytes"),
    "recv_bytes_into() (multiprocessing.connection method)": ("cpp", "mp::Connection::recv_bytes_into"),
    "send() (multiprocessing.connection method)": ("cpp", "mp::Connection::send"),
    "send_bytes() (multiprocessing.connection method)": ("cpp", "mp::Connection::send_bytes"),
    # multiprocessing.connection
    "client() (in module multiprocessing.connection)": ("cpp", "mp::connection::Client"),
    "listener (class in multiprocessing.connection)": ("cpp", "mp::connection::Listener"),
    "accept() (multiprocessing.connection.listener method)": ("cpp", "mp::connection::Listener::accept"),
    "address (multiprocessing.connection.listener attribute)": ("cpp", "mp::connection::Listener::address"),
    "close() (multiprocessing.connection.listener method)": ("cpp", "mp::connection::Listener::close"),
    "last_accepted (multiprocessing.connection.listener attribute)": ("cpp", "mp::connection::Listener::last_accepted"),
    "answerchallenge() (in module multiprocessing.connection)": ("cpp", "mp::connection::answer_challenge"),
    "deliver_challenge() (in module multiprocessing.connection)": ("cpp", "mp::connection::deliver_challenge"),
    "wait() (in module multiprocessing.connection)": ("cpp", "mp::connection::wait"),
    # queues
    "cancel_join_thread() (multiprocessing.queue method)": ("cpp", "mp::Queue::cancel_join_thread"),
    "close() (multiprocessing.queue method)": ("cpp", "mp::Queue::close"),
    "empty() (multiprocessing.queue method)": ("cpp", "mp::Queue::empty"),
    "full() (multiprocessing.queue method)": ("cpp", "mp::Queue::full"),
    "get() (multiprocessing.queue method)": ("cpp", "mp::Queue::get"),
    "get_no_wait() (multiprocessing.queue method)": ("cpp", "mp::Queue::get_no_wait"),
    "get_nowait() (multiprocessing.queue method)": ("cpp", "mp::Queue::get_nowait"),
    "join_thread() (multiprocessing.queue method)": ("cpp", "mp::Queue::join_thread"),
    "put() (multiprocessing.queue method)": ("cpp", "mp::Queue::put"),
    "put_nowait() (multiprocessing.queue method)": ("cpp", "mp::Queue::put_nowait"),
    "qsize() (multiprocessing.queue method)": ("cpp", "mp::Queue::qsize"),
    "empty() (multiprocessing.simplequeue method)": ("cpp", "mp::SimpleQueue::empty"),
    "get() (multiprocessing.simplequeue method)": ("cpp", "mp::SimpleQueue::get"),
    "put() (multiprocessing.simplequeue method)": ("cpp", "mp::SimpleQueue::put"),
    "join() (multiprocessing.joinablequeue method)": ("cpp", "mp::JoinableQueue::join"),
    "task_done() (multiprocessing.joinablequeue method)": ("cpp", "mp::JoinableQueue::task_done"),
    # sharedctypes
    "array() (in module multiprocessing.sharedctypes)": ("cpp", "mp::Array"),
    "value() (in module multiprocessing.sharedctypes)": ("cpp", "mp::Value"),
    "rawarray() (in module multiprocessing.sharedctypes)": ("cpp", "mp::RawArray"),
    "rawvalue() (in module multiprocessing.sharedctypes)": ("cpp", "mp::RawValue"),
    "copy() (in module multiprocessing.sharedctypes)": ("cpp", "mp::sharedctypes::copy"),
    "synchronized() (in module multiprocessing.sharedctypes)": ("cpp", "mp::sharedctypes::synchronized"),
    "multiprocessing.manager() (in module multiprocessing.sharedctypes)": ("cpp", "mp::Manager"),
    # managers
    "basemanager (class in multiprocessing.managers)": ("cpp", "mp::BaseManager"),
    "address (multiprocessing.managers.basemanager attribute)": ("cpp", "mp::BaseManager::address"),
    "connect() (multiprocessing.managers.basemanager method)": ("cpp", "mp::BaseManager::connect"),
    "get_server() (multiprocessing.managers.basemanager method)": ("cpp", "mp::BaseManager::get_server"),
    "register() (multiprocessing.managers.basemanager method)": ("cpp", "mp::BaseManager::register_type"),
    "shutdown() (multiprocessing.managers.basemanager method)": ("cpp", "mp::BaseManager::shutdown"),
    "start() (multiprocessing.managers.basemanager method)": ("cpp", "mp::BaseManager::start"),
    "baseproxy (class in multiprocessing.managers)": ("cpp", "mp::BaseProxy"),
    "__repr__() (multiprocessing.managers.baseproxy method)": ("cpp", "mp::BaseProxy::repr"),
    "__str__() (multiprocessing.managers.baseproxy method)": ("cpp", "mp::BaseProxy::str"),
    "_callmethod() (multiprocessing.managers.baseproxy method)": ("cpp", "mp::BaseProxy::callmethod"),
    "_getvalue() (multiprocessing.managers.baseproxy method)": ("cpp", "mp::BaseProxy::getvalue"),
    "syncmanager (class in multiprocessing.managers)": ("cpp", "mp::SyncManager"),
    "dict() (multiprocessing.managers.syncmanager method)": ("cpp", "mp::SyncManager::dict"),
    "list() (multiprocessing.managers.syncmanager method)": ("cpp", "mp::SyncManager::list"),
    "namespace() (multiprocessing.managers.syncmanager method)": ("cpp", "mp::SyncManager::Namespace"),
    "value() (multiprocessing.managers.syncmanager method)": ("cpp", "mp::SyncManager::Value"),
    # SyncManager typeids a C++ manager does not serve yet: the docs' table must say so
    "array() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Array()``"),
    "boundedsemaphore() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.BoundedSemaphore()``"),
    "condition() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Condition()``"),
    "event() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Event()``"),
    "lock() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Lock()``"),
    "queue() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Queue()``"),
    "rlock() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.RLock()``"),
    "semaphore() (multiprocessing.managers.syncmanager method)": ("text", "``SyncManager.Semaphore()``"),
    # pool
    "multiprocessing.pool (class in multiprocessing.pool)": ("cpp", "mp::Pool"),
    "apply() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::apply"),
    "apply_async() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::apply_async"),
    "close() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::close"),
    "imap() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::imap"),
    "imap_unordered() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::imap_unordered"),
    "join() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::join"),
    "map() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::map"),
    "map_async() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::map_async"),
    "starmap() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::starmap"),
    "starmap_async() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::starmap_async"),
    "terminate() (multiprocessing.pool.multiprocessing.pool method)": ("cpp", "mp::Pool::terminate"),
    "asyncresult (class in multiprocessing.pool)": ("cpp", "mp::AsyncResult"),
    "get() (multiprocessing.pool.asyncresult method)": ("cpp", "mp::AsyncResult::get"),
    "ready() (multiprocessing.pool.asyncresult method)": ("cpp", "mp::AsyncResult::ready"),
    "successful() (multiprocessing.pool.asyncresult method)": ("cpp", "mp::AsyncResult::successful"),
    "wait() (multiprocessing.pool.asyncresult method)": ("cpp", "mp::AsyncResult::wait"),
}


WHERE = {"cpp": "a cpp directive declaring", "cpp_prefix": "a cpp directive under",
         "term": "a glossary term", "text": "an .rst source containing"}


def load_index(path):
    text = pathlib.Path(path).read_text(encoding="utf-8")
    return json.loads(text[text.index("(") + 1:text.rindex(")")])


def normalise_title(title):
    if title.startswith("Welcome to ") and title.endswith("documentation!"):
        return "Welcome to <project>'s documentation!"
    return title


def main():
    if len(sys.argv) not in (4, 5):
        print(__doc__)
        return 2
    seed_path, src_dir, out_dir = sys.argv[1:4]
    sphinx_build = sys.argv[4] if len(sys.argv) == 5 else "sphinx-build"
    seed = load_index(seed_path)
    build = subprocess.run([sphinx_build, "-W", "-q", "-E", "-a", "-b", "html", src_dir, out_dir],
                           capture_output=True, text=True)
    if build.returncode != 0:
        print("sphinx-build failed:\n" + build.stdout + build.stderr)
        return 1
    built = load_index(pathlib.Path(out_dir) / "searchindex.js")

    problems = []

    built_titles = {normalise_title(t) for t in built["alltitles"]}
    seed_titles = [normalise_title(t) for t in seed["alltitles"]]
    missing_titles = [t for t in seed_titles if t not in built_titles]
    for t in missing_titles:
        problems.append(f"missing section title: {t!r}")

    cpp_names = {entry[4] for entries in built["objects"].values() for entry in entries}
    terms = {name.lower() for name in built["indexentries"]}
    rst_text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(pathlib.Path(src_dir).glob("*.rst")))

    def documented(kind, what):
        if kind == "cpp":
            return what in cpp_names
        if kind == "cpp_prefix":
            return any(n.startswith(what) for n in cpp_names)
        if kind == "term":
            return what in terms
        return what in rst_text

    missing_names = []
    for name in seed["indexentries"]:
        if name not in NAMES:
            missing_names.append(name)
            problems.append(f"index name with no entry in the mapping table: {name!r}")
            continue
        kind, what = NAMES[name]
        alternatives = what if kind == "any" else [(kind, what)]
        if not any(documented(k, w) for k, w in alternatives):
            missing_names.append(name)
            wanted = " or ".join(f"{WHERE[k]} {w!r}" for k, w in alternatives)
            problems.append(f"missing index name: {name!r}: {wanted}")

    for p in problems:
        print(p)
    n_titles, n_names = len(seed_titles), len(seed["indexentries"])
    print(f"titles covered: {n_titles - len(missing_titles)}/{n_titles}")
    print(f"index names covered: {n_names - len(missing_names)}/{n_names}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

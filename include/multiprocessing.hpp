// multiprocessing: Python's multiprocessing package for C++20 on Linux.
// The umbrella header: brings in the whole public API (namespace mp).
#pragma once

#include <multiprocessing/base.hpp>
#include <multiprocessing/logging.hpp>
#include <multiprocessing/reduction.hpp>
#include <multiprocessing/connection.hpp>
#include <multiprocessing/context.hpp>
#include <multiprocessing/process.hpp>
#include <multiprocessing/pickle.hpp>
#include <multiprocessing/synchronize.hpp>
#include <multiprocessing/sharedctypes.hpp>
#include <multiprocessing/shared_memory.hpp>
#include <multiprocessing/queues.hpp>
#include <multiprocessing/managers.hpp>
#include <multiprocessing/pool.hpp>
#include <multiprocessing/dummy.hpp>

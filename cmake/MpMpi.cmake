# The "mpi" start method (src/mpi/, docs/cluster.rst): pools whose workers are MPI ranks.
# MP_WITH_MPI defaults to ON when an MPI library is found (Debian: libopenmpi-dev); without it
# the library builds and works the same, and get_all_start_methods() does not list "mpi".
# Only MPI's C API is used: the C++ bindings (mpicxx) are skipped.
set(MPI_CXX_SKIP_MPICXX TRUE)
find_package(MPI COMPONENTS CXX QUIET)
# Off by default in sanitizer builds: Open MPI is not built with them (TSan reports its threads'
# uninstrumented synchronization, LSan the memory it keeps at exit). -DMP_WITH_MPI=ON forces it.
set(mp_mpi_default ${MPI_CXX_FOUND})
if(MP_SANITIZE)
  set(mp_mpi_default OFF)
endif()
option(MP_WITH_MPI "Build the mpi start method (needs an MPI library)" ${mp_mpi_default})
if(MP_WITH_MPI)
  if(NOT MPI_CXX_FOUND)
    message(FATAL_ERROR "MP_WITH_MPI is ON but no MPI library was found (Debian: apt-get install libopenmpi-dev)")
  endif()
  target_sources(multiprocessing PRIVATE src/mpi/wire.cpp src/mpi/backend.cpp)
  target_link_libraries(multiprocessing PRIVATE MPI::MPI_CXX)
  find_program(MP_MPIEXEC NAMES mpirun mpiexec HINTS ${MPI_HOME} PATH_SUFFIXES bin)
  message(STATUS "multiprocessing: the mpi start method is built (MPI ${MPI_CXX_VERSION}; ${MP_MPIEXEC})")
else()
  target_sources(multiprocessing PRIVATE src/mpi/disabled.cpp)
  message(STATUS "multiprocessing: built without MPI: no mpi start method")
endif()

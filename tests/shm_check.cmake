# The suite's /dev/shm check (STYLE.md: no test leaves a /dev/shm name). Two CTest tests run it:
#   shm_check.setup            FIXTURES_SETUP mp_shm:   records the matching entries now in /dev/shm
#   shm_check.after_all_tests  FIXTURES_CLEANUP mp_shm: runs after every test that requires mp_shm
#                              (all GoogleTest and contract tests do) and fails when a matching
#                              entry appeared since the setup and is still there.
# The check waits up to 10 s for entries to go, because a resource tracker unlinks what a killed
# program left a moment after the program ended. Entries that were there before the suite
# started are not this run's and are ignored.
#
# Usage: cmake -D MODE=setup|check -D STATE=<file> -P shm_check.cmake
#
# Patterns: the library's and CPython's SharedMemory names (psm_), CPython's semaphores (sem.mp-),
# anything else named mp- or mp_ (the names the tests give their own segments).
cmake_minimum_required(VERSION 3.20)
set(patterns psm_* sem.mp-* mp-* mp_*)
set(shm_dir /dev/shm)

function(list_entries out)
  set(found "")
  foreach(p ${patterns})
    file(GLOB entries LIST_DIRECTORIES true RELATIVE ${shm_dir} ${shm_dir}/${p})
    list(APPEND found ${entries})
  endforeach()
  list(REMOVE_DUPLICATES found)
  list(SORT found)
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

if(NOT IS_DIRECTORY ${shm_dir})
  message(STATUS "no ${shm_dir} here: nothing to check")
  return()
endif()

if(MODE STREQUAL "setup")
  list_entries(before)
  file(WRITE ${STATE} "${before}")
  list(LENGTH before n)
  message(STATUS "shm_check: ${n} matching entries in ${shm_dir} before the tests (ignored)")
elseif(MODE STREQUAL "check")
  set(before "")
  if(EXISTS ${STATE})
    file(READ ${STATE} before)
  endif()
  foreach(attempt RANGE 50)
    list_entries(now)
    set(added "")
    foreach(entry ${now})
      if(NOT entry IN_LIST before)
        list(APPEND added ${entry})
      endif()
    endforeach()
    if(NOT added)
      message(STATUS "shm_check: nothing new in ${shm_dir}")
      return()
    endif()
    execute_process(COMMAND ${CMAKE_COMMAND} -E sleep 0.2)
  endforeach()
  string(REPLACE ";" " " added_text "${added}")
  message(FATAL_ERROR "shm_check: the tests left these in ${shm_dir}: ${added_text}")
else()
  message(FATAL_ERROR "shm_check.cmake: MODE must be setup or check")
endif()

# Runs PROGRAM's "output" scenario under MPIRUN and alone; fails unless both succeed and print
# the same lines (and some lines at all).
execute_process(COMMAND ${MPIRUN} ${PROGRAM} output RESULT_VARIABLE rc_mpirun
  OUTPUT_VARIABLE out_mpirun ERROR_VARIABLE err_mpirun TIMEOUT 50)
execute_process(COMMAND ${PROGRAM} output RESULT_VARIABLE rc_alone
  OUTPUT_VARIABLE out_alone ERROR_VARIABLE err_alone TIMEOUT 50)
file(WRITE ${WORK}/same_output_mpirun.txt "${out_mpirun}")
file(WRITE ${WORK}/same_output_alone.txt "${out_alone}")
if(NOT rc_mpirun EQUAL 0)
  message(FATAL_ERROR "under mpirun: exit ${rc_mpirun}\n${err_mpirun}")
endif()
if(NOT rc_alone EQUAL 0)
  message(FATAL_ERROR "without mpirun: exit ${rc_alone}\n${err_alone}")
endif()
if(NOT out_mpirun MATCHES "invalid_argument: three is not allowed\n42\n$")
  message(FATAL_ERROR "unexpected output under mpirun:\n${out_mpirun}")
endif()
if(NOT out_mpirun STREQUAL out_alone)
  message(FATAL_ERROR "the outputs differ (${WORK}/same_output_*.txt)\nmpirun:\n${out_mpirun}\nalone:\n${out_alone}")
endif()
string(LENGTH "${out_mpirun}" n)
message(STATUS "same output with and without mpirun (${n} bytes)")

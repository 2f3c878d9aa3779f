# One source (unit/dummy_switch_program.cpp) built twice, with NS=mp and with NS=mp::dummy: both
# run as tests, and a third test checks that they print the same lines.
foreach(variant mp dummy)
  add_executable(dummy_switch_${variant} ${CMAKE_CURRENT_LIST_DIR}/dummy_switch_program.cpp)
  target_link_libraries(dummy_switch_${variant} PRIVATE multiprocessing::multiprocessing)
  mp_set_warnings(dummy_switch_${variant})
  add_test(NAME dummy_switch.runs_on_${variant} COMMAND dummy_switch_${variant})
  set_tests_properties(dummy_switch.runs_on_${variant} PROPERTIES LABELS unit TIMEOUT 120 FIXTURES_REQUIRED mp_shm)
endforeach()
target_compile_definitions(dummy_switch_mp PRIVATE NS=mp)
target_compile_definitions(dummy_switch_dummy PRIVATE NS=mp::dummy)
add_test(NAME dummy_switch.same_output COMMAND ${CMAKE_COMMAND}
  -D A=$<TARGET_FILE:dummy_switch_mp> -D B=$<TARGET_FILE:dummy_switch_dummy>
  -P ${CMAKE_CURRENT_LIST_DIR}/dummy_switch_compare.cmake)
set_tests_properties(dummy_switch.same_output PROPERTIES LABELS unit TIMEOUT 240 FIXTURES_REQUIRED mp_shm)

# The project's warnings, applied PRIVATE to each of its own targets.
function(mp_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wconversion -Wshadow)
  if(MP_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()

# CUDA kernels of pyengine._C. Included from the top CMakeLists.txt after the _C target exists.
#
# PYENGINE_CUDA (cache option) = AUTO | ON | OFF
#   AUTO  build the CUDA kernels when a CUDA compiler (nvcc) is found (the default)
#   ON    require them: fail when there is no nvcc
#   OFF   skip them (quicker builds; the cuda backend then reports it was built without CUDA)
# The environment variable PYENGINE_CUDA, when set, overrides the option, e.g.
#   PYENGINE_CUDA=OFF pip install .          (or: pip install . -Ccmake.define.PYENGINE_CUDA=OFF)
# GPU architectures: CMAKE_CUDA_ARCHITECTURES (or the CUDAARCHS environment variable),
# default 80;86;89;90 (Ampere, Ada, Hopper; PTX for each, so newer GPUs JIT-compile it).
#
# Only kernels/cuda/*.cu are built here (kernels/cuda/emu/ is the CPU emulator for tests).
# bind_cuda.cu is host-only C++ (pybind11) and goes to the host compiler: nvcc takes
# several times longer on pybind11 headers.

set(_pye_cuda_mode "${PYENGINE_CUDA}")
set(_pye_cuda_from "option PYENGINE_CUDA")
if(DEFINED ENV{PYENGINE_CUDA} AND NOT "$ENV{PYENGINE_CUDA}" STREQUAL "")
  set(_pye_cuda_mode "$ENV{PYENGINE_CUDA}")
  set(_pye_cuda_from "environment variable PYENGINE_CUDA")
endif()
string(TOUPPER "${_pye_cuda_mode}" _pye_cuda_mode)
if(_pye_cuda_mode MATCHES "^(ON|YES|TRUE|Y|1)$")
  set(_pye_cuda_mode ON)
elseif(_pye_cuda_mode MATCHES "^(OFF|NO|FALSE|N|0)$")
  set(_pye_cuda_mode OFF)
elseif(NOT _pye_cuda_mode STREQUAL "AUTO")
  message(FATAL_ERROR "pyengine: ${_pye_cuda_from}='${_pye_cuda_mode}' is not one of AUTO, ON, OFF")
endif()

if(_pye_cuda_mode STREQUAL "OFF")
  message(STATUS "pyengine: CUDA kernels OFF (${_pye_cuda_from}=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_pye_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "pyengine: ${_pye_cuda_from}=ON but no CUDA compiler was found: install the CUDA "
                        "toolkit (nvcc on PATH) or point CUDACXX / CMAKE_CUDA_COMPILER at nvcc")
  endif()
  message(STATUS "pyengine: CUDA kernels OFF (PYENGINE_CUDA=AUTO and nvcc was not found)")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
  set(CMAKE_CUDA_ARCHITECTURES "80;86;89;90")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

message(STATUS "pyengine: CUDA kernels ON (${_pye_cuda_from}=${_pye_cuda_mode}; nvcc ${CMAKE_CUDA_COMPILER_VERSION} "
               "at ${CMAKE_CUDA_COMPILER}; architectures ${CMAKE_CUDA_ARCHITECTURES})")

file(GLOB _pye_cuda_sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cu)
set(_pye_cuda_bind ${CMAKE_CURRENT_LIST_DIR}/bind_cuda.cu)
if(MSVC)
  set_source_files_properties(${_pye_cuda_bind} PROPERTIES LANGUAGE CXX COMPILE_OPTIONS "/TP")
else()
  set_source_files_properties(${_pye_cuda_bind} PROPERTIES LANGUAGE CXX COMPILE_OPTIONS "-xc++")
endif()
target_sources(_C PRIVATE ${_pye_cuda_sources})

# The top-level compile options are written for the C++ compiler (-Wall,
# -fno-math-errno, ...); nvcc would reject them. Keep them for C++ sources only.
get_target_property(_pye_opts _C COMPILE_OPTIONS)
if(_pye_opts)
  set(_pye_cxx_opts "")
  foreach(_o IN LISTS _pye_opts)
    list(APPEND _pye_cxx_opts "$<$<COMPILE_LANGUAGE:CXX>:${_o}>")
  endforeach()
  set_property(TARGET _C PROPERTY COMPILE_OPTIONS ${_pye_cxx_opts})
endif()
target_compile_options(_C PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3>)

string(REPLACE ";" "," _pye_archs "${CMAKE_CUDA_ARCHITECTURES}")
target_compile_definitions(_C PRIVATE PYENGINE_WITH_CUDA=1 PYENGINE_CUDA_ARCHS="${_pye_archs}")
# Static CUDA runtime: the module then needs no libcudart.so at import time, only the
# driver (libcuda.so), which cudart loads on first use; machines without a GPU or
# driver can still import pyengine._C and use the CPU backends.
set_target_properties(_C PROPERTIES CUDA_RUNTIME_LIBRARY Static)
# _C was created before CUDA was enabled, so it did not pick up the architectures.
set_target_properties(_C PROPERTIES CUDA_ARCHITECTURES "${CMAKE_CUDA_ARCHITECTURES}")
target_link_libraries(_C PRIVATE CUDA::cudart_static)

# CUDA kernels of pyengine._C. Included from the top CMakeLists.txt after the _C target exists.
#
# PYENGINE_CUDA (cache option) = AUTO | ON | OFF
#   AUTO  build the CUDA kernels only where they can run: nvcc is found AND an NVIDIA
#         GPU with a working driver is (`nvidia-smi` lists one; without nvidia-smi,
#         /dev/nvidia0 and libcuda.so are taken as the sign). The default.
#   ON    build them whatever this machine has (e.g. a wheel for other machines);
#         fails when there is no nvcc
#   OFF   skip them (the cuda backend then reports it was built without CUDA)
# The environment variable PYENGINE_CUDA, when set, overrides the option, e.g.
#   PYENGINE_CUDA=ON pip install .          (or: pip install . -Ccmake.define.PYENGINE_CUDA=ON)
#
# GPU architectures: by default only those of the GPUs present (nvidia-smi's
# compute_cap, e.g. 8.6 -> 86), since every extra architecture costs a full
# compile of every kernel. PYENGINE_CUDA_ARCHS (environment or cache variable,
# e.g. "80;86;89;90" or "80,90") names the exact list instead; so do
# CMAKE_CUDA_ARCHITECTURES or CUDAARCHS when given. With ON and no GPU and no
# list, 80;86;89;90 (Ampere, Ada, Hopper; PTX for each, so newer GPUs JIT-compile it).
#
# The outcome is one line, PYENGINE_CUDA_SUMMARY, that the top CMakeLists.txt prints.
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
  set(PYENGINE_CUDA_SUMMARY "CUDA off (${_pye_cuda_from}=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  if(_pye_cuda_mode STREQUAL "ON")
    message(FATAL_ERROR "pyengine: ${_pye_cuda_from}=ON but no CUDA compiler was found: install the CUDA "
                        "toolkit (nvcc on PATH) or point CUDACXX / CMAKE_CUDA_COMPILER at nvcc")
  endif()
  set(PYENGINE_CUDA_SUMMARY "CUDA off: no nvcc found (PYENGINE_CUDA=AUTO; install the CUDA toolkit for the GPU backend)")
  return()
endif()

# --- is there a GPU to run them on, and which architectures? ------------------
set(_pye_gpu_archs "")      # e.g. 86;89 from nvidia-smi
set(_pye_gpu_why "")        # how the GPU was (not) found, for the summary line
find_program(PYENGINE_NVIDIA_SMI nvidia-smi)
mark_as_advanced(PYENGINE_NVIDIA_SMI)
if(PYENGINE_NVIDIA_SMI)
  execute_process(COMMAND "${PYENGINE_NVIDIA_SMI}" --query-gpu=compute_cap --format=csv,noheader
                  RESULT_VARIABLE _pye_smi_rc OUTPUT_VARIABLE _pye_smi_out ERROR_QUIET TIMEOUT 30)
  if(_pye_smi_rc EQUAL 0)
    string(REGEX MATCHALL "[0-9]+\\.[0-9]+" _pye_caps "${_pye_smi_out}")
    list(REMOVE_DUPLICATES _pye_caps)
    foreach(_c IN LISTS _pye_caps)
      string(REPLACE "." "" _c "${_c}")
      list(APPEND _pye_gpu_archs "${_c}")
    endforeach()
    list(REMOVE_DUPLICATES _pye_gpu_archs)
  endif()
  if(_pye_gpu_archs)
    set(_pye_gpu_found ON)
    string(REPLACE ";" ", " _pye_gpu_why "nvidia-smi reports compute capability ${_pye_caps}")
  else()
    set(_pye_gpu_found OFF)
    set(_pye_gpu_why "nvcc found but nvidia-smi lists no usable NVIDIA GPU/driver")
  endif()
else()
  find_library(PYENGINE_LIBCUDA NAMES cuda libcuda.so.1
               PATHS /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib/wsl/lib
               NO_CACHE)
  if(EXISTS /dev/nvidia0 AND PYENGINE_LIBCUDA)
    set(_pye_gpu_found ON)
    set(_pye_gpu_why "/dev/nvidia0 and ${PYENGINE_LIBCUDA} present (no nvidia-smi to name the architecture)")
  else()
    set(_pye_gpu_found OFF)
    set(_pye_gpu_why "nvcc found but no NVIDIA GPU/driver")
  endif()
endif()

if(_pye_cuda_mode STREQUAL "AUTO" AND NOT _pye_gpu_found)
  set(PYENGINE_CUDA_SUMMARY "CUDA off: ${_pye_gpu_why} (set PYENGINE_CUDA=ON to build anyway)")
  return()
endif()

set(PYENGINE_CUDA_ARCHS "" CACHE STRING "CUDA architectures to build, e.g. 80;86;89;90 (default: the GPUs present)")
set(_pye_named_archs "${PYENGINE_CUDA_ARCHS}")
set(_pye_archs_from "PYENGINE_CUDA_ARCHS")
if(DEFINED ENV{PYENGINE_CUDA_ARCHS} AND NOT "$ENV{PYENGINE_CUDA_ARCHS}" STREQUAL "")
  set(_pye_named_archs "$ENV{PYENGINE_CUDA_ARCHS}")
endif()
string(REGEX REPLACE "[ ,]+" ";" _pye_named_archs "${_pye_named_archs}")
string(REGEX REPLACE "(^;|;$)" "" _pye_named_archs "${_pye_named_archs}")
if(_pye_named_archs)
  set(CMAKE_CUDA_ARCHITECTURES "${_pye_named_archs}")
elseif(DEFINED CMAKE_CUDA_ARCHITECTURES OR DEFINED ENV{CUDAARCHS})
  set(_pye_archs_from "CMAKE_CUDA_ARCHITECTURES/CUDAARCHS")
elseif(_pye_gpu_archs)
  set(CMAKE_CUDA_ARCHITECTURES "${_pye_gpu_archs}")
  set(_pye_archs_from "the GPUs present")
elseif(_pye_gpu_found AND CMAKE_VERSION VERSION_GREATER_EQUAL 3.24)
  set(CMAKE_CUDA_ARCHITECTURES native)
  set(_pye_archs_from "the GPUs present (CMake's 'native')")
else()
  set(CMAKE_CUDA_ARCHITECTURES "80;86;89;90")
  set(_pye_archs_from "the default list, as there is no GPU to ask; PYENGINE_CUDA_ARCHS picks others")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

if(_pye_cuda_mode STREQUAL "ON")
  set(_pye_cuda_why "${_pye_cuda_from}=ON")
else()
  set(_pye_cuda_why "PYENGINE_CUDA=AUTO and ${_pye_gpu_why}")
endif()
string(REPLACE ";" "," _pye_arch_list "${CMAKE_CUDA_ARCHITECTURES}")
set(PYENGINE_CUDA_SUMMARY "CUDA on for architectures ${_pye_arch_list} (from ${_pye_archs_from}) because ${_pye_cuda_why}; nvcc ${CMAKE_CUDA_COMPILER_VERSION}")

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

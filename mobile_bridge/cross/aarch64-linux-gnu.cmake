# Cross-compiling for 64-bit ARM Linux with Debian's gcc-aarch64-linux-gnu; tests run under
# qemu-aarch64 (Debian's qemu-user), which ctest uses through CMAKE_CROSSCOMPILING_EMULATOR.
# The flags that matter for phones (armv8.2-a+dotprod+fp16, no OpenMP, static) are set by
# mobile_bridge/python/cross_arm64.py, next to the Android NDK / OHOS NDK equivalents in
# mobile_bridge/README.md.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
# BOTH: the prebuilt llama.cpp archives live in a cache folder outside the sysroot
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
find_program(MCV_QEMU_AARCH64 qemu-aarch64)
if(MCV_QEMU_AARCH64)
  # -L: where a dynamically linked test would find ld-linux-aarch64.so.1 (static ones ignore it)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${MCV_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
endif()

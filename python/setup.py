"""Builds dmoe's Python package: the C extension dmoe._C over libdmoe.

libdmoe is built by the project's own CMake build (the one definition of its
sources, per-file flags and optional parts), never by a second list kept here:

  1. DMOE_LIB_DIR set: link the libdmoe.so found there (a CMake build of the
     repository, e.g. one configured with -DDMOE_CUDA=ON), with an rpath to it.
  2. Otherwise: configure the dmoe source tree with the system's cmake into this
     build's temporary folder, build the static library (target dmoe_static),
     and link it into the extension, which then needs nothing at run time.

The source tree is found at DMOE_ROOT, else next to this file (python/ inside
the repository: `pip install ./python` builds in place), else in _libdmoe/
(an sdist made by this setup.py carries a copy there).

Environment knobs: DMOE_ROOT, DMOE_LIB_DIR, DMOE_INCLUDE_DIR (with
DMOE_LIB_DIR), DMOE_CUDA (OFF by default here; AUTO or ON builds the CUDA
backend), DMOE_CMAKE_ARGS (extra arguments for the configure step),
CMAKE (the cmake program), DMOE_BUILD_JOBS.
"""
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
VENDORED = "_libdmoe"


def sdist_skips(name):
    """Top-level entries of the repository an sdist leaves out: this package,
    build trees, VCS and tool state. Everything else goes in, so the copy
    configures whatever the top CMakeLists.txt adds (tools, examples, ...)."""
    return name.startswith(".") or name.startswith("build") or name in (
        "python", "devbin", "dist", "shared", "__pycache__")


def is_source_tree(path):
    return (path / "include" / "dmoe.h").is_file() and (path / "CMakeLists.txt").is_file()


def find_source_tree():
    candidates = []
    if os.environ.get("DMOE_ROOT"):
        candidates.append(Path(os.environ["DMOE_ROOT"]).resolve())
    candidates += [HERE.parent, HERE / VENDORED]
    for c in candidates:
        if is_source_tree(c):
            return c
    raise SystemExit(
        "dmoe: cannot find the dmoe source tree (include/dmoe.h and CMakeLists.txt) in "
        + ", ".join(str(c) for c in candidates)
        + ". Install from the repository (pip install ./python), set DMOE_ROOT to the "
        "repository, or set DMOE_LIB_DIR to a CMake build of it."
    )


def read_cache(build_dir):
    """CMakeCache.txt as a dict of NAME -> value."""
    values = {}
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file():
        for line in cache.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_]+):[A-Z]+=(.*)$", line)
            if m:
                values[m.group(1)] = m.group(2)
    return values


def private_libs(build_dir):
    """Libs.private of the dmoe.pc the CMake build writes: what libdmoe.a needs."""
    pc = build_dir / "dmoe.pc"
    for line in pc.read_text().splitlines():
        if line.startswith("Libs.private:"):
            return shlex.split(line.split(":", 1)[1])
    return []


class BuildExt(build_ext):
    def build_extension(self, ext):
        lib_dir = os.environ.get("DMOE_LIB_DIR")
        if lib_dir:
            self.use_prebuilt(ext, Path(lib_dir).resolve())
        else:
            self.use_cmake_build(ext)
        super().build_extension(ext)

    def use_prebuilt(self, ext, lib_dir):
        if not any(lib_dir.glob("libdmoe.so*")):
            raise SystemExit(f"dmoe: DMOE_LIB_DIR={lib_dir} holds no libdmoe.so")
        inc = os.environ.get("DMOE_INCLUDE_DIR")
        inc = Path(inc).resolve() if inc else find_source_tree() / "include"
        print(f"dmoe: linking the prebuilt libdmoe in {lib_dir}", flush=True)
        ext.include_dirs.append(str(inc))
        ext.library_dirs.append(str(lib_dir))
        ext.runtime_library_dirs.append(str(lib_dir))
        ext.libraries.append("dmoe")
        ext.depends += [str(p) for p in lib_dir.glob("libdmoe.so*")] + [str(inc / "dmoe.h")]

    def use_cmake_build(self, ext):
        root = find_source_tree()
        cmake = os.environ.get("CMAKE") or shutil.which("cmake")
        if not cmake:
            raise SystemExit(
                "dmoe: cmake (>= 3.24) is needed to build libdmoe (apt-get install cmake), "
                "or set DMOE_LIB_DIR to an existing CMake build of dmoe"
            )
        build_dir = Path(self.build_temp).resolve() / "libdmoe"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            cmake, "-S", str(root), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DDMOE_BUILD_TESTS=OFF",
            "-DDMOE_CUDA=" + os.environ.get("DMOE_CUDA", "OFF"),
        ]
        args += shlex.split(os.environ.get("DMOE_CMAKE_ARGS", ""))
        print(f"dmoe: building libdmoe from {root} with cmake", flush=True)
        subprocess.check_call(args)
        jobs = os.environ.get("DMOE_BUILD_JOBS") or str(os.cpu_count() or 1)
        subprocess.check_call(
            [cmake, "--build", str(build_dir), "--target", "dmoe_static", "--parallel", jobs]
        )
        archive = build_dir / "lib" / "libdmoe.a"
        if not archive.is_file():
            raise SystemExit(f"dmoe: the CMake build did not produce {archive}")
        ext.include_dirs.append(str(root / "include"))
        ext.extra_objects.append(str(archive))
        # Relink when libdmoe changed (build_ext looks only at sources and depends).
        ext.depends += [str(archive), str(root / "include" / "dmoe.h")]
        # Keep libdmoe's symbols inside the extension: they are not its interface.
        ext.extra_link_args.append("-Wl,--exclude-libs,libdmoe.a")
        cache = read_cache(build_dir)
        for flag in private_libs(build_dir):
            if flag.startswith("-l"):
                ext.libraries.append(flag[2:])
            else:
                ext.extra_link_args.append(flag)
        if "cudart" in ext.libraries:
            # nvcc compiles .cu files as C++: their objects need the C++ runtime.
            ext.libraries.append("stdc++")
            # Link the cudart CMake found, by path: its folder need not be a default one.
            cudart = cache.get("CUDA_cudart_LIBRARY", "")
            if cudart and Path(cudart).is_file():
                ext.libraries.remove("cudart")
                ext.extra_link_args.append(cudart)
                ext.runtime_library_dirs.append(str(Path(cudart).parent))
            elif cache.get("CUDAToolkit_LIBRARY_DIR"):
                ext.library_dirs.append(cache["CUDAToolkit_LIBRARY_DIR"])
                ext.runtime_library_dirs.append(cache["CUDAToolkit_LIBRARY_DIR"])


class SDist(sdist):
    """An sdist carries the dmoe source tree, so it builds away from the repository."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        root = find_source_tree()
        dest = Path(base_dir) / VENDORED
        dest.mkdir(parents=True, exist_ok=True)
        ignore = shutil.ignore_patterns("*.o", "*.a", "*.so", "build*", "__pycache__", ".*")
        for src in sorted(root.iterdir()):
            if sdist_skips(src.name):
                continue
            if src.is_dir():
                shutil.copytree(src, dest / src.name, ignore=ignore)
            elif src.is_file():
                shutil.copy2(src, dest / src.name)


extension = Extension(
    "dmoe._C",
    sources=["csrc/module.c", "csrc/dlpack-import.c"],
    depends=["csrc/dlpack.h", "csrc/dmoe-python.h"],
    include_dirs=["csrc"],
    extra_compile_args=["-std=c11", "-fvisibility=hidden", "-Wall", "-Wextra",
                        "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExt, "sdist": SDist})

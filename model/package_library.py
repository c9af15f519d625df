"""A compiled package's model library, called through its C interface with ctypes.

torch's loader (`torch._C._aoti.AOTIModelPackageLoader`) keeps Python's interpreter for the
whole of a call into a package: 1-5 ms a step, tens of ms for a rescoring group on a long
expression. Meanwhile no other Python thread runs, so the app's GUI thread stalled for
26-37 ms during the longest readings (session 32). ctypes lets go of the interpreter for
the length of every foreign call, so the same library, called through the C interface
AOTInductor's runners themselves use (`aoti_runtime/interface.h`), runs while the GUI
thread goes on.

Tensors cross the interface as `AtenTensorHandle`s (heap-allocated `at::Tensor`s), made and
taken back by torch's own helpers for its Python runners.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
import weakref
import zipfile
from pathlib import Path

import torch
from torch import Tensor

_SUFFIXES = (".so", ".dll", ".dylib", ".pyd")  # the model library, per platform

_Handle = ctypes.c_void_p
_Size = ctypes.c_size_t
_Name = ctypes.POINTER(ctypes.c_char_p)


class _ConstantEntry(ctypes.Structure):
    """`AOTInductorConstantMapEntry`: a constant's internal name and a tensor handle."""

    _fields_ = [("name", ctypes.c_char_p), ("handle", _Handle)]


# Each C function used, with its argument types: ctypes would otherwise pass Python ints as
# 32-bit C ints, which a `size_t` parameter reads as garbage.
_SIGNATURES: dict[str, list] = {
    "AOTInductorModelContainerCreateWithDevice": [ctypes.POINTER(_Handle), _Size, ctypes.c_char_p, ctypes.c_char_p],
    "AOTInductorModelContainerDelete": [_Handle],
    "AOTInductorModelContainerRun": [
        _Handle, ctypes.POINTER(_Handle), _Size, ctypes.POINTER(_Handle), _Size, _Handle, _Handle
    ],
    "AOTInductorModelContainerGetNumOutputs": [_Handle, ctypes.POINTER(_Size)],
    "AOTInductorModelContainerGetNumConstants": [_Handle, ctypes.POINTER(_Size)],
    "AOTInductorModelContainerGetConstantName": [_Handle, _Size, _Name],
    "AOTInductorModelContainerGetConstantOriginalFQN": [_Handle, _Size, _Name],
    "AOTInductorModelContainerGetConstantFromFolded": [_Handle, _Size, ctypes.POINTER(ctypes.c_bool)],
    "AOTInductorModelContainerUpdateConstantBufferPairs": [
        _Handle, ctypes.POINTER(_ConstantEntry), _Size, ctypes.c_bool, ctypes.c_bool
    ],
}


class LibraryUnavailable(RuntimeError):
    """This package or torch cannot be called through the C interface (an older torch, another
    layout): open it through torch's loader instead."""


def _capsule_api() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:
    get, new = ctypes.pythonapi.PyCapsule_GetPointer, ctypes.pythonapi.PyCapsule_New
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return get, new


_capsule_pointer, _new_capsule = _capsule_api()


def _new_handles(tensors: list[Tensor]) -> list[int]:
    """A new `at::Tensor` on the heap for each tensor (sharing its storage); the callee or
    `_take_handles` frees them."""
    return [_capsule_pointer(c, None) for c in torch._C._aoti.unsafe_alloc_void_ptrs_from_tensors(tensors)]


def _take_handles(handles: list[int]) -> list[Tensor]:
    """The tensors behind handles, whose `at::Tensor`s are freed with them."""
    return torch._C._aoti.alloc_tensors_by_stealing_from_void_ptrs([_new_capsule(h, None, None) for h in handles])


EXTRACTED_PREFIX = "extracted-"  # a model library being loaded; removed once loaded


def _load_library(package: Path) -> ctypes.CDLL:
    """Extract the package's model library beside the package and load it; the file is
    removed once loaded (the library stays mapped), where the platform allows. Beside the
    package, not in the temporary folder, which may forbid running code (noexec); that
    folder is the fallback where the package's own is read-only."""
    with zipfile.ZipFile(package) as archive:
        members = [n for n in archive.namelist() if n.endswith(_SUFFIXES)]
        if len(members) != 1:
            raise LibraryUnavailable(f"{package}: {len(members)} model libraries in the package, not one")
        data = archive.read(members[0])
    suffix = Path(members[0]).suffix
    errors = []
    for folder in (package.parent, None):
        path = None
        try:
            fd, path = tempfile.mkstemp(prefix=EXTRACTED_PREFIX, suffix=suffix, dir=folder)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            return ctypes.CDLL(path)
        except OSError as e:  # a full or read-only disk, a folder mounted noexec
            errors.append(f"{folder or tempfile.gettempdir()}: {e}")
        finally:
            if path is not None:
                with contextlib.suppress(OSError):  # Windows keeps a loaded library's file
                    os.unlink(path)
    raise LibraryUnavailable(f"{package}: the model library cannot be loaded ({'; '.join(errors)})")


class PackageLibrary:
    """A package's model: one model instance in a container, called without the interpreter.
    Same methods as `compiled_step._Runner`."""

    def __init__(self, package: str | Path) -> None:
        if not all(hasattr(torch._C._aoti, f) for f in ("unsafe_alloc_void_ptrs_from_tensors",
                                                         "alloc_tensors_by_stealing_from_void_ptrs")):  # fmt: skip
            raise LibraryUnavailable(f"torch {torch.__version__} cannot hand tensors to a model library")
        try:
            self._lib = _load_library(Path(package))
        except (OSError, zipfile.BadZipFile) as e:  # not a package, or unreadable
            raise LibraryUnavailable(f"{package}: the model library cannot be loaded: {e}") from e
        self._fn = {}
        for name, argtypes in _SIGNATURES.items():
            try:
                fn = getattr(self._lib, name)
            except AttributeError as e:  # a torch older than the pairs interface (2.13 and 2.14 have it)
                raise LibraryUnavailable(f"{package}: the model library lacks {name}") from e
            fn.argtypes, fn.restype = argtypes, ctypes.c_int32
            self._fn[name] = fn
        handle = _Handle()
        self._check("CreateWithDevice", ctypes.byref(handle), 1, b"cpu", None)
        self._handle = handle
        # Not at exit: a daemon thread may still be inside a call, and the process's end frees it all.
        weakref.finalize(self, self._fn["AOTInductorModelContainerDelete"], handle).atexit = False
        count = _Size()
        self._check("GetNumOutputs", handle, ctypes.byref(count))
        self._outputs = count.value
        self._check("GetNumConstants", handle, ctypes.byref(count))
        self._constants: dict[str, bytes] = {}  # the weights it reads: original name -> internal name
        self._fqns: list[str] = []
        for i in range(count.value):
            name, fqn, folded = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_bool()
            self._check("GetConstantName", handle, i, ctypes.byref(name))
            self._check("GetConstantOriginalFQN", handle, i, ctypes.byref(fqn))
            self._check("GetConstantFromFolded", handle, i, ctypes.byref(folded))
            self._fqns.append(fqn.value.decode())
            if not folded.value:  # derived from the weights when the package runs next
                self._constants[fqn.value.decode()] = name.value

    def _check(self, function: str, *args: object) -> None:
        if self._fn[f"AOTInductorModelContainer{function}"](*args) != 0:
            raise RuntimeError(f"the compiled package's {function} failed: {self._last_error()}")

    def _last_error(self) -> str:
        """The library's message for its last failure on this thread, where it keeps one."""
        get = getattr(self._lib, "AOTInductorGetLastError", None)
        message = ctypes.c_char_p()
        if get is not None:
            get.argtypes, get.restype = [_Name], ctypes.c_int32
        if get is None or get(ctypes.byref(message)) != 0 or not message.value:
            return "see the message it wrote to stderr"
        return message.value.decode(errors="replace")

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        handles = _new_handles(list(inputs))  # taken over by the library, even when the call fails
        outputs = (_Handle * self._outputs)()
        self._check("Run", self._handle, (_Handle * len(handles))(*handles), len(handles), outputs, self._outputs,
                    None, None)  # fmt: skip
        return tuple(_take_handles(list(outputs)))

    def get_constant_fqns(self) -> list[str]:
        return list(self._fqns)

    def load_constants(self, constants: dict[str, Tensor]) -> None:
        """Copy these weights (by original name) into the model's constants; the others keep
        their values."""
        unknown = [k for k in constants if k not in self._constants]
        if unknown:
            raise KeyError(f"the compiled package has no weights named {unknown[:3]}")
        handles = _new_handles(list(constants.values()))
        entries = (_ConstantEntry * len(handles))(
            *(_ConstantEntry(self._constants[k], h) for k, h in zip(constants, handles))
        )
        try:  # the library copies the data and leaves the handles to us
            self._check("UpdateConstantBufferPairs", self._handle, entries, len(handles), False, False)
        finally:
            _take_handles(handles)

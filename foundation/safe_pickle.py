"""Load pickle-based files without ever running code from them.

A pickle can name any importable callable, and unpickling calls it: a crafted `.pdparams`,
`.pdopt`, `.pdstates`, `.bin` or id map would run its payload the moment `pickle.load` or
`paddle.load` reads it. The loader here builds only what those files hold: numpy arrays of
non-object dtypes, numpy scalars, plain containers (dict, list, tuple, OrderedDict, set),
strings, bytes and numbers. A file that asks for anything else is refused before the call,
with its path and the name it asked for (the idea behind `torch.load(weights_only=True)`).

Callers may admit a few more names for one kind of file (`extra_globals`), each with a reason.
"""
import collections
import io
import os
import pickle

import numpy as np

from foundation.errors import UserError

try:  # numpy >= 2 moved the pickling helpers to numpy._core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
    from numpy._core.numeric import _frombuffer as _np_frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar
    from numpy.core.numeric import _frombuffer as _np_frombuffer


class UnsafePickleError(UserError):
    """A file that asks the unpickler for something outside the allowed set (exit code 1)."""


class RefusedGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler for a global or argument outside the allowed set."""


def _safe_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedGlobal(f"numpy dtype {dtype} holds Python objects")
    return dtype


def _safe_reconstruct(cls, *args):
    if cls is not np.ndarray:
        raise RefusedGlobal(f"array class {cls!r} is not numpy.ndarray")
    return _np_reconstruct(cls, *args)


def _safe_frombuffer(buffer, dtype, *args):
    # how an array pickles with protocol 5 (the default from Python 3.14): its bytes, dtype, shape, order
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedGlobal(f"numpy array from buffer of dtype {dtype!r}")
    return _np_frombuffer(buffer, dtype, *args)


def _safe_scalar(dtype, *args):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedGlobal(f"numpy scalar of dtype {dtype!r}")
    return _np_scalar(dtype, *args)


def _latin1_encode(text, encoding="latin1"):
    # Python 3 pickles bytes with protocol < 3 as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, allowed, **kwargs):
        super().__init__(file, **kwargs)
        self._allowed = allowed

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"'{module}.{name}'") from None


def safe_loads(data, extra_globals=None, encoding="ASCII"):
    """Unpickle `data` (bytes) with the restricted loader; raises RefusedGlobal or another
    pickle/EOF/value error for a file that is unsafe or not a pickle."""
    allowed = {**ALLOWED_GLOBALS, **(extra_globals or {})}
    return _RestrictedUnpickler(io.BytesIO(data), allowed, encoding=encoding).load()


def load_file(path, what="file", extra_globals=None, encoding="ASCII", fix=""):
    """The unpickled content of `path`; UserError (one line: the path, what is wrong, `fix`) for a
    missing, truncated, malformed or unsafe file."""
    path = str(path)
    if not os.path.isfile(path):
        hint = " (it is a folder)" if os.path.isdir(path) else ""
        raise UserError(f"{what} not found: {path}{hint}")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise UserError(f"{what} {path} is empty (0 bytes){': ' + fix if fix else ''}")
    try:
        return safe_loads(data, extra_globals, encoding)
    except RefusedGlobal as e:
        raise UnsafePickleError(f"refused to load {what} {path}: it asks for {e}, which such a file never holds; "
                                "it may have been crafted to run code. Use a file from a trusted source") from None
    except Exception as e:  # noqa: BLE001 - truncated or malformed pickles fail in many ways
        reason = "it is cut short (truncated)" if isinstance(e, EOFError) or "truncated" in str(e) else \
            f"it is not a readable pickle ({type(e).__name__}: {e})"
        raise UserError(f"cannot read {what} {path}: {reason}{'; ' + fix if fix else ''}") from None

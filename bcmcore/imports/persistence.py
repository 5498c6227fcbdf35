"""Read NVlabs/edm `torch_utils.persistence` pickles (EDM, iGCT snapshots) without running them.

Such a pickle stores every network module as a call `_reconstruct_persistent_obj(meta)` whose `meta`
holds the class name, the instance `__dict__` and the full source text of the defining .py file; the
ordinary loader `exec`s that source. This reader allows a fixed list of globals and nothing else:

  * the persistence hook     -> a `Persistent(class_name, state)` record; `module_src` is never read
  * torch tensor rebuilding  -> torch's rebuild functions (storages: torch.load(weights_only=True))
  * plain containers         -> OrderedDict; nn.ModuleDict / ModuleList / Sequential as records
  * numpy scalars and dtypes -> values read from their raw bytes (object dtypes refused)
  * builtins.getattr         -> an (object, name) record, never called
  * torch dtypes             -> themselves

Any other global (os.system, builtins.exec, a class of the authors' code, ...) and any persistent id
is refused with a UserError naming it. `module_state_dict` then rebuilds the `state_dict()` of a
recorded module.
"""

import collections
import io
import pickle

import numpy as np
import torch

from bcmcore.config import UserError


class Persistent:
    """One persistent object of the stream: its class name and instance dict (meta['state'])."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or "class_name" not in meta:
            raise pickle.UnpicklingError("persistence hook called with an unexpected record")
        self.class_name = str(meta["class_name"]).rsplit(".", 1)[-1]
        self.state = meta.get("state") or {}


class Container:
    """torch.nn ModuleDict / ModuleList / Sequential, rebuilt as a plain record of its __dict__."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state


class BoundMethod:
    """What `getattr(obj, name)` would have returned; kept as data."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, *rest):
    if hooks:
        raise pickle.UnpicklingError("tensor with backward hooks refused")
    return torch._utils._rebuild_tensor_v2(
        storage, offset, size, stride, False, collections.OrderedDict(), *rest
    )


def _rebuild_parameter(data, requires_grad, hooks, *rest):
    if hooks:
        raise pickle.UnpicklingError("parameter with backward hooks refused")
    return data


def _load_storage(b):
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} refused")
    return np.frombuffer(data, dtype=dtype)[0].item()


class _TypeMarker:
    def __init__(self, cls):
        self.cls = cls


def _rebuild_from_type(func, new_type, args, state):
    if not isinstance(new_type, _TypeMarker) or func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError(
            "_rebuild_from_type_v2 allowed only for torch.Tensor / Parameter"
        )
    return func(*args)


_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): Persistent,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "Tensor"): _TypeMarker(torch.Tensor),
    ("torch", "Tensor"): _TypeMarker(torch.Tensor),
    ("torch.nn.parameter", "Parameter"): _TypeMarker(torch.nn.Parameter),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.nn.modules.container", "ModuleDict"): Container,
    ("torch.nn.modules.container", "ModuleList"): Container,
    ("torch.nn.modules.container", "Sequential"): Container,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "getattr"): BoundMethod,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"refused global '{module}.{name}' (not a tensor, container or plain value)"
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refused persistent id {str(pid)[:60]!r}")


def load(path):
    """Unpickle `path` with the restricted unpickler; errors name the file and the refused
    global."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: {e}") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        RuntimeError,
    ) as e:
        raise UserError(
            f"{path}: not a readable EDM persistence pickle ({type(e).__name__}: {str(e)[:120]})"
        ) from None


def module_state_dict(record, prefix=""):
    """`state_dict()` of a recorded module: own parameters, persistent buffers, then children, in
    order."""
    state = record.state
    out = collections.OrderedDict()
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out

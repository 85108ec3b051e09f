"""The quantized-base cache: a method's ``quantize_base`` runs once per base, method and spec.

A home-made quantizer can take minutes, and kbit loads the quantized base several times (training,
the merge, ``kbit eval`` of the adapter). After a real ``quantize_base``, each layer it replaced by a
``kbit.plugin.QuantizedLinear`` subclass is recorded: its path, its class (module and qualified name),
its plain attributes (JSON) and its parameters and buffers (safetensors, never pickle: an entry cannot
run code). A later load with the same key loads the base as usual, rebuilds those layers without
running the quantizer (``cls.__new__`` + ``torch.nn.Module.__init__``) and puts them in place.

The key: the base's content (its safetensors files and ``config.json``), the method's name, its
plugin's distribution and version, the source files of kbit and of the plugin's package, the resolved
spec as canonical JSON and ``QUANTIZED_CACHE_VERSION``; an entry also names the source digest of each
layer class's package, checked before the class is imported (an edited plugin never gets a stale
base: kbit's own source is in the key because plugins quantize with its helpers). An entry is the
folder ``cache_root()/quantized/METHOD-KEY-vN/`` (``kbit-quantized.json`` and ``layers.safetensors``),
staged beside it and renamed into place whole, as ``kbit.core.model.sources`` does for GGUF conversions.

Not cached, said once at INFO with the fix: a layer class defined inside a function, an attribute
JSON cannot hold, a ``quantize_base`` that changed anything besides replacing layers (another module,
parameter or buffer, or ``model.config``). An entry that is damaged, or whose base no longer loads to
the recorded names, shapes, dtypes and config, is ignored with a warning, quantized again and
replaced. An entry written for new code (another version or edited sources of the plugin or kbit) removes the
entries of the same base, method and spec that older code wrote. ``KBIT_NO_QUANTIZED_CACHE=1`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kbit.core.methods.method import Method
from kbit.core.system.cache import cache_root
from kbit.core.model.sources import (
    STAGING_MARK,
    discard_cached,
    staging_folder,
    clean_stale_staging,
    file_sha256,
)
from kbit.core.contract.spec import QuantizationSpec

log = logging.getLogger("kbit")

QUANTIZED_CACHE_VERSION = 1  # bump when what an entry holds, or how it is read, changes
DISABLE_ENV = "KBIT_NO_QUANTIZED_CACHE"
RECORD = "kbit-quantized.json"
TENSORS = "layers.safetensors"
DIGESTS = "quantized-base-digests.json"  # model folder stamp -> content digest: a reload need not hash the base
MAX_DIGESTS = 256
# Module state torch keeps for every layer; the rest of a layer's __dict__ is its own attributes.
_TORCH_STATE = ("training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")
_said: set[str] = set()
_uncacheable: set[tuple[str, str]] = set()  # (method, spec) whose quantize_base this process found not cacheable
_base_digests: dict[tuple[Any, ...], str] = {}


class NotCacheable(Exception):
    """Why a quantized base cannot be recorded; the message ends with what makes it cacheable."""


class Unusable(Exception):
    """Why an entry cannot be used. ``expected``: a plain miss (said at INFO, not as a warning);
    ``touched``: layers were already put in the model, which must be loaded again."""

    def __init__(self, reason: str, *, expected: bool = False, touched: bool = False) -> None:
        super().__init__(reason)
        self.expected, self.touched = expected, touched


def disabled() -> bool:
    from kbit.core.system.environment import env_flag

    return env_flag(DISABLE_ENV)


def load_quantized_base(method: Method, spec: QuantizationSpec, path: str | Path,
                        load: Callable[[], Any]) -> Any:
    """``method.quantize_base(load(), spec)``, or the same model rebuilt from the cache.

    ``load`` loads the base without ``quantize_base``; it is called once, or twice when an entry's
    layers turned out not to fit the base after they were put in place. A cache that cannot be
    written (disk full, read-only) costs a warning, never the load.
    """
    found_uncacheable = (method.name, json.dumps(spec.to_dict(), sort_keys=True, default=repr))
    if disabled() or found_uncacheable in _uncacheable:  # the latter: no need to hash the base again
        return method.quantize_base(load(), spec)
    try:
        key = entry_key(method, spec, Path(path))
    except NotCacheable as exc:
        _say_once(method, str(exc))
        return method.quantize_base(load(), spec)
    entry = entry_folder(method.name, key)
    model = load()
    if entry.exists() or entry.is_symlink():
        try:
            return restore(model, *read_entry(entry, key))
        except Unusable as exc:
            (log.info if exc.expected else log.warning)(
                "cached quantized base %s not used (%s); running quantize_base of method '%s' again and replacing it",
                entry, exc, method.name)
            if exc.touched:
                model = load()
    before = _snapshot(model)
    quantized = method.quantize_base(model, spec)
    try:
        layers = replaced_layers(quantized, model, before)
        write_entry(entry, key, quantized, layers)
        prune_superseded(entry, key)
    except NotCacheable as exc:
        _uncacheable.add(found_uncacheable)
        _say_once(method, str(exc))
    except OSError as exc:
        log.warning("cannot write the quantized base of method '%s' to %s (%s); it is quantized again at the next load",
                    method.name, entry, exc)
    return quantized


def _say_once(method: Method, reason: str) -> None:
    if f"{method.name}\0{reason}" not in _said:
        _said.add(f"{method.name}\0{reason}")
        log.info("method '%s': its quantized base is not cached, so quantize_base runs at every load: %s",
                 method.name, reason)


# The key ----------------------------------------------------------------------------------

def entry_key(method: Method, spec: QuantizationSpec, base: Path) -> dict[str, Any]:
    """What an entry is valid for, as JSON (see the module docs); ``NotCacheable`` when it cannot be known."""
    packages = sorted({"kbit", *plugin_packages(method)})
    fields = {"format": QUANTIZED_CACHE_VERSION, "base": base_digest(base), "method": method.name,
              "distribution": method.distribution, "version": method.version,
              "sources": {package: source_digest(package) for package in packages}, "spec": spec.to_dict()}
    try:
        return json.loads(_canonical(fields))
    except (TypeError, ValueError) as exc:
        raise NotCacheable(f"its spec is not plain JSON ({exc})") from None


def entry_folder(method_name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method_name)
    return cache_root() / "quantized" / f"{safe}-{digest}-v{QUANTIZED_CACHE_VERSION}"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def base_digest(base: Path) -> str:
    """sha256 (16 hex) of a model folder's ``config.json`` and safetensors files; remembered while their
    paths, sizes, modification times (ns) and inodes stay the same, in this process and across processes
    (``DIGESTS`` in kbit's cache: re-hashing a 7B base at every load would cost more than most
    quantizers save)."""
    files = sorted(base.glob("*.safetensors")) + [base / "config.json"]
    try:
        stamp = (str(base.resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) for f in files))
    except OSError:
        raise NotCacheable(f"{base} is not a model folder with config.json and safetensors weights") from None
    if stamp not in _base_digests:
        remembered = _remembered_digests()
        key = _canonical(stamp)
        if key not in remembered:
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file.name}\0{file_sha256(file)}\0".encode())
            remembered[key] = digest.hexdigest()[:16]
            _remember_digests(remembered)
        _base_digests[stamp] = remembered[key]
    return _base_digests[stamp]


def _remembered_digests() -> dict[str, str]:
    try:
        remembered = json.loads((cache_root() / DIGESTS).read_text())
    except (OSError, ValueError):
        return {}
    return remembered if isinstance(remembered, dict) and all(isinstance(v, str) for v in remembered.values()) else {}


def _remember_digests(remembered: dict[str, str]) -> None:
    """Write the digests file whole (a temporary file renamed over it); a failure costs a re-hash next time."""
    folder = cache_root()
    kept = dict(list(remembered.items())[-MAX_DIGESTS:])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f"{DIGESTS}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(kept))
        os.replace(temporary, folder / DIGESTS)
    except OSError as exc:
        log.debug("could not remember base digests in %s: %s", folder, exc)


def plugin_packages(method: Method) -> set[str]:
    """The top-level packages of the plugin's code: its module, or the modules of its object's classes."""
    plugin = method.plugin
    if isinstance(plugin, types.ModuleType):
        modules = [plugin.__name__]
    else:
        modules = [cls.__module__ for cls in type(plugin).__mro__ if cls is not object]
    return {name.partition(".")[0] for name in modules}


def source_digest(package: str) -> str:
    """sha256 (16 hex) of the ``*.py`` files of a top-level package (or its one file), found without
    importing it where it is not imported yet."""
    found = getattr(sys.modules.get(package), "__spec__", None)
    if found is None:
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
    roots = [Path(p) for p in (found.submodule_search_locations or [])] if found is not None else []
    if roots:
        files = sorted((str(f.relative_to(root)), f) for root in roots for f in root.rglob("*.py"))
    elif found is not None and found.has_location and found.origin:
        files = [(Path(found.origin).name, Path(found.origin))]
    else:
        raise NotCacheable(f"kbit cannot read the source of {package}, so it could not tell when it changes; "
                           "install the plugin from files")
    digest = hashlib.sha256()
    for name, file in files:
        try:
            digest.update(f"{name}\0{hashlib.sha256(file.read_bytes()).hexdigest()}\0".encode())
        except OSError as exc:
            raise NotCacheable(f"kbit cannot read the plugin source {file} ({exc})") from None
    return digest.hexdigest()[:16]


# Recording a real quantize_base ---------------------------------------------------------------

def _snapshot(model: Any) -> dict[str, Any]:
    """Weak references to every module (with its class) and tensor (with its in-place version counter), so
    a replaced layer's weight is not kept alive, and the config's digest."""
    return {"modules": {path: (weakref.ref(m), _qualified(type(m))) for path, m in model.named_modules()},
            "tensors": {name: (weakref.ref(t), _version(t)) for name, t in _named_tensors(model)},
            "config": _config_digest(model)}


def _named_tensors(model: Any) -> list[tuple[str, Any]]:
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def _version(tensor: Any) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # an inference-mode tensor has no version counter
        return None


def _config_digest(model: Any) -> str:
    config = getattr(model, "config", None)
    data = config.to_dict() if hasattr(config, "to_dict") else {}
    data.pop("_name_or_path", None)  # where the base was loaded from is not what it is
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _tensor_table(model: Any) -> list[list[Any]]:
    """[name, shape, dtype] of every parameter and buffer, in the model's order (as JSON reads it back)."""
    return [[name, list(t.shape), str(t.dtype)] for name, t in _named_tensors(model)]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and name.startswith(prefixes)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def replaced_layers(quantized: Any, model: Any, before: dict[str, Any]) -> dict[str, Any]:
    """The record of each ``QuantizedLinear`` layer ``quantize_base`` put in ``model``, by path;
    ``NotCacheable`` when it changed anything else, or a layer cannot be rebuilt from a record."""
    from kbit.core.model.quantized_linear import QuantizedLinear

    if quantized is not model:
        raise NotCacheable("quantize_base returned another model than the one it was given; change the model in "
                           "place and return it")
    if _config_digest(model) != before["config"]:
        raise NotCacheable("quantize_base changed model.config; leave the config as loaded")
    layers: dict[str, Any] = {}
    inside: tuple[str, ...] = ()
    paths = set()
    for path, module in model.named_modules():
        paths.add(path)
        if _under(path, inside):
            continue
        ref, replaces = before["modules"].get(path, (None, ""))
        if ref is not None and ref() is module:
            continue
        if ref is None or not isinstance(module, QuantizedLinear):
            raise NotCacheable(f"quantize_base {'added' if ref is None else 'changed'} module {path or 'the model'} "
                               "besides replacing layers by QuantizedLinear subclasses; only replace layers")
        layers[path] = _layer_record(path, module, replaces)
        inside = (*inside, f"{path}.")
    tensors = dict(_named_tensors(model))
    changed = [f"module {path}" for path in before["modules"] if path not in paths and not _under(path, inside)]
    changed += [name for name, (ref, version) in before["tensors"].items() if not _under(name, inside)
                and (name not in tensors or ref() is not tensors[name] or _version(tensors[name]) != version)]
    changed += [name for name in tensors if name not in before["tensors"] and not _under(name, inside)]
    if changed:
        raise NotCacheable(f"quantize_base changed {changed[0]} besides the layers it replaced; only replace layers")
    return layers


def _layer_record(path: str, layer: Any, replaces: str) -> dict[str, Any]:
    """What rebuilds ``layer`` (tensors aside); ``NotCacheable`` when a record cannot."""
    import torch

    cls, fresh = type(layer), dict(torch.nn.Module().__dict__)
    where = f"layer {path} ({_qualified(cls)})"
    if "<locals>" in cls.__qualname__:
        raise NotCacheable(f"its layer class {_qualified(cls)} is defined inside a function, so kbit cannot find it "
                           "again to rebuild a layer; define the QuantizedLinear subclass at module level")
    if layer._modules or any(name not in _TORCH_STATE and layer.__dict__.get(name) != value
                             for name, value in fresh.items()):
        raise NotCacheable(f"{where} has {'submodules' if layer._modules else 'hooks'}, which kbit does not record; "
                           "keep a QuantizedLinear a leaf layer without hooks")
    for kind, tensors, exact in (("parameter", layer._parameters, torch.nn.Parameter),
                                 ("buffer", layer._buffers, torch.Tensor)):
        for name, tensor in tensors.items():
            if tensor is not None and (type(tensor) is not exact or tensor.device.type == "meta"
                                       or tensor.layout != torch.strided):
                raise NotCacheable(f"{where} has {kind} {name}, a {type(tensor).__name__} ({tensor.layout}) on "
                                   f"{tensor.device}, which safetensors cannot hold; keep plain dense tensors in it")
    attributes = {}
    for name, value in layer.__dict__.items():
        if name in fresh:
            continue
        try:
            attributes[name] = _encode(value)
        except TypeError:
            raise NotCacheable(f"{where} has attribute {name}, a {type(value).__name__}, which JSON cannot hold; keep "
                               "tensors in buffers and other attributes to numbers, strings, None, torch dtypes and "
                               "lists, tuples and dicts of them") from None
    return {
        "path": path, "replaces": replaces,
        "class": {"module": cls.__module__, "qualname": cls.__qualname__},
        "training": layer.training,
        "attributes": attributes,
        "parameters": [[name, None if p is None else p.requires_grad] for name, p in layer._parameters.items()],
        "buffers": [[name, name not in layer._non_persistent_buffers_set, b is not None]
                    for name, b in layer._buffers.items()],
    }


def _encode(value: Any) -> Any:
    """``value`` as JSON that ``_decode`` turns back into an equal value of the same types; TypeError otherwise."""
    import torch

    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is list:
        return [_encode(v) for v in value]
    if type(value) is tuple:
        return {"tuple": [_encode(v) for v in value]}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    raise TypeError(type(value).__name__)


def _decode(value: Any) -> Any:
    import torch

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    ((tag, inner),) = value.items()
    if tag == "tuple":
        return tuple(_decode(v) for v in inner)
    if tag == "dict":
        return {k: _decode(v) for k, v in inner.items()}
    if tag == "dtype" and isinstance(getattr(torch, inner, None), torch.dtype):
        return getattr(torch, inner)
    raise ValueError(f"unknown attribute encoding {tag!r}")


def write_entry(entry: Path, key: dict[str, Any], model: Any, layers: dict[str, Any]) -> None:
    """Write the entry for the recorded ``layers`` of ``model``: staged in a hidden folder beside it, then
    renamed into place, so a reader never finds half an entry."""
    from safetensors.torch import save_file

    from kbit.core.runs.folder import write_json_atomic

    tensors: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    stored: dict[int, str] = {}
    storages: set[int] = set()
    for path in layers:
        layer = model.get_submodule(path)
        for name, tensor in [*layer._parameters.items(), *layer._buffers.items()]:
            if tensor is None:
                continue
            if id(tensor) in stored:  # one tensor in two places: stored once, put back as one
                aliases[f"{path}.{name}"] = stored[id(tensor)]
                continue
            stored[id(tensor)] = f"{path}.{name}"
            data = tensor.detach().to("cpu").contiguous()
            storage = data.untyped_storage()
            if storage.data_ptr() in storages or storage.nbytes() != data.numel() * data.element_size():
                data = data.clone()  # safetensors refuses tensors that share memory
            storages.add(data.untyped_storage().data_ptr())
            tensors[f"{path}.{name}"] = data
    packages = {record["class"]["module"].partition(".")[0] for record in layers.values()} - set(key["sources"])
    sources = {package: source_digest(package) for package in sorted(packages)}
    entry.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(entry.parent)
    staging = staging_folder(entry)
    try:
        try:
            save_file(tensors, str(staging / TENSORS))
        except Exception as exc:  # safetensors reports a full disk as its own SafetensorError
            raise OSError(f"safetensors could not write {TENSORS}: {exc}") from exc
        write_json_atomic(staging / RECORD, {
            "format": QUANTIZED_CACHE_VERSION, "key": key, "sources": sources, "layers": list(layers.values()),
            "aliases": aliases,
            "tensors": _tensor_table(model), "config": _config_digest(model),
            "tensors_bytes": (staging / TENSORS).stat().st_size, "tensors_sha256": file_sha256(staging / TENSORS),
            "tensors_stamp": _stamp(staging / TENSORS)})
        (staging / STAGING_MARK).unlink()  # the finished folder is the entry, not a staging folder
        if entry.exists() or entry.is_symlink():
            discard_cached(entry)
        try:
            os.replace(staging, entry)
        except OSError:
            if not (entry / RECORD).is_file():  # else another process wrote it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prune_superseded(entry: Path, key: dict[str, Any]) -> list[Path]:
    """Remove the entries ``entry`` supersedes: the same base, method and spec quantized by other code (another
    version or other sources of the plugin or kbit), which no load of this code can use; returns them. A plugin
    author's every edit would otherwise leave a copy of the quantized base behind."""
    same = {field: key[field] for field in ("base", "method", "distribution", "spec")}
    removed = []
    for other in entry.parent.glob(f"{entry.name.rsplit('-', 2)[0]}-*-v{QUANTIZED_CACHE_VERSION}"):
        if other == entry:
            continue
        try:
            recorded = json.loads((other / RECORD).read_text(encoding="utf-8"))["key"]
            if {field: recorded.get(field) for field in same} == same and recorded != key:
                discard_cached(other)
                removed.append(other)
        except (OSError, ValueError, KeyError, TypeError):  # damaged or being written: left to its own load
            continue
    return removed


# Using an entry -------------------------------------------------------------------------------

def _stamp(file: Path) -> list[int]:
    status = file.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ino]


def read_entry(entry: Path, key: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entry's record and tensors (on the CPU); ``Unusable`` when it is damaged or for another key."""
    from safetensors.torch import load_file

    try:
        record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != QUANTIZED_CACHE_VERSION:
            raise Unusable(f"{RECORD} is not a format-{QUANTIZED_CACHE_VERSION} record")
        if record.get("key") != key:
            raise Unusable("it was written for another key", expected=True)
        for package, digest in record["sources"].items():
            if _source_digest_or_none(package) != digest:
                raise Unusable(f"the source of {package}, which holds its layer class, changed", expected=True)
        size = (entry / TENSORS).stat().st_size
        # hashed again only when the file is no longer the one written (the rename into place keeps its stamp)
        if size != record["tensors_bytes"] or (_stamp(entry / TENSORS) != record.get("tensors_stamp")
                                               and file_sha256(entry / TENSORS) != record["tensors_sha256"]):
            raise Unusable(f"{TENSORS} is not the file that was written")
        return record, load_file(str(entry / TENSORS))
    except Unusable:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable JSON or file, a missing field, a safetensors error: damage
        raise Unusable(f"it is damaged ({type(exc).__name__}: {exc})") from None


def _source_digest_or_none(package: str) -> str | None:
    try:
        return source_digest(package)
    except NotCacheable:
        return None


def restore(model: Any, record: dict[str, Any], tensors: dict[str, Any]) -> Any:
    """``model`` (the base as loaded) with the recorded layers put in place, checked against the record."""
    try:
        layers = record["layers"]
        inside = tuple(f"{layer['path']}." for layer in layers)
        if _config_digest(model) != record["config"]:
            raise Unusable("the base's config is not the one quantized")
        others = [row for row in _tensor_table(model) if not _under(row[0], inside)]
        if others != [row for row in record["tensors"] if not _under(row[0], inside)]:
            raise Unusable("the base's parameters and buffers are not the names, shapes and dtypes quantized")
        allowed, shared = {*record["key"]["sources"], *record["sources"]}, {}
        built = [(layer["path"], _build(model, layer, tensors, record["aliases"], shared, allowed)) for layer in layers]
    except Unusable:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed record, whatever it breaks
        raise Unusable(f"its record is damaged ({type(exc).__name__}: {exc})") from None
    for path, layer in built:
        model.set_submodule(path, layer)
    if _tensor_table(model) != record["tensors"]:
        raise Unusable("the rebuilt model's parameters and buffers are not the recorded names, shapes and dtypes",
                       touched=True)
    return model


def _build(model: Any, layer: dict[str, Any], tensors: dict[str, Any], aliases: dict[str, str],
           shared: dict[str, Any], allowed: set[str]) -> Any:
    """The recorded layer, built without its ``__init__`` (which would quantize again); ``shared`` holds the
    tensors already put back, so one stored in two places is one again."""
    import torch

    path = layer["path"]
    current = model.get_submodule(path)
    if _qualified(type(current)) != layer["replaces"]:
        raise Unusable(f"{path} of the base is a {_qualified(type(current))}, not the {layer['replaces']} replaced")
    cls = _layer_class(layer["class"]["module"], layer["class"]["qualname"], allowed)
    device = next(iter([*current.parameters(), *current.buffers()]), torch.empty(0)).device

    def tensor(name: str, requires_grad: bool | None = None) -> Any:
        stored = aliases.get(f"{path}.{name}", f"{path}.{name}")
        if stored not in shared:
            value = tensors[stored].to(device)
            shared[stored] = value if requires_grad is None else torch.nn.Parameter(value, requires_grad)
        return shared[stored]

    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    module.training = bool(layer["training"])
    for name, requires_grad in layer["parameters"]:
        module.register_parameter(name, None if requires_grad is None else tensor(name, bool(requires_grad)))
    for name, persistent, present in layer["buffers"]:
        module.register_buffer(name, tensor(name) if present else None, persistent=bool(persistent))
    for name, value in layer["attributes"].items():
        if name.startswith("__") or name in module.__dict__ or name in module._parameters or name in module._buffers:
            raise Unusable(f"its record gives layer {path} an attribute {name!r} that cannot be one")
        object.__setattr__(module, name, _decode(value))
    return module


def _layer_class(module_name: str, qualname: str, allowed: set[str]) -> type:
    """The recorded class, imported only from a package whose source the entry was checked against."""
    from kbit.core.model.quantized_linear import QuantizedLinear

    if module_name.partition(".")[0] not in allowed:
        raise Unusable(f"its layer class {module_name}.{qualname} is from a package whose source it does not name")
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise Unusable(f"its layer class {module_name}.{qualname} is gone ({exc})", expected=True) from None
    if not (isinstance(found, type) and issubclass(found, QuantizedLinear)):
        raise Unusable(f"{module_name}.{qualname} is not a QuantizedLinear subclass")
    return found

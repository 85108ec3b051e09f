"""Discovers method plugins through the ``kbit.methods`` entry points and hands out ``Method``s.

Built-in methods are entry points of the ``kbit`` distribution itself: they load exactly as a
third-party plugin does. Loading is lazy and idempotent. A plugin that fails to import, lacks a
required hook, implements an unknown hook, describes itself wrongly or reuses a taken name is
recorded as broken with its distribution name and version; so is one whose option default its own
parser refuses. Every other method keeps working.

Environment:
- ``KBIT_PLUGINS``: comma-separated allow-list of external (non-kbit) method names to load.
- ``KBIT_DISABLE_PLUGINS``: comma-separated method names never to load (built-in or external).
- ``KBIT_BUILTINS_ONLY=1``: load only the methods shipped with kbit.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from kbit.core.system.environment import env_flag
from kbit.core.contract import hookspecs
from kbit.core.errors import MissingDependencyError, PluginError, UnknownMethodError
from kbit.core.methods.method import INTERRUPTS, Method
from kbit.core.contract.method_info import MethodInfo, describe_missing

ENTRY_POINT_GROUP = "kbit.methods"
BUILTIN_DISTRIBUTION = "kbit"

READY, MISSING, BROKEN, DISABLED = "ready", "missing", "broken", "disabled"


@attrs.frozen
class PluginRecord:
    """One entry point's outcome: which method it provides, from where, and whether it works."""

    name: str
    distribution: str
    version: str
    entry_point: str
    status: str
    error: str = ""
    location: str = ""
    info: MethodInfo | None = None
    plugin: Any = attrs.field(default=None, repr=False, eq=False)
    taken_by: str = ""  # the method that kept a name or alias this record claimed too (then it is broken)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.name,
            "aliases": list(info.aliases) if info else [],
            "summary": info.summary if info else "",
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "entry_point": self.entry_point,
            "location": self.location,
            "status": self.status,
            "error": self.error,
            "capabilities": info.capabilities() if info else {},
            "options": info.options.describe() if info else [],
        }


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip().lower() for n in value.split(",") if n.strip()}


class Registry:
    """The methods available in this environment, keyed by canonical name and alias."""

    def __init__(
        self,
        entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._entry_points = entry_points
        self._environ = os.environ if environ is None else environ
        self._records: dict[str, PluginRecord] | None = None
        self._aliases: dict[str, str] = {}
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)

    # Discovery ---------------------------------------------------------------------------

    def _discover(self) -> list[importlib.metadata.EntryPoint]:
        eps = self._entry_points
        if eps is None:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        unique: dict[tuple[str, str, str], importlib.metadata.EntryPoint] = {}
        for ep in eps:
            unique.setdefault((ep.name, _dist_name(ep), ep.value), ep)
        # Built-ins first, so a third-party plugin can never shadow a shipped method.
        return sorted(unique.values(), key=lambda ep: (_dist_name(ep) != BUILTIN_DISTRIBUTION, _dist_name(ep), ep.name))

    def load(self) -> None:
        """Load every permitted entry point once; later calls do nothing."""
        if self._records is not None:
            return
        self._records = {}
        allow = _names(self._environ.get("KBIT_PLUGINS"))
        block = _names(self._environ.get("KBIT_DISABLE_PLUGINS")) or set()
        builtins_only = env_flag("KBIT_BUILTINS_ONLY", self._environ)
        named: set[str] = set()  # every method and distribution name the two lists could mean
        for ep in self._discover():
            dist, version = _dist_name(ep), _dist_version(ep)
            base = dict(name=ep.name.lower(), distribution=dist, version=version, entry_point=ep.value)
            external = dist != BUILTIN_DISTRIBUTION
            names = {base["name"], dist.lower()}  # a method by its name, or every method of a distribution
            named |= names
            if names & block:
                reason = "blocked by KBIT_DISABLE_PLUGINS"
            elif external and builtins_only:
                reason = "external plugins off (KBIT_BUILTINS_ONLY)"
            elif external and allow is not None and not names & allow:
                reason = "not in KBIT_PLUGINS allow-list"
            else:
                reason = ""
            if reason:
                self._keep(PluginRecord(**base, status=DISABLED, error=reason))
                continue
            self._keep(self._load_one(ep, base))
        for variable, listed in (("KBIT_PLUGINS", allow or set()), ("KBIT_DISABLE_PLUGINS", block)):
            if unknown := sorted(listed - named):
                logging.getLogger("kbit").warning("%s names %s, which is no installed method or distribution "
                                                  "(kbit methods lists both)", variable, ", ".join(unknown))

    def _keep(self, record: PluginRecord) -> None:
        assert self._records is not None
        names = [record.name] + (list(record.info.aliases) if record.info else [])
        for name in names:
            owner = self._owner_of(name)
            if owner is not None and record.status not in (DISABLED,):
                if record.plugin is not None:
                    self._pm.unregister(record.plugin)
                record = attrs.evolve(record, status=BROKEN, plugin=None, taken_by=owner.name,
                                      error=_clash_message(record, name, owner))
                break
        key = record.name
        earlier = self._records.get(key)
        if earlier is not None:
            if record.status in (READY, MISSING):  # a broken or disabled plugin claims no name: the usable one gets it
                self._records[f"{key}@{earlier.distribution}"] = earlier
            else:
                key = f"{key}@{record.distribution}"
        self._records[key] = record
        if record.status in (READY, MISSING) and record.info:
            for alias in record.info.aliases:
                self._aliases[alias.lower()] = record.name

    def _invalid_hook(self, exc: Exception) -> str:
        """pluggy's rejection of a hook, on one line, with the arguments kbit's hookspec names."""
        import re

        text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        named = re.search(r"for hook '(\w+)'", text)
        caller = getattr(self._pm.hook, named.group(1), None) if named else None
        spec = getattr(caller, "spec", None)
        if spec is None:
            return f"invalid hook: {text}"
        return (f"invalid hook: {text}; name a hook's arguments as kbit's hookspec does: "
                f"{named.group(1)}({', '.join(spec.argnames)})")

    def _owner_of(self, name: str) -> PluginRecord | None:
        assert self._records is not None
        canonical = self._aliases.get(name, name)
        record = self._records.get(canonical)
        if record is not None and record.status in (READY, MISSING):
            return record
        return None

    def _load_one(self, ep: importlib.metadata.EntryPoint, base: dict[str, str]) -> PluginRecord:
        try:
            plugin = ep.load()
        except INTERRUPTS:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must not take the host down
            return PluginRecord(**base, status=BROKEN, error=f"import failed: {type(exc).__name__}: {exc}",
                                location=_module_file(ep.module))
        location = _location(plugin)
        problem = _contract_problem(self._pm, plugin)
        if problem:
            return PluginRecord(**base, status=BROKEN, error=problem, location=location)
        try:
            self._pm.register(plugin, name=f"{base['distribution']}:{base['name']}")
        except Exception as exc:  # pluggy rejects hook signatures that do not match the specs
            return PluginRecord(**base, status=BROKEN, error=self._invalid_hook(exc), location=location)
        try:
            info = self._pm.subset_hook_caller("describe_method", self._others(plugin))()
        except INTERRUPTS:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit included
            self._pm.unregister(plugin)
            return PluginRecord(**base, status=BROKEN, error=f"describe_method raised {type(exc).__name__}: {exc}", location=location)
        if not isinstance(info, MethodInfo):
            self._pm.unregister(plugin)
            return PluginRecord(
                **base, status=BROKEN, location=location,
                error=f"describe_method returned {type(info).__name__}, expected kbit.plugin.MethodInfo",
            )
        problem = _option_defaults_problem(info, base)
        if problem:
            self._pm.unregister(plugin)
            return PluginRecord(**base, status=BROKEN, error=problem, location=location)
        missing = info.missing_requirements()
        if missing:
            return PluginRecord(**base, status=MISSING, error=describe_missing(missing), location=location, info=info,
                                plugin=plugin)
        problem = self._default_spec_problem(base["name"], base, info, plugin)
        if problem:
            self._pm.unregister(plugin)
            return PluginRecord(**base, status=BROKEN, error=problem, location=location)
        return PluginRecord(**base, status=READY, location=location, info=info, plugin=plugin)

    def _default_spec_problem(self, name: str, base: dict[str, str], info: MethodInfo, plugin: Any) -> str:
        """Why ``resolve_spec`` with no options on a CPU does not give this method's spec, or "".

        Cheap by contract (no torch, no model), so listing can afford it and report a plugin that
        returns the wrong type as broken rather than ready.
        """
        from kbit.core.system.device import DeviceInfo
        from kbit.core.errors import KbitError

        method = Method(name, base["distribution"], base["version"], info, plugin, self._pm)
        try:
            method.resolve_spec({}, DeviceInfo.cpu())
        except KbitError as exc:
            return f"resolve_spec with default options failed: {exc}"
        return ""

    def _others(self, plugin: Any) -> list[Any]:
        return [p for p in self._pm.get_plugins() if p is not plugin]

    # Queries -----------------------------------------------------------------------------

    def records(self) -> list[PluginRecord]:
        self.load()
        assert self._records is not None
        return list(self._records.values())

    def names(self) -> list[str]:
        """Canonical names and aliases of every usable (ready or missing) method."""
        usable = [r for r in self.records() if r.status in (READY, MISSING)]
        return sorted({r.name for r in usable} | set(self._aliases))

    def clash_warning(self, name: str) -> str:
        """One line naming the other distributions that also claim method ``name`` (canonical or alias)
        and which one is used, or "" when no other claims it. Said by ``kbit train`` and ``kbit spec``."""
        self.load()
        assert self._records is not None
        canonical = self._aliases.get(name.strip().lower(), name.strip().lower())
        owner = self._records.get(canonical)
        rivals = [r for r in self._records.values() if r.taken_by == canonical]
        disabled = [r for r in self._records.values() if r.name == canonical and r.status == DISABLED and r is not owner]
        if owner is not None and owner.distribution != BUILTIN_DISTRIBUTION and not rivals and disabled:
            return (f"method '{canonical}' is {owner.distribution} {owner.version}'s: {disabled[0].distribution}'s own "
                    f"'{canonical}' is {disabled[0].error}")
        if owner is None or not rivals:
            return ""
        def claim(rival: PluginRecord) -> str:
            names = [rival.name, *(rival.info.aliases if rival.info else ())]
            name = next((n for n in names if self._aliases.get(n.lower(), n.lower()) == canonical), canonical)
            what = "the name" if name == canonical else f"its alias '{name}'"
            return f"{rival.distribution} {rival.version} (method '{rival.name}', claiming {what})"

        return (f"method '{canonical}' is also claimed by {', '.join(map(claim, rivals))}; using {owner.distribution} "
                f"{owner.version}'s (the first to load keeps a name: see 'kbit methods')")

    def get(self, name: str) -> Method:
        """The method called ``name`` (or one of its aliases), ready to use.

        Raises ``UnknownMethodError`` (with the closest names), ``PluginError`` for a broken or
        disabled plugin, and ``MissingDependencyError`` with the install line.
        """
        self.load()
        assert self._records is not None
        key = name.strip().lower()
        canonical = self._aliases.get(key, key)
        record = self._records.get(canonical)
        if record is None:
            close = difflib.get_close_matches(key, self.names(), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            known = ", ".join(self.names()) or "none"
            raise UnknownMethodError(f"unknown method '{name}'{hint} (known methods: {known}; see 'kbit methods')")
        if record.status in (BROKEN, DISABLED):
            raise PluginError(
                f"method '{record.name}' from {record.distribution} {record.version} is {record.status}: {record.error}"
            )
        if record.status == MISSING:
            raise MissingDependencyError(f"method '{record.name}' {record.error}")
        return Method(record.name, record.distribution, record.version, record.info, record.plugin, self._pm)


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "unknown"


def _dist_version(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.version if dist is not None else "unknown"


def _clash_message(record: PluginRecord, name: str, owner: PluginRecord) -> str:
    """Why ``record`` lost ``name`` to ``owner``, with the fix for its author."""
    held = "" if name == owner.name else f" (an alias of method '{owner.name}')"
    taken = f"is already provided by {owner.distribution} {owner.version}{held}"
    if name != record.name:
        return f"its alias '{name}' {taken}; drop that alias from MethodInfo(aliases=...) in {record.distribution}"
    return f"method name '{name}' {taken}; rename the entry point in {record.distribution}"


def _module_file(module: str) -> str:
    """The file of ``module`` found without importing it (for a plugin whose import failed), else ""."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a missing parent package, or a name that is no module
        return ""
    return (spec.origin or "") if spec is not None else ""


def _location(plugin: Any) -> str:
    """Where a plugin's code is: its module file, or for an object plugin its class's file."""
    import inspect

    found = getattr(plugin, "__file__", None)
    if not found:
        try:
            found = inspect.getsourcefile(type(plugin))
        except TypeError:
            found = None
    return found or ""


def _option_defaults_problem(info: MethodInfo, base: dict[str, str]) -> str:
    """Why an option default of this method does not pass its own parser, or "".

    Checked once, when the method loads (a missing package does not excuse it): a bad default would
    otherwise show only when a run resolves it, or never, where a plugin reads the default unparsed.
    """
    plugin = f"{base['distribution']} {base['version']}"
    for option in info.options.options:
        try:
            option.parsed_default()
        except PluginError as exc:
            return f"{plugin}: {exc}"
        except INTERRUPTS:
            raise
        except BaseException as exc:  # noqa: BLE001 - a parser's own bug must not take the host down
            return (f"{plugin}: the parser of option '{option.name}' raised {type(exc).__name__}: {exc} on its "
                    f"default {option.default!r}; a parser raises ValueError for a value it refuses")
    return ""


def _contract_problem(pm: pluggy.PluginManager, plugin: Any) -> str:
    """Why ``plugin`` does not fit the hook specs, or "" when it does."""
    marker = f"{hookspecs.PROJECT}_impl"
    implemented = {name for name in dir(plugin) if hasattr(getattr(plugin, name, None), marker)}
    unknown = sorted(implemented - {n for n in dir(pm.hook) if not n.startswith("_")})
    missing = [h for h in hookspecs.REQUIRED_HOOKS if h not in implemented]
    problems = [f"implements unknown hook(s) {', '.join(unknown)} (misspelled?)" if unknown else "",
                f"lacks required hook(s) {', '.join(missing)}" if missing else ""]
    return " and ".join(problem for problem in problems if problem)


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over the installed entry points (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT


def get_method(name: str) -> Method:
    """Shortcut for ``default_registry().get(name)``."""
    return default_registry().get(name)

"""``Method``: one selected method plugin, called through its hooks with their contracts enforced.

Every call goes to this plugin's implementation only. Return values are type-checked, and an
unexpected exception inside a plugin becomes a ``PluginError`` naming the distribution, ``SystemExit``
included (a plugin never decides kbit's exit code); kbit's own typed errors raised by a hook
(``ConfigError`` …), the interrupts (Ctrl-C, SIGTERM) and a full or read-only disk's ``OSError`` pass
through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import errno

import pluggy

from kbit.core.system.device import DeviceInfo
from kbit.core.errors import KbitError, MissingDependencyError, PluginError, Terminated
from kbit.core.contract.method_info import MergePolicy, MethodInfo, describe_missing
from kbit.core.contract.spec import QuantizationSpec

# What a hook meets from the machine rather than from its own code: reported as the disk's error, exit 2.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


INTERRUPTS = (KeyboardInterrupt, Terminated)  # what unwinds through plugin code untouched; all else is its failure


class Method:
    """A usable method: its canonical name, provider, description and hook calls."""

    def __init__(
        self, name: str, distribution: str, version: str, info: MethodInfo, plugin: Any, pm: pluggy.PluginManager
    ) -> None:
        self.name = name
        self.distribution = distribution
        self.version = version
        self.info = info
        self._plugin = plugin
        self._pm = pm

    def __repr__(self) -> str:
        return f"Method({self.name!r} from {self.distribution} {self.version})"

    @property
    def plugin(self) -> Any:
        """The plugin object (module or instance) whose hooks this method calls."""
        return self._plugin

    def provenance(self) -> dict[str, Any]:
        """What a run records of the code it used: distribution, version, and the source digest of each of the
        plugin's own packages (kbit's excluded: its version is recorded apart), so a plugin edited without a
        new version is told apart. A package whose source cannot be read is left out."""
        from kbit.core.model.quantized_cache import NotCacheable, plugin_packages, source_digest

        sources = {}
        for package in sorted(plugin_packages(self) - {"kbit"}):
            try:
                sources[package] = source_digest(package)
            except NotCacheable:
                pass
        return {"distribution": self.distribution, "version": self.version, **({"sources": sources} if sources else {})}

    def _call(self, hook: str, **kwargs: Any) -> Any:
        others = [p for p in self._pm.get_plugins() if p is not self._plugin]
        caller = self._pm.subset_hook_caller(hook, others)
        try:
            return caller(**kwargs)
        except (KbitError, *INTERRUPTS):
            raise
        except OSError as exc:
            if exc.errno in ENVIRONMENT_ERRNOS:  # the machine's (a full or read-only disk), not the plugin's bug
                raise
            raise self._hook_error(hook, exc) from exc
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a hook is the plugin's error, not kbit's exit
            raise self._hook_error(hook, exc) from exc

    def _hook_error(self, hook: str, exc: BaseException) -> PluginError:
        where = f"method '{self.name}' ({self.distribution} {self.version}): hook {hook} raised {type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError) and exc.name:  # a package the plugin imports but does not declare
            return PluginError(f"{where}; install {exc.name.split('.')[0]}, and {self.distribution} should declare it "
                               "in MethodInfo(requires=...) so kbit names it before any work")
        return PluginError(f"{where} (a bug in {self.distribution}; kbit --debug shows where)")

    def _wrong_type(self, hook: str, value: Any, expected: str) -> PluginError:
        return PluginError(
            f"method '{self.name}' ({self.distribution} {self.version}): hook {hook} returned "
            f"{type(value).__name__}, expected {expected}"
        )

    def implements(self, hook: str) -> bool:
        return any(impl.plugin is self._plugin for impl in getattr(self._pm.hook, hook).get_hookimpls())

    def check_requirements(self, device: DeviceInfo | None = None) -> None:
        """Raise ``MissingDependencyError`` with the install line before any heavy work."""
        missing = self.info.missing_requirements()
        if missing:
            raise MissingDependencyError(f"method '{self.name}' {describe_missing(missing)}")
        if device is not None and self.info.needs_gpu and device.kind != "cuda":
            raise MissingDependencyError(f"method '{self.name}' needs a CUDA GPU; none is visible here")

    def resolve_spec(self, options: Mapping[str, Any] | None = None, device: DeviceInfo | None = None) -> QuantizationSpec:
        if device is None:
            from kbit.core.system.device import detect_device

            device = detect_device()
        spec = self._call("resolve_spec", options=dict(options or {}), device=device)
        if not isinstance(spec, QuantizationSpec):
            raise self._wrong_type("resolve_spec", spec, "kbit.plugin.QuantizationSpec")
        if spec.method != self.name:
            raise PluginError(
                f"method '{self.name}' ({self.distribution} {self.version}): resolve_spec returned a spec "
                f"for method '{spec.method}'"
            )
        return spec

    def resolve_for_model(self, spec: QuantizationSpec, model_config: Any) -> QuantizationSpec:
        """The spec settled against the model's config (``spec`` itself when the hook is absent or returns None)."""
        if not self.implements("resolve_for_model"):
            return spec
        fitted = self._call("resolve_for_model", spec=spec, model_config=model_config)
        if fitted is None:
            return spec
        if not isinstance(fitted, QuantizationSpec):
            raise self._wrong_type("resolve_for_model", fitted, "kbit.plugin.QuantizationSpec or None")
        if fitted.method != self.name:
            raise PluginError(f"method '{self.name}' ({self.distribution} {self.version}): resolve_for_model returned "
                              f"a spec for method '{fitted.method}'")
        return fitted

    def quantize_base(self, model: Any, spec: QuantizationSpec) -> Any:
        """The method's own quantization of a loaded base (``model`` itself when it has no such hook)."""
        if not self.implements("quantize_base"):
            return model
        return self._module_result("quantize_base", self._call("quantize_base", model=model, spec=spec))

    def dequantize_base(self, model: Any, spec: QuantizationSpec) -> Any:
        if not self.implements("dequantize_base"):
            raise PluginError(f"method '{self.name}' has no dequantize_base hook")
        return self._module_result("dequantize_base", self._call("dequantize_base", model=model, spec=spec))

    def _module_result(self, hook: str, value: Any) -> Any:
        import torch

        if not isinstance(value, torch.nn.Module):
            raise self._wrong_type(hook, value, "a torch.nn.Module")
        return value

    def build_quant_config(self, spec: QuantizationSpec) -> Any | None:
        config = self._call("build_quant_config", spec=spec)
        if config is not None:
            from transformers.utils.quantization_config import QuantizationConfigMixin

            if not isinstance(config, QuantizationConfigMixin):
                raise self._wrong_type("build_quant_config", config, "a transformers quantization config or None")
        return config

    def prepare_model(self, model: Any, spec: QuantizationSpec) -> Any:
        return self._module_result("prepare_model", self._call("prepare_model", model=model, spec=spec))

    def prepare_inference(self, model: Any, spec: QuantizationSpec) -> Any:
        """The plugin's inference-ready model, or ``model`` itself when it has no such hook."""
        if not self.implements("prepare_inference"):
            return model
        result = self._call("prepare_inference", model=model, spec=spec)
        return model if result is None else result

    def merge_policy(self, spec: QuantizationSpec) -> MergePolicy:
        policy = self._call("merge_policy", spec=spec)
        if not isinstance(policy, MergePolicy):
            raise self._wrong_type("merge_policy", policy, "kbit.plugin.MergePolicy")
        return policy

    def quantize_model(self, model_dir: Path, spec: QuantizationSpec, calibration: list[str], output_dir: Path) -> None:
        if not self.implements("quantize_model"):
            raise PluginError(f"method '{self.name}' does not quantize after training (no quantize_model hook)")
        self._call("quantize_model", model_dir=Path(model_dir), spec=spec, calibration=list(calibration), output_dir=Path(output_dir))

"""kubernetes_asyncio's configuration, authentication and transport, without its generated code.

`kubernetes_asyncio/__init__.py` imports every subpackage, and `kubernetes_asyncio.client`'s `__init__`
imports every generated API class and model (~1,500 modules): about 0.5 s and 40 MiB per process, for
code Raven never calls (KubeClient speaks JSON through `ApiClient.call_api`; raven.api has its own
types). Even `kubernetes_asyncio.config` pays it, because its first line imports the package.

`load()` registers those three packages (`kubernetes_asyncio`, `.client`, `.client.models`) as *lazy*
package modules: their `__path__` is the real one, so `import kubernetes_asyncio.config` or
`...client.api_client` finds the real submodules, but the package `__init__` runs only when someone asks
it for a name that is not a submodule (`client.CoreV1Api`, `client.models.V1Node`, `__all__`). Then the
real `__init__` is executed into the same module object, so a program that uses the generated classes
(the tests do) sees the complete package, just later. If the package was imported the ordinary way
before `load()`, nothing is changed.

`urllib3` (imported by `client.configuration` for one helper of HTTP basic auth, nothing else here uses
it) is made a lazy package the same way: ~2 MiB and tens of ms saved unless someone uses it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

# Outermost first: each is created inside the one before it, whose __init__ must not run.
LAZY_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")
# Names a package's __init__ re-exports that can be had from one submodule without the rest: what
# Raven and kubernetes_asyncio.config / .watch import from `kubernetes_asyncio.client` itself.
FROM_SUBMODULE = {
    "kubernetes_asyncio.client": {
        "ApiClient": "api_client",
        "Configuration": "configuration",
        "ApiException": "exceptions",
        "ApiValueError": "exceptions",
    },
}


def _complete(module: ModuleType) -> None:
    """Run the package's real `__init__` into `module` (once)."""
    module.__dict__.pop("__getattr__", None)
    spec = module.__spec__
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(module)


def _lazy_package(name: str) -> ModuleType:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    module = importlib.util.module_from_spec(spec)
    provided = FROM_SUBMODULE.get(name, {})

    def __getattr__(attr: str) -> object:
        # A submodule is imported on its own (what `from package import submodule` expects), and so is
        # a name one submodule provides; any other name is something only the package's __init__
        # defines, so the package is completed first.
        if attr in provided:
            value: object = getattr(importlib.import_module(f"{name}.{provided[attr]}"), attr)
            setattr(module, attr, value)
            return value
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        _complete(module)
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def load() -> None:
    """Make the lean import of kubernetes_asyncio the one this process uses (idempotent)."""
    for names in (LAZY_PACKAGES, ("urllib3",)):
        top = names[0]
        if top in sys.modules:
            continue  # imported the ordinary way already (or load() ran): leave it as it is
        try:
            for name in names:
                _lazy_package(name)
        except BaseException:
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
            raise

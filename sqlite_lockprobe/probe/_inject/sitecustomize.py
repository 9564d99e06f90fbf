"""Injected by `lockprobe trace`: instrument sqlite3 in this interpreter, then run the
sitecustomize this one shadows (if any).

Python imports `sitecustomize` from sys.path at startup (site.py). `lockprobe trace` puts
this directory first on PYTHONPATH and sets LOCKPROBE_TRACE_DIR. At startup this only adds an
import hook (no other import): the probe itself is loaded when the program first imports
sqlite3. Standard library only, and it must never break the program: a failure is one line on
stderr and the program runs untraced. Its syntax stays valid for Python 2.7 too, so an old
interpreter started by the program only chains to its own sitecustomize.
"""

import os
import sys


class _LockprobeSqlite3Hook:
    """A meta path finder that lets `sqlite3.dbapi2` import normally, then instruments it
    before `sqlite3/__init__.py` copies its names (`from sqlite3.dbapi2 import *`)."""

    def find_spec(self, name, path, target=None):
        if name != "sqlite3.dbapi2":
            return None
        import importlib.machinery

        _remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            loader.exec_module = original_exec
            _trace(module)

        loader.exec_module = exec_module
        return spec


def _remove_hook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _LockprobeSqlite3Hook)]


def _load_lockprobe():
    """Import sqlite_lockprobe from two directories above this one (sqlite_lockprobe/probe/
    _inject), without putting its parent (lockprobe's own site-packages) on the program's
    sys.path."""
    if "sqlite_lockprobe" in sys.modules:
        return
    import importlib.util

    package_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        "sqlite_lockprobe",
        os.path.join(package_dir, "__init__.py"),
        submodule_search_locations=[package_dir],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sqlite_lockprobe"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["sqlite_lockprobe"]
        raise


def _trace(dbapi2):
    try:
        _load_lockprobe()
        from sqlite_lockprobe.probe.tracer import install_from_environment

        install_from_environment(dbapi2)
    except Exception as exc:  # noqa: BLE001 - the program must run even if the probe cannot
        sys.stderr.write("lockprobe: the probe is not active in this process (%r)\n" % (exc,))


def _chain():
    """Run the next sitecustomize on sys.path, the one this module shadows."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    if sys.version_info < (3, 4):
        import imp

        try:
            found = imp.find_module("sitecustomize", rest)
        except ImportError:
            return
        try:
            imp.load_module("_lockprobe_chained_sitecustomize", *found)
        finally:
            if found[0] is not None:
                found[0].close()
        return
    import importlib.machinery
    import importlib.util

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["_lockprobe_chained_sitecustomize"] = module
    spec.loader.exec_module(module)


if os.environ.get("LOCKPROBE_TRACE_DIR") and sys.version_info >= (3, 10):
    if "sqlite3.dbapi2" in sys.modules:
        _trace(sys.modules["sqlite3.dbapi2"])
    else:
        sys.meta_path.insert(0, _LockprobeSqlite3Hook())
try:
    _chain()
except Exception as _exc:  # noqa: BLE001 - as site.py does for a failing sitecustomize
    sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n%r\n" % (_exc,))

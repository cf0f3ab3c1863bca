"""The task registry: one way a task exists, whoever defines it.

A name resolves, in this order, to

1. a **built-in**: a task file (``NAME.yaml``) or a Python file (``NAME.py``) in
   ``mtg_local/tasks/builtin/`` (so a new built-in is a new file there);
2. a task **registered in this process**: ``register_task(...)`` with a ``Task``
   subclass, a factory, a ``TaskDefinition`` or a task file;
3. a task a package declares in the **entry-point group** ``mtg_local.tasks``
   (``name = "module:attr"``, the attr being any of the above, or a task file's path),
   so the ``mtg`` commands know it by name once the package is installed.

A ``--task`` value ending in ``.yaml``/``.yml`` is a task file and needs no registration.
Built-in names are reserved: nothing registers over them, so a column named
``mmlu_machine_learning`` is always the paper's task.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtg_local.tasks.base import Task, short_hash
from mtg_local.tasks.errors import TaskDataError, TaskDefinitionError
from mtg_local.tasks.task_file import TaskDefinition, import_module_near, is_task_file, sha256_hex

logger = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).parent / "builtin"
ENTRY_POINT_GROUP = "mtg_local.tasks"


@dataclasses.dataclass(frozen=True)
class TaskSource:
    """How to build one named task.

    Attributes:
        name: the task's name.
        kind: "builtin", "python" (registered or an entry point) or "file" (a task file).
        source: where it is defined (a task file's path, ``module:attr``, an entry point).
        load: returns the definition: a ``TaskDefinition``, a ``Task`` subclass, a
            ``Task`` instance or a factory callable.
        aliases: other names that resolve to it.
        generated: the task makes its own data (takes no ``data_file`` or Hub source).
    """

    name: str
    kind: str
    source: str
    load: Callable[[], Any]
    aliases: tuple[str, ...] = ()
    generated: bool = False


def _builtin_sources(folder: Path) -> dict[str, TaskSource]:
    """The built-ins in ``folder``: ``NAME.yaml`` task files and ``NAME.py`` files defining ``TASK``."""
    out: dict[str, TaskSource] = {}
    for path in sorted(folder.iterdir()):
        source = f"mtg_local/tasks/builtin/{path.name}" if folder == BUILTIN_DIR else str(path)
        if path.suffix == ".yaml":
            d = TaskDefinition.load(path)
            if d.name != path.stem:
                raise TaskDefinitionError(d.where, "name", f"a built-in's name must be its file name {path.stem!r}")
            out[d.name] = TaskSource(d.name, "builtin", source, lambda d=d: d, d.aliases, d.generated)
        elif path.suffix == ".py" and not path.name.startswith("_"):
            module, _ = import_module_near(path.name, folder)
            if not hasattr(module, "TASK"):
                raise TaskDefinitionError(f"built-in task file {path}", "TASK", "missing: define TASK, a Task "
                                          "subclass or a callable returning a Task")
            out[path.stem] = TaskSource(path.stem, "builtin", source, lambda m=module: m.TASK,
                                        tuple(getattr(module, "ALIASES", ())), bool(getattr(module, "GENERATED", False)))
    return out


class Registry:
    """Names -> ``TaskSource`` (see the module docstring); built-ins and entry points are read on first use."""

    def __init__(self, builtin_dir: Path = BUILTIN_DIR) -> None:
        self.builtin_dir = builtin_dir
        self._lock = threading.RLock()
        self._builtins: dict[str, TaskSource] | None = None
        self._registered: dict[str, TaskSource] = {}
        self._entry_points: dict[str, TaskSource] | None = None

    def builtins(self) -> dict[str, TaskSource]:
        with self._lock:
            if self._builtins is None:
                self._builtins = _builtin_sources(self.builtin_dir)
            return self._builtins

    def entry_points(self) -> dict[str, TaskSource]:
        with self._lock:
            if self._entry_points is None:
                from importlib.metadata import entry_points

                found: dict[str, TaskSource] = {}
                for ep in entry_points(group=ENTRY_POINT_GROUP):
                    if ep.name in self.builtins() or ep.name in found:
                        logger.warning("entry point %s = %s of group %s: task %r already exists; ignored",
                                       ep.name, ep.value, ENTRY_POINT_GROUP, ep.name)
                        continue
                    found[ep.name] = TaskSource(ep.name, "python", f"entry point {ep.name} = {ep.value}",
                                                lambda ep=ep: _entry_point_object(ep))
                self._entry_points = found
            return self._entry_points

    def refresh_entry_points(self) -> None:
        """Re-reads the entry points (after a package was installed in this process)."""
        with self._lock:
            self._entry_points = None

    def _aliases(self) -> dict[str, str]:
        out = {}
        for src in (*self.builtins().values(), *self._registered.values()):
            out.update({a: src.name for a in src.aliases})
        return out

    def names(self) -> list[str]:
        """Every name a task can be asked for (aliases right after their task)."""
        out = []
        for table in (self.builtins(), self._registered, self.entry_points()):
            for name, src in table.items():
                out += [name, *src.aliases]
        return out

    def resolve_name(self, name: str) -> str:
        return self._aliases().get(name, name)

    def lookup(self, name: str) -> TaskSource:
        """The source of ``name`` (an alias resolves to its task).

        Raises:
            TaskDataError: no task has that name.
        """
        name = self.resolve_name(name)
        for table in (self.builtins(), self._registered, self.entry_points()):
            if name in table:
                return table[name]
        raise TaskDataError(f"unknown task {name!r}; known: {', '.join(self.names())} "
                            "(or a task file: --task path/to/task.yaml, docs/tasks.md)")

    def register(self, source: TaskSource, *, replace: bool = False) -> None:
        with self._lock:
            taken = {*self.builtins(), *self._aliases()}
            for n in (source.name, *source.aliases):
                if n in taken:
                    raise TaskDefinitionError(f"register_task({source.source})", "name",
                                              f"{n!r} is a built-in task's name; choose another")
                old = self._registered.get(n)
                if old is not None and not replace and old.source != source.source:
                    raise TaskDefinitionError(f"register_task({source.source})", "name",
                                              f"{n!r} is already registered ({old.source}); pass replace=True "
                                              "to register another task under it")
            self._registered[source.name] = source


REGISTRY = Registry()


def _entry_point_object(ep: Any) -> Any:
    try:
        obj = ep.load()
    except Exception as e:  # noqa: BLE001 - a broken plug-in is the user's to fix, in one line
        raise TaskDefinitionError(f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP})", None,
                                  f"cannot be loaded ({type(e).__name__}: {e})") from e
    if isinstance(obj, (str, Path)):
        return TaskDefinition.load(obj)
    return obj


def _object_source(obj: Any) -> str:
    if isinstance(obj, TaskDefinition):
        return str(obj.path) if obj.path else obj.where
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', repr(target))}"


def register_task(obj: Any = None, /, *, name: str | None = None, aliases: tuple[str, ...] = (),
                  replace: bool = False) -> Any:
    """Makes a task known by name in this process (the commands run in-process find it too).

    ``obj`` is a ``Task`` subclass (its ``name``), a ``Task`` instance, a ``TaskDefinition``
    (``Task.define(...)``), a task file's path, or a factory returning a ``Task`` (then
    ``name=`` is required). Used bare on a class it is a decorator (``@register_task``).

    Returns:
        ``obj`` (so it can decorate a class).

    Raises:
        TaskDefinitionError: no name, a built-in's name, a name already taken by another task
            (unless ``replace``), or a task file that is wrong.
    """
    if obj is None:
        return lambda o: register_task(o, name=name, aliases=aliases, replace=replace)
    loaded = TaskDefinition.load(obj) if isinstance(obj, (str, Path)) else obj
    task_name = name or (loaded.name if isinstance(loaded, (TaskDefinition, Task)) else
                         getattr(loaded, "name", None) if inspect.isclass(loaded) else None)
    where = f"register_task({_object_source(loaded)})"
    if not isinstance(task_name, str) or not task_name:
        raise TaskDefinitionError(where, "name", "missing: give the Task class a 'name' or pass name=")
    from mtg_local.tasks.task_file import NAME_PATTERN

    if not NAME_PATTERN.fullmatch(task_name) or is_task_file(task_name):
        raise TaskDefinitionError(where, "name", f"{task_name!r} must be letters, digits, '_', '.' or '-', "
                                                 "starting with a letter")
    if not (isinstance(loaded, (TaskDefinition, Task)) or callable(loaded)):
        raise TaskDefinitionError(where, None, "is not a Task subclass, a Task, a task definition or a factory")
    kind = "file" if isinstance(loaded, TaskDefinition) and loaded.path is not None else "python"
    aliases = tuple(aliases) + (loaded.aliases if isinstance(loaded, TaskDefinition) else ())
    REGISTRY.register(TaskSource(task_name, kind, _object_source(loaded), lambda: loaded, aliases,
                                 bool(getattr(loaded, "generated", False))), replace=replace)
    return obj


# ---------------------------------------------------------------- building


def _source_hash(obj: Any) -> str:
    """sha256 of the file that defines ``obj`` (a class or function), with its qualified name."""
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    try:
        text = Path(inspect.getfile(target)).read_bytes()
    except (TypeError, OSError):
        text = b""
    return sha256_hex(sha256_hex(text) + _object_source(obj))


def _call(factory: Callable[..., Any], name: str, options: dict[str, Any], generated: bool) -> Any:
    """``factory`` called with the options it takes (``data_file``, ``seed``, ``strict``, extra args)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if options.get("data_file") is not None and "data_file" not in params and not takes_all:
        if generated:
            raise TaskDataError(f"task {name!r} is generated offline and reads no data; "
                                "a data file is for tasks that read one")
        raise TaskDataError(f"task {name!r} reads no data file (its factory takes no data_file)")
    return factory(**{k: v for k, v in options.items() if (takes_all or k in params) and
                      not (k == "data_file" and v is None)})


def build_task(spec: str, *, data_file: str | None, seed: int, strict: bool, registry: Registry = REGISTRY) -> Task:
    """The task ``spec`` names (a registered name, an alias, or a task file path), with ``origin`` set.

    Raises:
        TaskDataError: unknown name, or a data file for a task that reads none.
        TaskDefinitionError: a task file or a registered definition is wrong.
    """
    if is_task_file(spec):
        definition = TaskDefinition.load(spec)
        if definition.name in registry.builtins() or definition.name in registry._aliases():
            raise TaskDefinitionError(definition.where, "name", f"{definition.name!r} is a built-in task's name "
                                      "(the report shows the paper's numbers beside it); choose another")
        source = TaskSource(definition.name, "file", str(definition.path), lambda: definition)
    else:
        source = registry.lookup(spec)
    obj = source.load()
    options = {"data_file": data_file, "seed": seed, "strict": strict}
    if isinstance(obj, TaskDefinition):
        if obj.factory is not None:
            task = _call(obj.factory, source.name, {**options, **obj.factory_args}, obj.generated or source.generated)
            definition_hash = obj.definition_hash
        else:
            from mtg_local.tasks.defined_task import DefinedTask

            task = DefinedTask(obj, seed=seed, strict=strict, data_file=data_file)
            definition_hash = obj.definition_hash
    elif isinstance(obj, Task):
        if data_file is not None:
            raise TaskDataError(f"task {source.name!r} was registered as a ready Task object; it reads no data file")
        task, definition_hash = obj, _source_hash(obj)
    elif callable(obj):
        task, definition_hash = _call(obj, source.name, options, source.generated), _source_hash(obj)
    else:
        raise TaskDefinitionError(source.source, None, f"is {type(obj).__name__}, not a task")
    if not isinstance(task, Task):
        raise TaskDefinitionError(source.source, None, f"built a {type(task).__name__}, not a mtg_local Task")
    kind, where = source.kind, source.source
    if kind == "builtin":
        definition_hash = short_hash({"builtin": source.name})
    elif isinstance(obj, TaskDefinition) and obj.path is not None:  # a task file however it was registered
        kind, where = "file", str(obj.path)
    task.name = source.name  # results, reports and multi-task ids use the name it was asked by
    task.origin = {"kind": kind, "source": where, "definition_hash": definition_hash[:12]}
    return task

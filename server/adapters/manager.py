"""The adapters one server holds, by name: found at start-up, loaded on demand or by an admin,
merged per recipe, evicted least-recently-used, unloaded once no row uses them.

`resolve(ref)` turns a request's `AdapterRef` into the peft adapter key its rows run with (None:
the base model), loading or merging what is missing. Names, keys and use counts are guarded by
one lock; model changes go one at a time (`_mutate`) through `run_exclusive`, which the engine
sets to its loop's `call` so that they happen between two forward passes, never during one.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.adapters import paths
from server.adapters.runtime import LoraRuntime
from server.adapters.types import (
    BASE,
    COMBINED,
    MERGE_STRATEGIES,
    SIGN_METHODS,
    SOURCES,
    AdapterError,
    AdapterInfo,
    AdapterRef,
    MergeRecipe,
)
from server.adapters.validate import check_adapter
from server.config import Settings
from server.engine.errors import EngineUnavailable

log = logging.getLogger(__name__)
MAX_MERGE_IDS = 16


@dataclass
class _Entry:
    name: str  # public name; "" for a merge (cached under its recipe)
    key: str  # the peft adapter name
    path: str
    rank: int
    strength: float = 1.0
    recipe: MergeRecipe | None = None
    pinned: bool = False  # `combined`: never evicted
    users: int = 0  # requests holding it (they may still run rows with it)
    closing: bool = False  # unload asked; waits for users to reach 0

    def info(self, parent: str) -> AdapterInfo:
        return AdapterInfo(self.name, self.path, self.rank, self.strength, parent)


def _direct(fn: Callable[[], Any]) -> Any:
    return fn()


class AdapterManager:
    def __init__(self, model: Any, settings: Settings, served_name: str = "",
                 run_exclusive: Callable[[Callable[[], Any]], Any] | None = None, refusal: str = "") -> None:
        self.model = model
        self.refusal = refusal  # why this server takes no adapters at all ("": it does)
        self.strengths = settings.adapter_strengths
        self.runtime = LoraRuntime(model)
        self.roots = paths.Roots.of(settings.adapters_dir, settings.adapter_roots)
        self.max_loaded = settings.max_loaded_adapters
        self.allow_remote = settings.adapter_allow_remote
        self.default_name = settings.default_adapter or BASE  # start() picks `combined` when it exists
        self._default_setting = settings.default_adapter
        self.parent = served_name
        self.run_exclusive = run_exclusive or _direct
        self.on_change: Callable[[int], None] | None = None
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # by key; least recently used first
        self._names: dict[str, str] = {}  # public name -> key
        self._merges: dict[MergeRecipe, str] = {}
        self._known: dict[str, Path] = {}  # name -> folder (admin loads), to reload after eviction
        self._lock = threading.Condition(threading.RLock())
        self._mutate = threading.Lock()
        self._ids = itertools.count(1)

    # what the API modules and metrics read
    @property
    def loaded(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def held(self) -> int:
        """Requests holding an adapter now (each releases its hold when its stream ends)."""
        with self._lock:
            return sum(e.users for e in self._entries.values())

    def list(self) -> list[AdapterInfo]:
        """Named adapters (merges are per-request and not listed), `combined` first."""
        with self._lock:
            named = [e for e in self._entries.values() if e.name and not e.closing]
        return [e.info(self.parent) for e in sorted(named, key=lambda e: (e.name != COMBINED, e.name))]

    def label(self, key: str | None) -> str:
        """The metrics label of a resolved key: "base", an adapter's name, or "merged" (any merge)."""
        if key is None:
            return BASE
        with self._lock:
            entry = self._entries.get(key)
            return (entry.name or "merged") if entry is not None else "-"

    # start-up
    def start(self) -> list[str]:
        """Load every adapter under ADAPTERS_DIR with its Kaito strength (`adapter_strengths`: a
        variable named after it, default 1.0), build `combined`, and settle DEFAULT_ADAPTER."""
        found = paths.scan(self.roots.adapters_dir)
        if found and self.refusal:
            raise AdapterError("invalid_adapter", f"ADAPTERS_DIR holds adapters: {self.refusal}")
        keys, strengths = [], []
        for name, folder in found:
            strength = self.strengths.get(name, 1.0)
            keys.append(self._load(name, folder, strength=strength, evict=False))
            strengths.append(strength)
            log.info("Adapter added: %s", name)
        if found:
            ranks = [self._entries[k].rank for k in keys]
            key = self._new_key(COMBINED)
            # `cat` keeps each adapter's delta exactly (rank = the sum); one adapter is scaled as is
            combination = "cat" if len(keys) > 1 else "linear"
            self._exclusive(lambda: self.runtime.merge(key, keys, strengths, combination))
            with self._lock:
                self._register(_Entry(COMBINED, key, "", sum(ranks) if len(keys) > 1 else ranks[0],
                                      pinned=True))
        self.default_name = self._default_setting or (COMBINED if found else BASE)
        with self._mutate:
            self._evict()
        if self.default_name != BASE:
            self.resolve(AdapterRef(self.default_name))  # fail at start, with the reason, not per request
        self._changed()
        return [name for name, _ in found]

    # requests
    def resolve(self, ref: AdapterRef | None, hold: bool = False) -> str | None:
        """The peft adapter key for a request (None = the base model); loads or merges on demand.
        With `hold`, the adapter is kept (not evicted or unloaded) until `release(key)`."""
        ref = ref or AdapterRef()
        if ref.source not in SOURCES:
            raise AdapterError("unsupported_source", f"adapter_source {ref.source!r} is not supported "
                               f"(use one of: {', '.join(SOURCES)})")
        if ref.merge is not None:
            self._check_refusal()
            return self._merged(ref.merge, ref, hold)
        name = ref.name or self.default_name
        if name == BASE:
            return None
        self._check_refusal()
        for _ in range(3):  # loaded, then (re)loaded on demand; a concurrent eviction can intervene
            with self._lock:
                key = self._names.get(name)
                if key is not None:
                    return self._use(key, hold)
            self._load_on_demand(name, ref)
        raise AdapterError("adapter_capacity", f"adapter {name!r} could not be kept loaded "
                           "(MAX_LOADED_ADAPTERS is too small for the adapters in use); retry later")

    def release(self, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.users > 0:
                entry.users -= 1
                if entry.users == 0:
                    self._lock.notify_all()

    # admin
    def load(self, name: str, path: str) -> AdapterInfo:
        """Load the folder at `path` (confined to the allowed roots) as adapter `name`."""
        self._check_refusal()
        if not name or name in (BASE, COMBINED) or name.strip() != name or "\x00" in name:
            raise AdapterError("invalid_adapter", f"{name!r} cannot be an adapter name")
        folder = paths.confine(path, self.roots)
        with self._lock:
            if name in self._names:
                raise AdapterError("invalid_adapter", f"adapter {name!r} is already loaded; unload it first")
        key = self._load(name, folder)
        with self._lock:
            self._known[name] = folder
            return self._entries[key].info(self.parent)

    def unload(self, name: str, timeout: float | None = None) -> None:
        """Stop new requests from using `name`, wait for the rows that do, then free it."""
        if name == COMBINED:  # DEFAULT_ADAPTER may be it, and its parts may be gone: it stays
            raise AdapterError("invalid_adapter", "`combined` is built at start-up and cannot be unloaded")
        with self._lock:
            key = self._names.get(name)
            if key is None:
                raise AdapterError("unknown_adapter", f"adapter {name!r} is not loaded")
            entry = self._entries[key]
            entry.closing = True
            del self._names[name]
            self._known.pop(name, None)
            if not self._lock.wait_for(lambda: entry.users == 0, timeout):
                raise AdapterError("unknown_adapter", f"adapter {name!r} is still in use", status=409)
        with self._mutate:
            with self._lock:
                self._forget(entry)
            self._exclusive(lambda: self.runtime.delete(key))
        log.info("adapter unloaded: %s", name)
        self._changed()

    # internals
    def _check_refusal(self) -> None:
        if self.refusal:
            raise AdapterError("invalid_adapter", self.refusal)

    def _use(self, key: str, hold: bool) -> str:
        entry = self._entries[key]
        self._entries.move_to_end(key)
        if hold:
            entry.users += 1
        return key

    def _load_on_demand(self, name: str, ref: AdapterRef) -> None:
        if ref.source == "hub":
            paths.check_hub_id(name)
            self._load(name, _hub_folder(name, ref.api_token, self.allow_remote))
            return
        if name == COMBINED:
            raise AdapterError("unknown_adapter", "there is no `combined` adapter: ADAPTERS_DIR held no "
                               "adapters at start-up")
        with self._lock:
            folder = self._known.get(name)
        if folder is None:
            folder = paths.confine(name, self.roots)
            public = paths.name_for(folder, self.roots)
            if public != name:  # e.g. /mnt/adapter/sql is the adapter `sql`
                with self._lock:
                    if public in self._names:
                        self._names[name] = self._names[public]
                        return
        self._load(name, folder)

    def _load(self, name: str, folder: Path, strength: float = 1.0, evict: bool = True) -> str:
        with self._mutate:
            with self._lock:
                if name in self._names:
                    return self._names[name]
            spec = check_adapter(folder, self.model, name)
            key = self._new_key(name)
            try:
                self._exclusive(lambda: self.runtime.load(key, str(folder)))
            except EngineUnavailable:  # the engine stopped (a drain): not the adapter's fault
                raise
            except Exception as exc:
                log.warning("adapter %s failed to load: %s", name, type(exc).__name__)
                self._exclusive(lambda: self.runtime.delete(key))
                raise AdapterError("invalid_adapter", f"adapter {name!r} could not be loaded "
                                   f"({type(exc).__name__})") from None
            with self._lock:
                self._register(_Entry(name, key, str(folder), spec.rank, strength))
            if evict:
                self._evict(keep=key)
        log.info("adapter loaded: %s (rank %d)", name, spec.rank)
        self._changed()
        return key

    def _merged(self, recipe: MergeRecipe, ref: AdapterRef, hold: bool) -> str:
        _check_recipe(recipe)
        with self._lock:
            key = self._merges.get(recipe)
            if key is not None:
                return self._use(key, hold)
        parts: list[str] = []
        try:
            for part in recipe.ids:
                key = self.resolve(AdapterRef(part, ref.source, api_token=ref.api_token), hold=True)
                parts.append(key)
            with self._lock:
                ranks = [self._entries[k].rank for k in parts]
            if len(set(ranks)) > 1:
                raise AdapterError("bad_merge", "merged_adapters: the adapters have different ranks ("
                                   + ", ".join(f"{i} r={r}" for i, r in zip(recipe.ids, ranks, strict=True))
                                   + f"); merge_strategy {recipe.strategy} needs equal ranks")
            with self._mutate:
                with self._lock:
                    if recipe in self._merges:
                        return self._use(self._merges[recipe], hold)
                key = self._new_key("merge")
                density = None if recipe.strategy == "linear" else recipe.density
                self._exclusive(lambda: self.runtime.merge(key, parts, recipe.weights, recipe.strategy,
                                                            density, recipe.majority_sign_method))
                with self._lock:
                    self._register(_Entry("", key, "", ranks[0], recipe=recipe))
                    self._use(key, hold)
                self._evict(keep=key)
            self._changed()
            return key
        finally:
            for k in parts:
                self.release(k)

    def _register(self, entry: _Entry) -> None:
        self._entries[entry.key] = entry
        if entry.recipe is not None:
            self._merges[entry.recipe] = entry.key
        else:
            self._names[entry.name] = entry.key

    def _forget(self, entry: _Entry) -> None:
        self._entries.pop(entry.key, None)
        if entry.recipe is not None:
            self._merges.pop(entry.recipe, None)
        for name in [n for n, k in self._names.items() if k == entry.key]:
            del self._names[name]

    def _evict(self, keep: str | None = None) -> None:
        """Free the least recently used adapters nobody holds until MAX_LOADED_ADAPTERS fit
        (called with `_mutate` held)."""
        while True:
            with self._lock:
                if len(self._entries) <= self.max_loaded:
                    return
                victim = next((e for e in self._entries.values()
                               if e.users == 0 and not e.pinned and not e.closing and e.key != keep), None)
                if victim is None:
                    log.warning("%d adapters loaded, over MAX_LOADED_ADAPTERS=%d: all in use",
                                len(self._entries), self.max_loaded)
                    return
                self._forget(victim)
            self._exclusive(lambda k=victim.key: self.runtime.delete(k))
            log.info("adapter evicted (least recently used): %s", victim.name or "a merge")

    def _exclusive(self, fn: Callable[[], Any]) -> Any:
        return self.run_exclusive(fn)

    def _new_key(self, name: str) -> str:
        return f"{re.sub(r'[^A-Za-z0-9_]', '_', name)[-40:]}_{next(self._ids)}"

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.loaded)


def _check_recipe(r: MergeRecipe) -> None:
    def bad(message: str) -> AdapterError:
        return AdapterError("bad_merge", f"merged_adapters: {message}")

    if not r.ids or len(r.ids) > MAX_MERGE_IDS:
        raise bad(f"give 1 to {MAX_MERGE_IDS} adapter ids")
    if len(r.weights) != len(r.ids):
        raise bad(f"{len(r.ids)} ids but {len(r.weights)} weights")
    if not all(isinstance(w, int | float) and math.isfinite(w) for w in r.weights):
        raise bad("weights must be finite numbers")
    if any(i in (BASE, "") for i in r.ids):
        raise bad("the base model cannot be merged; name adapters")
    if r.strategy not in MERGE_STRATEGIES:
        raise bad(f"merge_strategy {r.strategy!r} is not one of {', '.join(MERGE_STRATEGIES)}")
    if not (isinstance(r.density, int | float) and 0 < r.density <= 1):
        raise bad(f"density {r.density!r} must be in (0, 1]")
    if r.majority_sign_method not in SIGN_METHODS:
        raise bad(f"majority_sign_method {r.majority_sign_method!r} is not one of {', '.join(SIGN_METHODS)}")


def _hub_folder(repo_id: str, token: str | None, allow_remote: bool) -> Path:
    """A hub adapter's folder: from the local Hugging Face cache, downloaded only when allowed."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=not allow_remote, token=token,
                                      allow_patterns=[paths.CONFIG_FILE, paths.WEIGHTS_FILE]))
    except Exception:
        where = "" if allow_remote else " in the local Hugging Face cache (ADAPTER_ALLOW_REMOTE is off)"
        raise AdapterError("unknown_adapter", f"adapter {repo_id!r} not found{where}") from None

"""Adapters through `Engine.submit`: every bad input is an AdapterError with its status and kind
(and the engine keeps serving), start-up refusals, LRU eviction, and load / use / unload while
other requests run."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from server.adapters import AdapterError, AdapterRef, MergeRecipe
from server.config import ConfigError, load_settings
from server.engine.request import collect
from server.observability import metrics
from tests.support.adapters import Reference, make_request

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, adapters_dir: Path,
          foreign_adapters: dict[str, Path]) -> dict[str, Path]:
    """ADAPTERS_DIR (adapter1..3) and an extra root holding broken and foreign adapters."""
    top = tmp_path_factory.mktemp("roots")
    mnt = shutil.copytree(adapters_dir, top / "mnt")
    extra = top / "extra"
    shutil.copytree(foreign_adapters["shape"], extra / "other-base")
    shutil.copytree(foreign_adapters["modules"], extra / "other-modules")
    corrupt = shutil.copytree(adapters_dir / "adapter1", extra / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    missing = shutil.copytree(adapters_dir / "adapter1", extra / "no-weights")
    (missing / "adapter_model.safetensors").unlink()
    outside = shutil.copytree(adapters_dir / "adapter2", top / "outside" / "adapter2")
    os.symlink(outside, extra / "link-out")
    return {"mnt": mnt, "extra": extra, "outside": outside}


@pytest.fixture(scope="module")
def engine(roots: dict[str, Path]):
    from server.engine.engine import Engine
    from tests.support.engine import embedded_settings

    e = Engine(embedded_settings(adapters_dir=str(roots["mnt"]), adapter_roots=(str(roots["extra"]),)))
    e.start(background=False)
    yield e
    e.drain(30)


def _bad(roots: dict[str, Path]) -> list[tuple[AdapterRef, int, str, str]]:
    extra = roots["extra"]
    merge = lambda *a, **k: AdapterRef(merge=MergeRecipe(*a, **k))  # noqa: E731
    return [
        (AdapterRef("nope"), 404, "unknown_adapter", "'nope' not found"),
        (AdapterRef("../outside/adapter2"), 400, "forbidden_path", "outside ADAPTERS_DIR"),
        (AdapterRef(str(roots["outside"])), 400, "forbidden_path", "outside ADAPTERS_DIR"),
        (AdapterRef("/etc"), 400, "forbidden_path", "outside ADAPTERS_DIR"),
        (AdapterRef(str(extra / "link-out")), 400, "forbidden_path", "symlinks out"),
        (AdapterRef(str(extra / "other-base")), 400, "invalid_adapter", "another base model"),
        (AdapterRef(str(extra / "other-modules")), 400, "invalid_adapter", "c_attn"),
        (AdapterRef(str(extra / "corrupt")), 400, "invalid_adapter", "corrupt"),
        (AdapterRef(str(extra / "no-weights")), 400, "invalid_adapter", "is missing"),
        (AdapterRef("adapter1", source="s3"), 400, "unsupported_source", "'s3'"),
        (AdapterRef("someone/some-adapter", source="hub"), 404, "unknown_adapter", "Hugging Face cache"),
        (AdapterRef("../../etc", source="hub"), 400, "invalid_adapter", "not a hub id"),
        (merge(("adapter1", "adapter2"), (1.0,)), 400, "bad_merge", "2 ids but 1 weights"),
        (merge(("adapter1", "adapter3"), (0.5, 0.5)), 400, "bad_merge", "different ranks"),
        (merge(("adapter1", "adapter2"), (0.5, 0.5), "svd"), 400, "bad_merge", "merge_strategy 'svd'"),
        (merge(("adapter1", "adapter2"), (0.5, 0.5), "ties", 0.0), 400, "bad_merge", "density"),
        (merge(("adapter1", "adapter2"), (0.5, 0.5), "ties", 1.5), 400, "bad_merge", "density"),
        (merge(("adapter1", "adapter2"), (0.5, 0.5), "ties", 0.5, "most"), 400, "bad_merge", "majority_sign"),
        (merge(("adapter1", "base"), (0.5, 0.5)), 400, "bad_merge", "base model"),
        (merge((), ()), 400, "bad_merge", "adapter ids"),
        (merge(("adapter1", "nope"), (0.5, 0.5)), 404, "unknown_adapter", "'nope'"),
        (merge(("adapter1", "adapter2"), (0.5, float("nan"))), 400, "bad_merge", "finite"),
    ]


def test_every_bad_input_is_an_adapter_error_and_the_engine_keeps_serving(engine, roots) -> None:
    for ref, status, kind, needle in _bad(roots):
        req = make_request(engine, "Hi", ref, max_new_tokens=2)
        with pytest.raises(AdapterError) as err:
            engine.submit(req)
        assert (err.value.status, err.value.kind) == (status, kind), ref
        assert needle in err.value.message, (ref, err.value.message)
        if ref.name != str(roots["outside"]):  # a resolved path is never shown, only what was sent
            assert str(roots["outside"]) not in err.value.message
    ok = make_request(engine, "Hi", AdapterRef("adapter1"), max_new_tokens=3)
    engine.submit(ok)
    assert metrics.ADAPTER.get() == "adapter1"  # this thread's request is counted under its adapter
    assert len(collect(ok, timeout=120)[0].token_ids) >= 1
    assert engine.adapters.held == 0  # no hold leaked by a refusal
    names = {a.name for a in engine.adapters.list()}
    assert names == {"combined", "adapter1", "adapter2", "adapter3"}  # nothing half-loaded stayed
    with pytest.raises(AdapterError) as err:
        engine.adapters.unload("combined")
    assert err.value.status == 400


def test_scoring_takes_the_adapter(engine) -> None:
    ids = engine.encode("The capital of France is Paris")
    base, _ = engine.score(ids, adapter=AdapterRef("base"))
    tuned, _ = engine.score(ids, adapter=AdapterRef("adapter1"))
    again, _ = engine.score(ids, adapter=AdapterRef("base"))
    assert base == again and base != tuned
    with pytest.raises(AdapterError):
        engine.score(ids, adapter=AdapterRef("nope"))


def test_start_up_refuses_bad_adapters_with_the_reason(tmp_path: Path, start_engine_raw, roots,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(roots["extra"] / "other-base", bad / "other-base")
    engine = start_engine_raw(adapters_dir=str(bad))
    assert engine.loop is None and not engine.healthy
    assert "other-base" in engine.load_error and "another base model" in engine.load_error
    good = tmp_path / "good"
    shutil.copytree(roots["mnt"] / "adapter1", good / "adapter1")
    with pytest.raises(ConfigError, match="adapter1='strong' is not a number"):  # refused at start
        load_settings({"ADAPTERS_DIR": str(good), "adapter1": "strong"})
    engine = start_engine_raw(adapters_dir=str(good), default_adapter="nope")
    assert "'nope' not found" in engine.load_error


def test_without_adapters_the_base_serves_and_combined_is_unknown(tmp_path: Path, start_engine) -> None:
    engine = start_engine(adapters_dir=str(tmp_path / "none"))
    assert engine.adapters.default_name == "base" and engine.adapters.list() == []
    req = make_request(engine, "Hi", None, max_new_tokens=2)
    engine.submit(req)
    assert req.adapter_key is None and collect(req, timeout=120)[0].token_ids
    with pytest.raises(AdapterError) as err:
        engine.submit(make_request(engine, "Hi", AdapterRef("combined")))
    assert err.value.status == 404 and "combined" in err.value.message


def test_least_recently_used_adapters_are_evicted_never_one_in_use(roots, start_engine) -> None:
    engine = start_engine(adapters_dir=str(roots["mnt"]), max_loaded_adapters=2)
    m = engine.adapters
    assert [a.name for a in m.list()] == ["combined", "adapter3"]  # trimmed after start-up; combined stays
    assert metrics.REGISTRY.get_sample_value("inferbox_loaded_adapters") == 2
    held = m.resolve(AdapterRef("adapter1"), hold=True)  # on demand from ADAPTERS_DIR; adapter3 goes
    assert [a.name for a in m.list()] == ["combined", "adapter1"]
    m.resolve(AdapterRef("adapter2"))  # adapter1 is in use: nothing can go, one over the limit
    assert [a.name for a in m.list()] == ["combined", "adapter1", "adapter2"]
    m.release(held)
    m.resolve(AdapterRef("adapter3"))  # now the least recently used (adapter1) goes
    assert [a.name for a in m.list()] == ["combined", "adapter3"]
    req = make_request(engine, "Hi", AdapterRef("adapter1"), max_new_tokens=2)  # reloads on demand
    engine.submit(req)
    assert collect(req, timeout=120)[0].token_ids
    assert metrics.REGISTRY.get_sample_value("inferbox_loaded_adapters") == m.loaded == 2


def test_an_adapter_evicted_before_each_use_is_a_503_not_a_404(roots, start_engine, monkeypatch) -> None:
    engine = start_engine(adapters_dir=str(roots["mnt"]), max_loaded_adapters=2)
    m = engine.adapters
    monkeypatch.setattr(m, "_load_on_demand", lambda name, ref: None)  # as if evicted again each time
    with pytest.raises(AdapterError) as err:
        m.resolve(AdapterRef("adapter1"))
    assert (err.value.status, err.value.kind) == (503, "adapter_capacity")
    assert "MAX_LOADED_ADAPTERS" in err.value.message


def test_load_use_unload_while_other_requests_stream(roots, reference: Reference, start_engine,
                                                     tmp_path: Path) -> None:
    engine = start_engine(adapters_dir=str(tmp_path / "empty"), adapter_roots=(str(roots["mnt"]),))
    eos, pad = engine.limits.eos_token_ids, engine.limits.pad_token_id
    background = [make_request(engine, f"Count to {n}.", None, max_new_tokens=48, min_new_tokens=48)
                  for n in (5, 7, 9)]
    for r in background:
        engine.submit(r)
    while any(r.stream.first_token_at is None for r in background):
        time.sleep(0.01)

    info = engine.adapters.load("mine", str(roots["mnt"] / "adapter1"))  # between two decode steps
    assert (info.name, info.rank, info.parent) == ("mine", 4, "smollm2-135m-instruct")
    assert [a.name for a in engine.adapters.list()] == ["mine"]
    used = make_request(engine, "Write a haiku about autumn.", AdapterRef("mine"))
    engine.submit(used)
    assert collect(used, timeout=300)[0].token_ids == reference.generate("adapter1", used.input_ids, eos, pad)

    long = make_request(engine, "Tell me a story.", AdapterRef("mine"), max_new_tokens=40, min_new_tokens=40)
    engine.submit(long)
    while long.stream.first_token_at is None:
        time.sleep(0.01)
    done = threading.Event()
    unloader = threading.Thread(target=lambda: (engine.adapters.unload("mine"), done.set()))
    unloader.start()
    time.sleep(0.3)
    assert not done.is_set() and not long.stream.closed.is_set()  # waits for the row using it
    with pytest.raises(AdapterError) as err:  # already gone for new requests
        engine.submit(make_request(engine, "Hi", AdapterRef("mine")))
    assert err.value.status == 404
    assert len(collect(long, timeout=300)[0].token_ids) == 40
    unloader.join(60)
    assert done.is_set() and engine.adapters.loaded == 0
    with pytest.raises(AdapterError) as err:
        engine.submit(make_request(engine, "Hi", AdapterRef("mine")))
    assert (err.value.status, err.value.kind) == (404, "unknown_adapter")
    for r in background:  # nothing lost: every streaming request got all its tokens, as the base model
        res = collect(r, timeout=300)[0]
        assert len(res.token_ids) == 48 and res.finish_reason == "length"
    with pytest.raises(AdapterError) as err:
        engine.adapters.unload("mine")
    assert err.value.status == 404
    with pytest.raises(AdapterError) as err:
        engine.adapters.load("x", str(roots["outside"]))
    assert err.value.kind == "forbidden_path"
    with pytest.raises(AdapterError) as err:
        engine.adapters.load("base", str(roots["mnt"] / "adapter2"))
    assert err.value.kind == "invalid_adapter"


def test_hub_adapters_come_from_the_local_cache(engine, adapters_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """`adapter_source: hub` reads the local Hugging Face cache (no download: ADAPTER_ALLOW_REMOTE
    is off); the token is never logged."""
    import huggingface_hub.constants

    snapshot = tmp_path / "models--team--sql-lora" / "snapshots" / ("0" * 40)
    shutil.copytree(adapters_dir / "adapter2", snapshot)
    (tmp_path / "models--team--sql-lora" / "refs").mkdir()
    (tmp_path / "models--team--sql-lora" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    ref = AdapterRef("team/sql-lora", source="hub", api_token="hf_secret_token")
    with caplog.at_level("DEBUG"):
        req = make_request(engine, "Hi", ref, max_new_tokens=2)
        engine.submit(req)
        assert collect(req, timeout=120)[0].token_ids
    assert "team/sql-lora" in {a.name for a in engine.adapters.list()}
    assert "hf_secret_token" not in caplog.text and "hf_secret_token" not in repr(ref)
    with pytest.raises(AdapterError) as err:  # a local name is not looked up on the hub, and back
        engine.submit(make_request(engine, "Hi", AdapterRef("team/other", source="hub")))
    assert err.value.status == 404

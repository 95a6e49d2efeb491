"""The engine as the API modules see it: load the model once (in the background: `host.py`),
tokenize, submit requests.

Under tensor parallelism this is rank 0: it joins the other ranks before loading, and its runner
tells them every forward (server/engine/lockstep.py). A lost rank ends the loop; `_loop_died` then
answers every waiting request with a 503 and `on_lost` ends the process, so that Kubernetes
restarts the pod (a half of a model cannot serve).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from server.adapters.manager import AdapterManager
from server.adapters.runtime import use_adapters
from server.adapters.types import AdapterRef
from server.config import Settings
from server.engine.constraint_mask import MaskApplier
from server.engine.errors import EngineUnavailable, InvalidConstraint
from server.engine.grammar import Constraint, ConstraintSpec, GrammarLimits, Grammars, supported
from server.engine.host import ModelHost
from server.engine.lockstep import Channel, Leader, Score
from server.engine.loop import EngineLoop
from server.engine.params import ModelLimits
from server.engine.policy import Policy, PolicyLimits
from server.engine.request import GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.stops import StopChecker
from server.model import loader, ranks
from server.observability import metrics

log = logging.getLogger(__name__)


class Engine(ModelHost):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.loaded: loader.LoadedModel | None = None
        self.loop: EngineLoop | None = None
        self.limits: ModelLimits | None = None
        self.adapters: AdapterManager | None = None
        self.grammars: Grammars | None = None  # output constraints (None: the tokenizer can't)
        self._no_grammars = ""  # why there are none
        # requests handed to the loop, so a dead loop thread cannot leave them waiting
        self._submitted: weakref.WeakValueDictionary[str, GenerationRequest] = weakref.WeakValueDictionary()
        self._submitted_lock = threading.Lock()
        self.leader: Leader | None = None  # tensor parallelism: what tells the other ranks
        self.on_lost: Callable[[], None] | None = None  # a rank was lost: end the process (lifecycle.py)

    def _build(self) -> None:
        s = self.settings
        group = ranks.SINGLE
        if s.tensor_parallel > 1:
            group = ranks.join(s)
            self.leader = Leader(Channel(group.control, on_send=metrics.BROADCAST_SECONDS.observe))
        loaded = loader.load(self.settings, group)
        defaults = {k: v for k, v in loaded.model.generation_config.to_diff_dict().items()
                    if k not in ("transformers_version", "_from_model_config")}
        defaults.update(self.settings.generation_defaults)
        if self.settings.speculative_ngram_tokens and "prompt_lookup_num_tokens" not in defaults:
            defaults["prompt_lookup_num_tokens"] = self.settings.speculative_ngram_tokens
        self.limits = ModelLimits(
            context_length=loaded.context_length,
            eos_token_ids=loaded.eos_token_ids,
            pad_token_id=loaded.pad_token_id,
            vocab_size=int(loaded.model.config.get_text_config().vocab_size),
            generation_defaults=defaults,
        )
        self.grammars, self._no_grammars = _grammars(loaded, self.limits.vocab_size, self.settings)
        if self.grammars is None:
            log.info("structured outputs off: %s", self._no_grammars)
        loop = build_loop(loaded, self.settings, self.grammars, self.leader)
        adapters = AdapterManager(loaded.model, self.settings, served_name=self.settings.served_model_name,
                                  refusal=_adapter_refusal(s))
        adapters.on_change = metrics.LOADED_ADAPTERS.set
        adapters.start()  # before the loop runs: Kaito's adapters, `combined`, DEFAULT_ADAPTER
        adapters.run_exclusive = _between_steps(loop, loaded)  # from now on, between two steps
        self.adapters = adapters
        self.loop = loop
        self.loop.start()
        self.loaded = loaded
        log.info("Model loaded successfully")  # Kaito's end-to-end tests wait for this line

    def _loop_died(self) -> None:
        with self._submitted_lock:
            stranded = [r for r in list(self._submitted.values()) if not r.stream.closed.is_set()]
        log.critical("the engine loop thread died; /health reports 503; failing %d waiting request(s)",
                     len(stranded))
        lost = self.leader is not None
        for r in stranded:
            if lost:  # a rank was lost: the server cannot go on, but the request was fine (503)
                r.stream.abort("the engine stopped: a tensor-parallel rank was lost; retry")
            else:
                r.stream.fail("the engine stopped unexpectedly")
        if lost and self.on_lost is not None:
            self.on_lost()

    def drain(self, timeout: float | None = None) -> None:
        super().drain(timeout)
        loop = self.loop
        if self.leader is not None and loop is not None and loop.ended:
            try:
                self.leader.stop()  # the other ranks exit cleanly
            except BaseException:  # noqa: BLE001 - a rank already gone: it exits on its own
                log.warning("telling the other ranks to stop failed")

    # request path
    def _require(self) -> loader.LoadedModel:
        # Draining does not block tokenizer use: in-flight requests still decode their output.
        if self.loaded is None:
            raise EngineUnavailable("the model is not loaded yet")
        return self.loaded

    @property
    def tokenizer(self) -> Any:
        return self._require().tokenizer

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_chat(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Apply the chat template with a generation prompt; raises ValueError for bad messages.
        `tools` (OpenAI function tools) go to templates that render them (server/api/openai/tool_calls.py)."""
        tok = self.tokenizer
        if not tok.chat_template:
            raise ValueError("this model has no chat template; send `prompt` or set CHAT_TEMPLATE")
        text = tok.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                       tokenize=False)
        return self.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=clean_up_tokenization_spaces)

    def score(self, input_ids: list[int], start: int = 1, top_n: int = 0, adapter: AdapterRef | None = None,
              ) -> tuple[list[float], list[list[tuple[int, float]]] | None]:
        """Logprobs of given tokens (prompt scoring) under the request's adapter; see
        server/engine/scoring.py. Raises AdapterError as `submit` does."""
        from server.engine.scoring import token_logprobs

        loaded = self._require()
        assert self.adapters is not None
        key = self.adapters.resolve(adapter, hold=True)
        try:
            if self.leader is not None:  # every rank runs the forward, between two engine steps
                leader, loop = self.leader, self.loop
                assert loop is not None

                def scored() -> tuple[list[float], list[list[tuple[int, float]]] | None]:
                    with leader.forward(Score(list(input_ids))):
                        return token_logprobs(loaded, input_ids, start, top_n)
                return loop.call(scored)
            if key is None:
                return token_logprobs(loaded, input_ids, start, top_n)
            # the model lock keeps adapter changes (taken on the loop's thread) out of this forward
            with loaded.model_lock, use_adapters(key):
                return token_logprobs(loaded, input_ids, start, top_n)
        finally:
            self.adapters.release(key)

    def compile_constraint(self, spec: ConstraintSpec) -> Constraint:
        """Compile an output constraint on the caller's (HTTP) thread; InvalidConstraint for one
        that cannot be enforced, or when this model's tokenizer cannot take constraints."""
        self._require()
        if self.grammars is None:
            raise InvalidConstraint(f"structured outputs are not available for this model: "
                                    f"{self._no_grammars}")
        return self.grammars.compile(spec)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request. Its adapter is resolved here, on the caller's thread (loaded on demand
        if need be), so that an AdapterError reaches the API module as a 4xx."""
        self._require()
        if self.draining:
            raise EngineUnavailable("the server is shutting down")
        assert self.loop is not None and self.adapters is not None
        key = request.adapter_key = self.adapters.resolve(request.adapter, hold=True)
        metrics.ADAPTER.set(self.adapters.label(key))  # the HTTP request's metrics label
        if key is not None:
            request.stream.on_close(lambda: self.adapters.release(key))
        try:
            self.loop.submit(request)
        except Exception:
            request.stream.fail("not queued")  # releases the adapter; the caller sees the exception
            raise
        with self._submitted_lock:
            self._submitted[request.id] = request
        if request.constraint is not None:
            metrics.CONSTRAINED.labels(kind=request.constraint.kind).inc()


def _between_steps(loop: EngineLoop, loaded: loader.LoadedModel) -> Callable[[Callable[[], Any]], Any]:
    """Run a model change on the loop's thread between two steps, holding the model lock (so a
    prompt-scoring forward on an HTTP thread is not mid-way either)."""
    def run(fn: Callable[[], Any]) -> Any:
        def locked() -> Any:
            with loaded.model_lock:
                return fn()
        return loop.call(locked)
    return run


def _grammars(loaded: loader.LoadedModel, vocab_size: int, s: Settings) -> tuple[Grammars | None, str]:
    """llguidance's view of the tokenizer, built once at load (about a second); or None and why
    (a tokenizer it cannot read leaves the server serving, without output constraints)."""
    ok, why = supported(loaded.tokenizer)
    if not ok:
        return None, why
    limits = GrammarLimits(max_bytes=s.max_grammar_bytes, compile_timeout_s=s.grammar_compile_timeout_s)
    try:
        return Grammars(loaded.tokenizer, vocab_size, loaded.eos_token_ids, limits), ""
    except Exception as exc:  # llguidance refuses some tokenizers (e.g. one without a decoder)
        return None, f"llguidance cannot use this tokenizer: {exc}"


def _adapter_refusal(s: Settings) -> str:
    if s.tensor_parallel > 1:
        return (f"LoRA adapters are not served under tensor parallelism "
                f"(TENSOR_PARALLEL={s.tensor_parallel}): serve them with TENSOR_PARALLEL=1")
    return ""


def build_loop(loaded: loader.LoadedModel, s: Settings, grammars: Grammars | None = None,
               leader: Leader | None = None) -> EngineLoop:
    """The policy, the runner and the loop for a loaded model, wired to the metrics; with `leader`,
    in lock-step with the other tensor-parallel ranks."""
    masks = MaskApplier(grammars.vocab_size, loaded.eos_token_ids) if grammars is not None else None
    runner = ModelRunner(loaded, masks, on_mask=metrics.record_mask, on_draft=metrics.record_draft,
                         leader=leader)
    batching, why = runner.supports_batching()
    if not batching:
        log.info("continuous batching off, every request uses exact generate: %s", why)
    limits = PolicyLimits(max_batch_size=s.max_batch_size, max_batch_tokens=s.max_batch_tokens,
                          max_prefill_tokens=s.max_prefill_tokens, max_queued=s.max_queued_requests,
                          prefix_min_tokens=s.prefix_cache_min_tokens)
    policy = Policy(limits, batching=batching,
                    text_checker=lambda r: StopChecker(loaded.tokenizer, r.params.stop, r.text_options),
                    on_path=lambda path: metrics.ENGINE_PATH.labels(path=path).inc())
    heartbeat = (leader.flush, s.tensor_parallel_timeout_s / 4) if leader is not None else (None, None)
    return EngineLoop(policy, runner, window_s=s.batch_window_ms / 1000.0, on_step=metrics.record_step,
                      on_idle=heartbeat[0], idle_s=heartbeat[1])

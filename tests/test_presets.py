"""The preset schema and every shipped preset file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.presets import PRESETS_DIR, PresetError, list_presets, load_preset

ISSUE_PRESETS = {
    "smollm2-135m-instruct", "mpt-7b-instruct", "mpt-30b-instruct", "llama-2-7b-chat", "llama-2-13b-chat",
    "llama-2-70b-chat", "mistral-7b", "mistral-7b-instruct", "falcon-7b", "falcon-7b-instruct",
    "phi-3-mini-4k-instruct", "llama-3.1-8b-instruct",
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]


EMBEDDING_PRESETS = {"all-minilm-l6-v2", "instructor-large", "bge-base-en-v1.5"}


def test_every_model_has_a_preset():
    assert ISSUE_PRESETS <= set(list_presets())
    assert EMBEDDING_PRESETS <= set(list_presets())
    assert {n for n in list_presets() if load_preset(n).kind == "embedding"} == EMBEDDING_PRESETS


def test_instructor_leaves_the_instruction_out_of_pooling():
    assert load_preset("instructor-large").embedding.include_prompt is False
    assert load_preset("bge-base-en-v1.5").embedding.include_prompt is True


@pytest.mark.parametrize("name", list_presets())
def test_preset_loads_and_is_pinned(name):
    p = load_preset(name)
    assert p.name == name
    assert "/" in p.hub_id
    if p.source == "hub":
        assert len(p.revision) == 40 and int(p.revision, 16) >= 0
    # hub presets pin a dtype; the embedded model (converted from GGUF, float32 on disk) takes `auto`:
    # its own bfloat16 where the device computes it natively, float32 elsewhere
    assert p.dtype in ("float16", "bfloat16", "float32") or (p.source != "hub" and p.dtype == "auto")
    assert p.context_length >= (2048 if p.kind == "chat" else 256)  # embedding models read less
    assert p.resources.gpus >= 1


@pytest.mark.parametrize(
    "name", [n for n in list_presets() if (load_preset(n).chat_template or "").endswith(".jinja")]
)
def test_chat_template_files_render_a_conversation(name):
    """Rendered as transformers renders chat templates (sandboxed, trim/lstrip blocks)."""
    template = (PRESETS_DIR / load_preset(name).chat_template).read_text()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(template).render(
        messages=CONVERSATION, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )
    for message in CONVERSATION:
        assert message["content"] in text
    assert text.index("What is the capital") < text.index("Paris.") < text.index("And of Italy?")
    assert text.count("</s>") == 1  # after the one assistant turn, not after user turns


def _write(tmp_path: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((PRESETS_DIR / "mistral-7b-instruct.yaml").read_text())
    data["name"] = name
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        elif value is None:
            data.pop(section, None)
        else:
            data[section] = value
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"revision": "main"}, "40-hex commit sha"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"architecture__num_key_value_heads": 7}, "multiple of num_key_value_heads"),
        ({"architecture__hidden_size": 4097}, "multiple of num_attention_heads"),
        ({"architecture__num_hidden_layers": 0}, "greater than 0"),
        ({"dtype": "float8"}, "dtype"),
        ({"chat_template": "chat_templates/missing.jinja"}, "does not exist"),
        ({"resources__gpu_memory": "lots"}, "gpu_memory"),
        ({"context_length": None}, "context_length"),
    ],
)
def test_schema_rejects(tmp_path, changes, message):
    directory = _write(tmp_path, "broken", **changes)
    with pytest.raises(PresetError, match=message):
        load_preset("broken", directory)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PresetError, match="known presets: .*llama-2-70b-chat"):
        load_preset("gpt-5")


def test_file_name_must_match_its_name(tmp_path):
    directory = _write(tmp_path, "one")
    (directory / "one.yaml").rename(directory / "two.yaml")
    with pytest.raises(PresetError, match="names itself 'one'"):
        load_preset("two", directory)


@pytest.mark.parametrize("name", list_presets())
def test_generation_defaults_are_valid_generate_kwargs(name):
    from server.engine.params import ModelLimits, build_params

    p = load_preset(name)
    limits = ModelLimits(context_length=p.context_length, eos_token_ids=(2,), pad_token_id=0,
                         vocab_size=p.architecture.vocab_size, generation_defaults={})
    params = build_params(dict(p.generation), 8, limits)
    for key, value in p.generation.items():
        assert getattr(params, key) == value

"""Finding a handler class (MODEL_HANDLER, MODEL_HANDLER_DIR) and reading a MosaicML deployment YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, load_settings
from server.kinds import loading

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "handlers"


@pytest.mark.parametrize("spec", ["counting_handler:CountingHandler", "counting_handler.CountingHandler"])
def test_both_spellings_resolve(spec: str) -> None:
    cls = loading.resolve(spec, str(FIXTURES))
    assert cls.__name__ == "CountingHandler"


@pytest.mark.parametrize("spec, words", [
    ("no_such_module_xyz:Handler", ["cannot import", "no_such_module_xyz", "PYTHONPATH"]),
    ("counting_handler:Missing", ["has no attribute", "Missing"]),
    ("counting_handler:NotAHandler", ["predict"]),
    ("not a path", ["not an import path"]),
    ("Handler", ["not an import path"]),
])
def test_bad_handler_paths_say_what_is_wrong(spec: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        loading.resolve(spec, str(FIXTURES))
    for w in words:
        assert w in str(err.value)


def test_model_handler_sets_the_kind_and_parameters_are_json() -> None:
    s = load_settings({"MODEL_HANDLER": "counting_handler:CountingHandler",
                       "MODEL_PARAMETERS": '{"prefix": "> "}', "MODEL_HANDLER_DIR": str(FIXTURES)})
    assert s.model_kind == "handler" and s.model_parameters == {"prefix": "> "}
    handler = loading.build(s)
    assert handler.prefix == "> "
    with pytest.raises(ConfigError, match="MODEL_PARAMETERS"):
        load_settings({"MODEL_HANDLER": "a:B", "MODEL_PARAMETERS": "[1]"})
    with pytest.raises(ConfigError, match="MODEL_HANDLER"):
        load_settings({"MODEL_KIND": "handler"})


def test_embedding_presets_choose_the_embedding_kind() -> None:
    s = load_settings({"PRESET": "all-minilm-l6-v2"})
    assert s.model_kind == "embedding" and s.model_path.endswith("models/all-minilm-l6-v2")
    assert loading.handler_spec(s) == loading.EMBEDDING_HANDLER
    s = load_settings({"PRESET": "instructor-large"})
    assert s.model_kind == "embedding" and s.pooling_include_prompt is False


def test_deployment_yaml(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    yaml_path = tmp_path / "deploy.yaml"
    yaml_path.write_text(
        "name: my-model\ncompute: {gpus: 1}\nmodel:\n  model_handler: counting_handler.CountingHandler\n"
        "  model_parameters: {prefix: '#'}\n  download_parameters: {hf_path: weights}\n")
    s = load_settings({"DEPLOYMENT_YAML": str(yaml_path), "MODEL_HANDLER_DIR": str(FIXTURES)})
    assert (s.model_kind, s.model_handler, s.model_parameters) == (
        "handler", "counting_handler.CountingHandler", {"prefix": "#"})
    assert s.model_path == str(weights) and s.served_model_name == "my-model"
    # explicit variables win over the YAML
    s = load_settings({"DEPLOYMENT_YAML": str(yaml_path), "MODEL_PARAMETERS": "{}"})
    assert s.model_parameters == {} and s.model_handler_dir == str(tmp_path)


@pytest.mark.parametrize("text, words", [
    ("model: {}\n", ["not a MosaicML deployment", "model_handler"]),
    ("model: {model_handler: a.B, download_parameters: {hf_path: org/remote-model}}\n", ["not a local path"]),
    ("[1, 2\n", ["not a MosaicML deployment"]),
])
def test_bad_deployment_yaml(tmp_path: Path, text: str, words: list[str]) -> None:
    p = tmp_path / "d.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings({"DEPLOYMENT_YAML": str(p)})
    for w in words:
        assert w in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"DEPLOYMENT_YAML": str(tmp_path / "absent.yaml")})


def test_example_deployment_names_the_example_handler() -> None:
    s = load_settings({"DEPLOYMENT_YAML": str(EXAMPLES / "deployment.yaml")})
    assert s.model_handler == "text_generation_handler.TextGenerationHandler"
    assert s.model_path.endswith("models/smollm2-135m-instruct")
    assert (Path(s.model_handler_dir) / "text_generation_handler.py").is_file()  # served in test_handlers


def test_model_name_or_path_is_filled_from_model_path(tmp_path: Path) -> None:
    (tmp_path / "path_handler.py").write_text(
        "class H:\n    def __init__(self, model_name_or_path, size=1):\n"
        "        self.path = model_name_or_path\n"
        "    def predict(self, reqs):\n        return [self.path for _ in reqs]\n")
    s = load_settings({"MODEL_HANDLER": "path_handler:H", "MODEL_HANDLER_DIR": str(tmp_path),
                       "MODEL_PATH": "/weights"})
    assert loading.build(s).path == "/weights"

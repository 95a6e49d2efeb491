"""Model loading on tiny random models saved to a temporary folder (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.config import Settings
from server.model import loader
from tests.support.models import tiny_model_dir

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.mark.model
def test_load_local_folder(tiny: Path) -> None:
    loaded = loader.load(Settings(model_path=str(tiny)))
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.context_length == 128
    assert loaded.eos_token_ids == (66,)
    assert loaded.pad_token_id == 66  # no pad token: EOS stands in
    assert loaded.tokenizer.padding_side == "left"
    assert not loaded.model.training


@pytest.mark.model
def test_load_bin_checkpoint(tmp_path: Path) -> None:
    path = tiny_model_dir(tmp_path, with_bin=True)
    assert list(path.glob("*.bin"))
    assert loader.load(Settings(model_path=str(path))).num_parameters > 0


@pytest.mark.model
@pytest.mark.parametrize(("dtype", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_dtype(tiny: Path, dtype: str, expected: torch.dtype) -> None:
    assert loader.load(Settings(model_path=str(tiny), torch_dtype=dtype)).dtype == expected


@pytest.mark.model
def test_chat_template_inline_and_file(tiny: Path, tmp_path: Path) -> None:
    loaded = loader.load(Settings(model_path=str(tiny), chat_template=TEMPLATE))
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": "t1"}], tokenize=False)
    assert text == "<user>t1<assistant>"
    f = tmp_path / "t.jinja"
    f.write_text(TEMPLATE.replace("<assistant>", "[A]"))
    loaded = loader.load(Settings(model_path=str(tiny), chat_template=str(f)))
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "t1"}],
                                                tokenize=False).endswith("[A]")


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(loader.ModelLoadError, match="make model"):
        loader.load(Settings(model_path=str(tmp_path / "absent")))


def test_device_map_resolution() -> None:
    s = Settings(device_map="balanced", max_memory={"0": "20GiB", "cpu": "64GiB"})
    assert loader.resolve_device_map(s, cuda=True) == {
        "device_map": "balanced", "max_memory": {0: "20GiB", "cpu": "64GiB"}}
    assert loader.resolve_device_map(s, cuda=False) == {}
    gguf = {"gguf_file": "x.gguf"}  # auto reads no config for a GGUF file: float32 anywhere
    assert loader.resolve_dtype(Settings(), "/absent", cuda=True, common=gguf).dtype == torch.float32
    assert loader.resolve_dtype(Settings(torch_dtype="bfloat16"), "/absent", cuda=False,
                                common={}).dtype == torch.bfloat16
    assert loader.split_gguf("/m/x.Q4_1.gguf") == ("/m", "x.Q4_1.gguf")
    assert loader.split_gguf("/m/folder") == ("/m/folder", None)

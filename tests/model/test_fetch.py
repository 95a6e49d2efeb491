"""The image's weights stage: what it asks the hub for, where the token comes from, file modes."""

from __future__ import annotations

import stat

import pytest

from server.model import fetch
from server.presets import load_preset


def test_hub_download_is_pinned_and_token_comes_from_the_secret_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda **kw: calls.append(kw))
    secret = tmp_path / "hf_token"
    secret.write_text("hf_secret\n")
    out = tmp_path / "weights"
    out.mkdir()
    fetch.main(["--preset", "llama-2-70b-chat", "--out", str(out), "--token-file", str(secret)])
    (call,) = calls
    preset = load_preset("llama-2-70b-chat")
    assert call["repo_id"] == preset.hub_id and call["revision"] == preset.revision
    assert call["token"] == "hf_secret"
    assert "*.safetensors" in call["allow_patterns"] and "*.bin" not in call["allow_patterns"]


def test_bin_only_repos_get_bin_files_and_no_secret_means_no_token(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda **kw: calls.append(kw))
    missing = str(tmp_path / "none")
    fetch.main(["--preset", "mpt-7b-instruct", "--out", str(tmp_path), "--token-file", missing])
    assert "*.bin" in calls[0]["allow_patterns"] and calls[0]["token"] is None


def test_weights_are_made_readable_for_the_non_root_user(tmp_path):
    (tmp_path / "sub").mkdir()
    for f in (tmp_path / "model.safetensors", tmp_path / "sub" / "x.json"):
        f.write_text("x")
        f.chmod(0o600)
    (tmp_path / ".cache").mkdir()
    fetch.make_readable(tmp_path)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o755
    assert not (tmp_path / ".cache").exists()


def test_unknown_preset_fails(tmp_path):
    with pytest.raises(Exception, match="unknown preset"):
        fetch.main(["--preset", "nope", "--out", str(tmp_path)])

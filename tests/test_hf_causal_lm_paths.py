"""A missing model folder is named as the model path, not as the tokenizer path it defaults to."""
import pytest

from harness.errors import HarnessError
from harness.models.hf_causal_lm import HFCausalLM


def test_a_missing_model_folder_is_named_as_model_path(tmp_path):
    with pytest.raises(HarnessError, match="--model_path") as error:
        HFCausalLM(str(tmp_path / "no_such_model"))
    assert "tokenizer_path" not in str(error.value) and "\n" not in str(error.value)


def test_a_missing_tokenizer_folder_is_named_as_tokenizer_path(tmp_path, tiny_mixtral_path):
    with pytest.raises(HarnessError, match="tokenizer_path") as error:
        HFCausalLM(str(tiny_mixtral_path), tokenizer_path=str(tmp_path / "no_such_tokenizer"))
    assert "\n" not in str(error.value)


def test_a_tokenizer_error_keeps_its_cause_on_one_line(tmp_path, tiny_mixtral_path, monkeypatch):
    """transformers puts the cause of a tokenizer failure after a first line; all of it is kept."""
    import transformers

    def refuse(*args, **kwargs):
        raise OSError("Can't load tokenizer for 'x'.\n\nMake sure that:\n- 'x' is a correct model identifier\n")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    with pytest.raises(HarnessError) as error:
        HFCausalLM(str(tiny_mixtral_path))
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith("Can't load tokenizer for 'x'. Make sure that: - 'x' is a correct model identifier")


def test_a_checkpoint_missing_weights_is_refused(tmp_path, tiny_mixtral_path):
    """Weights the checkpoint lacks would be initialised at random and scored: refused, one line."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_mixtral_path, folder)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    dropped = [k for k in tensors if "experts" in k]
    assert dropped
    save_file({k: v for k, v in tensors.items() if k not in dropped}, weights, metadata={"format": "pt"})
    # the tiny Mixtral's 2 layers hold their experts as 2 fused tensors each
    with pytest.raises(HarnessError, match="4 weights of the model are not in the checkpoint") as error:
        HFCausalLM(str(folder))
    assert "\n" not in str(error.value)

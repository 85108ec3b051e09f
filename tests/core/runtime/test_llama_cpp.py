"""A GGUF in llama.cpp (``LlamaCppModel``) against transformers reading the same file, on a tiny llama."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from kbit.core.errors import ConfigError, MissingDependencyError
from kbit.core.runtime import llama_cpp as runtime

TEXT = "<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n<|im_start|>assistant\n46<|im_end|>"
PROMPT = "<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n<|im_start|>assistant\n"
# llama.cpp multiplies F16 weights with activations rounded to F16 and keeps the KV cache in F16
# (2^-11 relative rounding each); transformers computes in float32 from the same F16 weights.
# Measured max |Δlogit| on this model: 0.0085, 1.8e-3 of the largest logit (4.7); bound: 1e-2 of it.
RELATIVE_BOUND = 1e-2
NEAR_TIE = 0.1  # a greedy step whose top-2 logit gap is below this may go either way in llama.cpp


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    """An F16 GGUF of a tiny llama whose weights are scaled ×8, so its next-token choices are not all
    near-ties (a random init at std 0.02 predicts almost uniformly); with transformers' model of the
    same file and the tokenizer."""
    pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kbit.core.export.gguf import BaseModel, write_gguf
    from kbit.core.model.sources import load_gguf
    from kbit.testing import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("llama-cpp") / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.mul_(8)
    model.save_pretrained(folder)
    gguf = folder.parent / "tiny-f16.gguf"
    write_gguf(folder, gguf, "f16", name="tiny", base=BaseModel(name="tiny"))
    reference, _ = load_gguf(gguf)
    return gguf, reference.eval(), AutoTokenizer.from_pretrained(folder)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def test_logits_match_transformers_reading_the_same_file(tiny_gguf):
    gguf, reference, tokenizer = tiny_gguf
    ids = _ids(tokenizer, TEXT)
    with runtime.LlamaCppModel(gguf, n_ctx=128) as model:
        logits = model.logits(ids)
    expected = _reference_logits(reference, ids)
    assert logits.shape == expected.shape == (len(ids), reference.config.vocab_size) and logits.dtype == torch.float32
    assert (logits - expected).abs().max() <= RELATIVE_BOUND * expected.abs().max()
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_every_call_starts_a_new_sequence(tiny_gguf):
    gguf, _, tokenizer = tiny_gguf
    first, second = _ids(tokenizer, TEXT), _ids(tokenizer, PROMPT)
    with runtime.LlamaCppModel(gguf, n_ctx=128) as fresh:
        alone = fresh.logits(second)
    with runtime.LlamaCppModel(gguf, n_ctx=128) as model:
        model.logits(first)
        after_logits = model.logits(second)
        model.greedy(first, 5, ())
        after_greedy = model.logits(second)
    assert torch.equal(after_logits, alone) and torch.equal(after_greedy, alone)


def test_greedy_equals_transformers_greedy_up_to_the_first_near_tie(tiny_gguf):
    gguf, reference, tokenizer = tiny_gguf
    prompt = _ids(tokenizer, PROMPT)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    expected = out.sequences[0, len(prompt):].tolist()
    gaps = [float(step[0].topk(2).values.diff().abs()) for step in out.scores]
    clear = next((i for i, gap in enumerate(gaps) if gap < NEAR_TIE), len(gaps))
    assert clear >= 8 and len(set(expected[:clear])) > 2  # the test compares a real, varied continuation
    with runtime.LlamaCppModel(gguf, n_ctx=128) as model:
        produced = model.greedy(prompt, 24, ())
    assert produced[:clear + 1] == expected[:clear + 1]  # the near-tied step itself still follows the same logits


def test_greedy_stops_at_a_stop_token_or_the_cap_and_counts_its_speed(tiny_gguf):
    gguf, _, tokenizer = tiny_gguf
    prompt = _ids(tokenizer, PROMPT)
    with runtime.LlamaCppModel(gguf, n_ctx=128, threads=1) as model:
        free = model.greedy(prompt, 12, ())
        stop = free[4]
        stopped = model.greedy(prompt, 12, {stop})
        timing = model.timing
    assert len(free) == 12 and stopped == free[:free.index(stop) + 1]
    assert timing.prompt_tokens == 2 * len(prompt)
    assert timing.generated_tokens == len(free) - 1 + len(stopped) - 1  # the first new token comes with the prompt
    assert timing.prompt_tokens_per_s > 0 and timing.generation_tokens_per_s > 0 and model.threads == 1


def test_loading_prints_nothing(tiny_gguf, capfd):
    gguf, _, tokenizer = tiny_gguf
    capfd.readouterr()
    with runtime.LlamaCppModel(gguf, n_ctx=64) as model:
        model.greedy(_ids(tokenizer, PROMPT), 2, ())
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_bad_input_is_a_one_line_error(tiny_gguf, tmp_path):
    gguf, _, tokenizer = tiny_gguf
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    with pytest.raises(ConfigError, match="cannot load"):
        runtime.LlamaCppModel(not_gguf)
    with pytest.raises(ConfigError, match="does not exist"):
        runtime.LlamaCppModel(tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="--lora"):
        runtime.LlamaCppModel(gguf, tmp_path / "missing-lora.gguf")
    with runtime.LlamaCppModel(gguf, n_ctx=32) as model:
        with pytest.raises(ConfigError, match="outside .* vocabulary"):
            model.logits([1, model.n_vocab])
        with pytest.raises(ConfigError, match=f"exceed the llama.cpp context of {model.n_ctx}"):  # 32, rounded up
            model.greedy(_ids(tokenizer, PROMPT), model.n_ctx, ())


def test_a_missing_package_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without it looks like to find_spec
    assert not runtime.installed()
    with pytest.raises(MissingDependencyError, match=r"pip install 'kbit\[llama-cpp\]'"):
        runtime.require()

"""The export check is a gate: logits that disagree, or answers that get worse, fail with one line."""

from __future__ import annotations

import shutil

import pytest

from kbit.core.data import load_task_data
from kbit.core.errors import FidelityError
from kbit.core.export.check import Gate, check_gguf
from kbit.core.export.gguf import BaseModel, write_gguf


@pytest.fixture(scope="module")
def items():
    return list(load_task_data("arith").held_out[:4])


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "tiny-f16.gguf"
    write_gguf(tiny, out, "f16", name="tiny", base=BaseModel(name="tiny"))
    return out


def test_a_faithful_file_passes_with_its_figures(tiny, tiny_gguf, items):
    figures = check_gguf(tiny_gguf, tiny, "arithmetic", items, Gate.for_type("f16"))
    assert figures["top1_agreement"] == 1.0 and figures["answer_positions"] > 0 and figures["items"] == 4
    assert figures["max_abs_logit_diff"] < 2e-3 and figures["gate"] == {"max_kl": 0.03, "max_em_drop": 0.02, "min_top1": None, "max_kl_all": 0.03}


def test_logits_that_disagree_fail_the_gate(tiny, tiny_gguf, items, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    weights = load_file(other / "model.safetensors")
    weights["model.norm.weight"] = -weights["model.norm.weight"]  # every logit negated: argmax becomes argmin
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FidelityError, match=r"check in (llama.cpp|transformers) failed on 4 held-out items: mean KL divergence .* nats > 0.03 \(--max-kl\)"):
        check_gguf(tiny_gguf, other, "arithmetic", items, Gate.for_type("f16"))
    assert torch.equal(load_file(tiny / "model.safetensors")["model.norm.weight"], -weights["model.norm.weight"])


def test_answers_that_get_worse_fail_the_gate(tiny, tiny_gguf, items):
    # The source's exact match as an earlier check measured it; the random tiny model answers nothing right.
    with pytest.raises(FidelityError, match=r"held-out exact match 0.0% is 100.0 points below the source's 100.0% \(allowed "
                                            r"25: --max-em-drop, and at least one answer of 4\) \(mean KL"):
        check_gguf(tiny_gguf, tiny, "arithmetic", items, Gate.for_type("q8_0"), source_exact_match=1.0)
    figures = check_gguf(tiny_gguf, tiny, "arithmetic", items, Gate.for_type("q4_0"), source_exact_match=1.0)
    assert figures["gate"]["max_em_drop"] is None and figures["source"]["exact_match"] == 1.0  # q4: reported, not gated


@pytest.mark.parametrize("items, lost, fails", [(10, 1, False), (10, 2, True), (100, 2, False), (100, 3, True)])
def test_the_exact_match_gate_allows_at_least_one_answer(items, lost, fails):
    from kbit.core.export.check import failures_of

    figures = {"nonfinite_positions": 0, "answer_kl": 0.001, "kl": 0.001, "top1_agreement_within_ties": 1.0,
               "answer_positions": 30, "positions": 90, "items": items,
               "exact_match": (items // 2 - lost) / items, "source": {"exact_match": (items // 2) / items}}
    assert bool(failures_of(figures, Gate.for_type("q8_0"))) is fails  # q8_0 allows 2 points
    said = Gate.for_type("q8_0").describe(items)  # what kbit prints on passing says the bound it applied
    assert said.endswith("exact match drop ≤ 2 points" + (" (on 10 items: one answer, 10 points)" if items == 10 else ""))


@pytest.mark.parametrize("runtime", ["llama.cpp", "transformers"])
def test_a_file_whose_tensor_holds_nan_fails_in_either_runtime(tiny, items, tmp_path, runtime):
    # export/check.py once took max(0.0, nan) as 0.0: a NaN difference must be a failure, never a perfect match
    if runtime == "llama.cpp":
        pytest.importorskip("llama_cpp")
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny, damaged)
    weights = load_file(damaged / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "damaged-f16.gguf"
    write_gguf(damaged, out, "f16", name="damaged", base=BaseModel(name="damaged"))
    with pytest.raises(FidelityError, match=rf"check in {runtime} failed on 4 held-out items: \d+ of \d+ positions give NaN"):
        check_gguf(out, tiny, "arithmetic", items, Gate.for_type("f16"), source_exact_match=0.0, runtime=runtime)

"""The wire contract validates what crosses the network and names tensors like PEFT."""

import pytest
from pydantic import ValidationError

from fedlora_client.protocol import (
    DPMode,
    DPSettings,
    LoraSpec,
    ModelSpec,
    is_safe_tensor_name,
    lora_a_key,
    lora_b_key,
)

FP = "0" * 64


def test_lora_keys_follow_peft_saved_names() -> None:
    assert lora_a_key("model.layers.0.self_attn.q_proj") == (
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    )
    assert lora_b_key("q").endswith(".q.lora_B.weight")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("model.layers.0.q_proj", True),
        ("../etc/passwd", False),
        ("a/b", False),
        ("a..b", False),
        ("a b", False),
        ("", False),
        ("x" * 600, False),
    ],
)
def test_tensor_names_are_dotted_identifiers_only(name: str, ok: bool) -> None:
    assert is_safe_tensor_name(name) is ok


def test_model_spec_rejects_path_like_module_names() -> None:
    with pytest.raises(ValidationError, match="invalid module or tensor name"):
        ModelSpec(fingerprint=FP, modules={"../q": (4, 4)})


def test_scaling_conventions() -> None:
    assert LoraSpec(rank=8, lora_alpha=16).scaling == pytest.approx(2.0)
    assert LoraSpec(rank=16, lora_alpha=8, use_rslora=True).scaling == pytest.approx(2.0)


def test_dp_settings_need_exactly_one_noise_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        DPSettings(mode=DPMode.SAMPLE)
    with pytest.raises(ValidationError, match="exactly one"):
        DPSettings(noise_multiplier=1.0, target_epsilon=8.0)
    assert DPSettings(target_epsilon=8.0).noise_multiplier is None
    assert DPSettings(mode=DPMode.NONE).mode is DPMode.NONE

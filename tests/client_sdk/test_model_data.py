"""Fingerprints, model inspection and local data readers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedlora_client import protocol as p
from fedlora_client._data import IGNORE_INDEX, DataFields, encode_data, load_records
from fedlora_client._errors import (
    ConfigError,
    DataColumnError,
    DataError,
    DataFileNotFoundError,
    FingerprintMismatchError,
    ModelLoadError,
)
from fedlora_client._model import check_fingerprint, load_tokenizer, model_fingerprint


def test_fingerprint_is_stable_and_sensitive_to_weights_and_config(
    tiny_llama: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama, copy)
    original = model_fingerprint(tiny_llama)
    assert model_fingerprint(copy) == original
    config = json.loads((copy / "config.json").read_text())
    config["transformers_version"] = "0.0.0"  # where it was written does not matter
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert model_fingerprint(copy) == original
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, str(copy / "model.safetensors"))
    assert model_fingerprint(copy) != original
    with pytest.raises(FingerprintMismatchError, match="exact checkpoint"):
        check_fingerprint(copy, original)


def test_missing_model_and_pickle_only_model_are_named_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="never downloads"):
        model_fingerprint(tmp_path / "nothing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safe_serialization"):
        model_fingerprint(tmp_path)


def test_inspect_gives_full_paths_shapes_and_head_keys(
    minilm_spec: p.ModelSpec, llama_spec: p.ModelSpec, minilm: Path
) -> None:
    assert minilm_spec.modules == {
        "bert.encoder.layer.0.attention.self.query": (384, 384),
        "bert.encoder.layer.5.attention.self.query": (384, 384),
    }
    assert minilm_spec.extra_trainable == {
        "base_model.model.classifier.weight": [2, 384],
        "base_model.model.classifier.bias": [2],
    }
    assert minilm_spec.fingerprint == model_fingerprint(minilm)
    assert "model.layers.1.self_attn.v_proj" in llama_spec.modules
    assert llama_spec.modules["model.layers.1.self_attn.v_proj"] == (16, 32)  # 2 kv heads of 8
    assert llama_spec.extra_trainable == {}


def test_inspect_rejects_targets_that_match_nothing(tiny_llama: Path) -> None:
    from fedlora_client import inspect_model

    with pytest.raises(ConfigError, match="linear modules look like"):
        inspect_model(tiny_llama, "causal_lm", ["query"])


def test_jsonl_csv_tsv_and_in_memory_records(tmp_path: Path) -> None:
    rows = [{"text": "a b", "label": 1}, {"text": "c", "label": 0}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.csv").write_text("text,label\na b,1\nc,0\n")
    (tmp_path / "d.tsv").write_text("text\tlabel\na b\t1\nc\t0\n")
    for name in ("d.jsonl", "d.csv", "d.tsv"):
        records, columns, _ = load_records(tmp_path / name)
        assert [str(r["text"]) for r in records] == ["a b", "c"]
        assert set(columns) == {"text", "label"}
    assert load_records(rows)[1] == ["label", "text"]


def test_data_errors_name_the_problem(tmp_path: Path, minilm: Path) -> None:
    tokenizer = load_tokenizer(minilm)
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        encode_data(tmp_path / "missing.jsonl", "seq_cls", tokenizer, max_seq_len=16)
    (tmp_path / "d.csv").write_text("sentence,y\nhello,1\n")
    with pytest.raises(DataColumnError, match="available columns: 'sentence', 'y'") as err:
        encode_data(tmp_path / "d.csv", "seq_cls", tokenizer, max_seq_len=16)
    assert err.value.missing == "text"
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_records(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="label_names"):
        encode_data([{"text": "x", "label": "pos"}], "seq_cls", tokenizer, max_seq_len=16)
    fields = DataFields(label_names=["neg", "pos"])
    data = encode_data(
        [{"text": "x", "label": "pos"}], "seq_cls", tokenizer, max_seq_len=16, fields=fields
    )
    assert data.targets == [1]
    with pytest.raises(DataError, match="outside"):
        encode_data([{"text": "x", "label": 5}], "seq_cls", tokenizer, max_seq_len=16)


def test_datasets_like_objects_are_accepted() -> None:
    class FakeDataset:  # the part of datasets.Dataset the reader uses
        column_names = ("text", "label")

        def __iter__(self):  # type: ignore[no-untyped-def]
            return iter([{"text": "a", "label": 0}])

    records, columns, source = load_records(FakeDataset())
    assert records == [{"text": "a", "label": 0}]
    assert columns == ["text", "label"]
    assert source == "datasets.Dataset"


def test_causal_lm_masks_the_prompt(tiny_llama: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama)
    data = encode_data([{"prompt": "hello there", "response": "general"}], "causal_lm",
                       tokenizer, max_seq_len=32)  # fmt: skip
    batch = data.batch([0])
    prompt_len = len(tokenizer("hello there")["input_ids"])
    assert (batch["labels"][0, :prompt_len] == IGNORE_INDEX).all()
    assert (batch["labels"][0, prompt_len:] != IGNORE_INDEX).all()
    text = encode_data(
        [{"text": "one two"}, {"text": "three"}], "causal_lm", tokenizer, max_seq_len=32
    )
    padded = text.batch([0, 1])
    assert padded["attention_mask"].sum(1).tolist() == [len(r) for r in text.input_ids]
    assert (padded["labels"][padded["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert padded["input_ids"].dtype == torch.long


def test_check_data_finds_what_training_would_fail_on_without_tokenising(tmp_path: Path) -> None:
    from fedlora_client._data import check_data

    with pytest.raises(DataFileNotFoundError, match=r"missing\.jsonl does not exist"):
        check_data(tmp_path / "missing.jsonl", "seq_cls")
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nhello\t1\n")
    with pytest.raises(DataColumnError, match="column 'text' not found"):
        check_data(tmp_path / "d.tsv", "seq_cls")
    assert check_data(tmp_path / "d.tsv", "seq_cls", fields=DataFields(text_field="sentence")) == 1
    with pytest.raises(DataError, match="row 2 label 3 is outside"):
        check_data([{"text": "a", "label": 0}, {"text": "b", "label": 3}], "seq_cls", num_labels=3)
    assert check_data([{"text": "a", "label": 2}], "seq_cls", num_labels=3) == 1
    with pytest.raises(DataError, match="row 1 has no value in column 'response'"):
        check_data([{"prompt": "q", "response": None}], "causal_lm")
    with pytest.raises(DataColumnError, match="column 'text' not found"):
        check_data([{"question": "q"}], "causal_lm")
    with pytest.raises(DataError, match="no examples"):
        check_data([], "causal_lm")


def test_check_model_dir_needs_a_loadable_config_weights_and_tokenizer(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from fedlora_client._model import check_model_dir

    check_model_dir(tiny_llama)
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    for tokenizer_file in copy.glob("*token*"):
        tokenizer_file.unlink()
    (copy / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="no usable tokenizer"):
        check_model_dir(copy)
    (copy / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match=r"config\.json in .* does not load"):
        check_model_dir(copy)

from __future__ import annotations

import numpy as np
import pytest


def _query(text: str) -> np.ndarray:
    return np.array([[text.encode()]], dtype=object)


@pytest.fixture
def tokenizer(tiny_llama_checkpoint):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_checkpoint)


def test_preprocessing_outputs_upstream_tensors(load_model, model_args, rendered_repo, tokenizer, pb_utils, make_request):
    repo = rendered_repo()
    module = load_model("preprocessing")
    model = module.TritonPythonModel()
    model.initialize(model_args(repo / "preprocessing" / "config.pbtxt"))
    request = make_request({
        "QUERY": _query("How do I count to ten in French?"),
        "REQUEST_OUTPUT_LEN": np.array([[7]], dtype=np.uint32),
        "BAD_WORDS_DICT": _query(""),
        "STOP_WORDS_DICT": _query("quick brown, lazy dog"),
    })

    [response] = model.execute([request])

    assert not response.has_error()
    expected_ids = tokenizer.encode("How do I count to ten in French?")
    assert expected_ids[0] == tokenizer.bos_token_id  # Llama-style BOS, as upstream's tokenizers add
    np.testing.assert_array_equal(response.output("INPUT_ID"), [expected_ids])
    assert response.output("INPUT_ID").dtype == np.int32
    np.testing.assert_array_equal(response.output("REQUEST_INPUT_LEN"), [[len(expected_ids)]])
    np.testing.assert_array_equal(response.output("REQUEST_OUTPUT_LEN"), [[7]])
    assert response.output("REQUEST_OUTPUT_LEN").dtype == np.uint32
    # Empty bad words: upstream's one-column [2, 1] placeholder.
    np.testing.assert_array_equal(response.output("BAD_WORDS_IDS"), [[[0], [-1]]])
    stop = response.output("STOP_WORDS_IDS")
    first = tokenizer.encode("quick brown", add_special_tokens=False)
    second = tokenizer.encode(" lazy dog", add_special_tokens=False)
    assert stop.shape == (1, 2, len(first) + len(second))
    assert stop[0, 0].tolist() == first + second
    assert stop[0, 1].tolist()[:2] == [len(first), len(first) + len(second)]
    assert set(stop[0, 1].tolist()[2:]) <= {-1}


def test_preprocessing_pads_a_batch_with_eos(load_model, model_args, rendered_repo, tokenizer, pb_utils, make_request):
    model = load_model("preprocessing").TritonPythonModel()
    model.initialize(model_args(rendered_repo() / "preprocessing" / "config.pbtxt"))
    queries = np.array([[b"The quick brown fox"], [b"Un"]], dtype=object)
    request = make_request({
        "QUERY": queries,
        "REQUEST_OUTPUT_LEN": np.array([[4], [4]], dtype=np.uint32),
        "BAD_WORDS_DICT": np.array([[b""], [b""]], dtype=object),
        "STOP_WORDS_DICT": np.array([[b""], [b""]], dtype=object),
    })

    [response] = model.execute([request])

    long_ids, short_ids = (tokenizer.encode(q[0].decode()) for q in queries)
    ids = response.output("INPUT_ID")
    assert ids.shape == (2, len(long_ids))
    assert ids[1].tolist() == short_ids + [tokenizer.eos_token_id] * (len(long_ids) - len(short_ids))
    np.testing.assert_array_equal(response.output("REQUEST_INPUT_LEN"), [[len(long_ids)], [len(short_ids)]])


def test_preprocessing_rejects_unknown_tokenizer_type(load_model, pb_utils, tiny_llama_checkpoint):
    import json

    model = load_model("preprocessing").TritonPythonModel()
    config = {"parameters": {"tokenizer_dir": {"string_value": str(tiny_llama_checkpoint)},
                             "tokenizer_type": {"string_value": "sentencepiece"}}}
    with pytest.raises(ValueError, match="tokenizer_type 'sentencepiece'"):
        model.initialize({"model_config": json.dumps(config)})


def test_postprocessing_decodes_each_beam_and_honours_sequence_length(
    load_model, model_args, rendered_repo, tokenizer, pb_utils, make_request
):
    model = load_model("postprocessing").TritonPythonModel()
    model.initialize(model_args(rendered_repo() / "postprocessing" / "config.pbtxt"))
    ids = tokenizer.encode("The quick brown fox")
    padded = np.array([[ids + [tokenizer.eos_token_id] * 3]], dtype=np.int32)

    [plain] = model.execute([make_request({"TOKENS_BATCH": np.array([[ids]], dtype=np.int32)})])
    [trimmed] = model.execute([make_request({
        "TOKENS_BATCH": padded,
        "SEQUENCE_LENGTH": np.array([[len(ids)]], dtype=np.int32),
    })])

    # Like upstream 0.5.0: special tokens are kept, one flat string per beam.
    assert plain.output("OUTPUT").tolist() == [b"<s>The quick brown fox"]
    assert trimmed.output("OUTPUT").tolist() == [b"<s>The quick brown fox"]
    assert plain.output("OUTPUT").dtype == object


def test_postprocessing_reports_a_bad_request_as_its_error(load_model, model_args, rendered_repo, pb_utils, make_request):
    model = load_model("postprocessing").TritonPythonModel()
    model.initialize(model_args(rendered_repo() / "postprocessing" / "config.pbtxt"))
    good = make_request({"TOKENS_BATCH": np.array([[[5, 6]]], dtype=np.int32)})
    bad = make_request({})  # no TOKENS_BATCH

    responses = model.execute([good, bad])

    assert not responses[0].has_error()
    assert responses[1].has_error()
    assert responses[1].error().message().startswith("postprocessing:")


def test_preprocessing_refuses_a_non_utf8_prompt_alone(load_model, model_args, rendered_repo, tokenizer, make_request):
    model = load_model("preprocessing").TritonPythonModel()
    model.initialize(model_args(rendered_repo() / "preprocessing" / "config.pbtxt"))

    def request(query: bytes):
        return make_request({"QUERY": np.array([[query]], dtype=object),
                             "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.uint32)})

    good, latin1 = model.execute([request("Un, deux".encode()), request("déjà vu".encode("latin-1"))])

    assert not good.has_error()
    np.testing.assert_array_equal(good.output("INPUT_ID"), [tokenizer.encode("Un, deux")])
    assert latin1.error().message() == (
        "preprocessing: QUERY is not valid UTF-8 text: byte b'\\xe9' at offset 1 of 7; send the prompt as UTF-8")

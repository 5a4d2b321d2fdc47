"""The trigger form is generated from DeploySpec, so both accept and refuse the same values."""

import jsonschema
import pytest

from llm_deploy.airflow.params import SECTIONS, deploy_params, param_schemas
from llm_deploy.airflow.params import required_in_form as form_requires
from llm_deploy.spec import DeploySpec


def test_every_field_is_a_described_param_in_a_section():
    schemas = param_schemas()
    assert set(schemas) == set(DeploySpec.model_fields)
    for name, schema in schemas.items():
        assert schema["description"], name
        assert schema["section"] in SECTIONS, name


def test_the_form_can_be_submitted_with_its_defaults():
    # What kept deploy_llm's form shut: docker_image and three more were required and empty.
    for name, schema in param_schemas().items():
        if form_requires(schema):
            assert schema["default"] not in (None, ""), f"{name} is required in the form but has no default"
        jsonschema.validate(schema["default"], {k: v for k, v in schema.items() if k != "section"})


def test_a_field_whose_empty_value_means_default_is_optional_in_the_form():
    schemas = param_schemas()
    assert {"docker_image", "gpu_device_ids", "backend_repo_dir", "model_local_dir"} <= DeploySpec.optional_fields()
    for name in DeploySpec.optional_fields():
        assert not form_requires(schemas[name]), name
        assert schemas[name]["default"] is None, name


def test_a_field_left_empty_in_the_form_is_the_specs_default():
    # The form sends null for an empty text field.
    emptied = DeploySpec.from_params({name: None for name in DeploySpec.optional_fields()})
    assert emptied == DeploySpec()


def test_param_defaults_are_a_valid_spec():
    defaults = {name: s["default"] for name, s in param_schemas().items()}
    assert DeploySpec.from_params(defaults).model_dump() == DeploySpec().model_dump()


def test_params_are_labelled_with_the_names_conf_uses():
    params = deploy_params()
    assert all(param.schema.get("title", name) == name for name, param in params.items())


def test_a_list_of_choices_is_a_multi_select():
    assert param_schemas()["benchmark_targets"]["examples"] == [
        "grpc_ensemble", "grpc_tensorrt_llm", "http_generate_stream", "http_generate"]


@pytest.mark.parametrize(("name", "bad"), [("dtype", "int4"), ("world_size", 0), ("http_port", 80),
                                           ("model_id", "a b/c"), ("model_id", "org/x;rm"),
                                           ("trtllm_release", "latest"), ("docker_image", "Bad Image"),
                                           ("gpu_device_ids", "0;1")])
def test_airflow_refuses_what_the_spec_refuses(name, bad):
    from airflow.sdk.definitions.param import ParamValidationError

    param = deploy_params()[name]
    with pytest.raises(ParamValidationError):
        param.resolve(bad)
    with pytest.raises(ValueError):
        DeploySpec.from_params({name: bad})

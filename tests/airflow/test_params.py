"""The trigger form is generated from DeploySpec, so both accept and refuse the same values."""

import pytest

from llm_deploy.airflow.params import SECTIONS, deploy_params, param_schemas
from llm_deploy.spec import DeploySpec


def test_every_field_is_a_described_param_in_a_section():
    schemas = param_schemas()
    assert set(schemas) == set(DeploySpec.model_fields)
    for name, schema in schemas.items():
        assert schema["description"], name
        assert schema["section"] in SECTIONS, name


def test_param_defaults_are_a_valid_spec():
    defaults = {name: s["default"] for name, s in param_schemas().items()}
    assert DeploySpec.from_params(defaults).model_dump() == DeploySpec().model_dump()


@pytest.mark.parametrize(("name", "bad"), [("dtype", "int4"), ("world_size", 0), ("http_port", 80),
                                           ("model_id", "a b/c"), ("trtllm_release", "99.0")])
def test_airflow_refuses_what_the_spec_refuses(name, bad):
    from airflow.sdk.definitions.param import ParamValidationError

    param = deploy_params()[name]
    with pytest.raises(ParamValidationError):
        param.resolve(bad)

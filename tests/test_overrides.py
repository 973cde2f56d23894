import pytest

from detfuse.core.errors import UserError
from detfuse.stages.overrides import apply_overrides


def test_values_parse_as_yaml_and_create_nested_keys():
    config = {"hparams": {"lr": 0.1}, "spaces": [{"n": 1}]}
    out = apply_overrides(config, ["hparams.lr=1e-3", "hparams.amp=false", "spaces.0.n=4", "new.key=[1, 2]"])
    assert out == {"hparams": {"lr": 1e-3, "amp": False}, "spaces": [{"n": 4}], "new": {"key": [1, 2]}}
    assert config["hparams"]["lr"] == 0.1  # the input is left untouched


@pytest.mark.parametrize("item, message", [
    ("lr", "must look like key=value"),
    ("spaces.3.n=1", "'spaces.3' is not an index"),
    ("hparams.lr.x=1", "'hparams.lr' is not a mapping"),
])
def test_bad_overrides_say_why(item, message):
    with pytest.raises(UserError, match=message):
        apply_overrides({"hparams": {"lr": 0.1}, "spaces": [{"n": 1}]}, [item])

"""fedrec.core.config: typed params.yaml with named errors and DVC-style dotted overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedrec.core.config import Config, from_dict, load_config, to_dict
from fedrec.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_when_file_missing(tmp_path):
    # Prepare: a path that does not exist
    missing = tmp_path / "nope.yaml"

    # Execute
    cfg = load_config(missing)

    # Assert: the documented defaults
    assert cfg == Config()
    assert cfg.federation.rounds == 40
    assert cfg.model.mlp_layers == (64, 32, 16)
    assert cfg.training.seeds == (0, 1)
    assert cfg.evaluation.n_negatives == 99
    assert cfg.crypto.poly_modulus_degree == 4096 and cfg.crypto.mask_bits == 38


def test_unknown_key_raises_config_error_naming_key():
    with pytest.raises(ConfigError, match=r"model\.nme"):
        from_dict({"model": {"nme": "gmf"}})


def test_unknown_section_raises_config_error():
    with pytest.raises(ConfigError, match="modle"):
        from_dict({"modle": {"name": "gmf"}})


@pytest.mark.parametrize("raw, key", [
    ({"federation": {"rounds": "five"}}, "federation.rounds"),
    ({"federation": {"he": "yes"}}, "federation.he"),
    ({"training": {"lr": "fast"}}, "training.lr"),
    ({"model": {"name": "bert"}}, "model.name"),
    ({"training": {"seeds": 3}}, "training.seeds"),
    ({"federation": {"rounds": True}}, "federation.rounds"),
])
def test_wrong_type_raises_config_error(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_out_of_range_raises_config_error():
    with pytest.raises(ConfigError, match="federation.rounds must be >= 1"):
        from_dict({"federation": {"rounds": 0}})


@pytest.mark.parametrize("raw, message", [
    ({"federation": {"min_silos": 1}}, "federation.min_silos must be >= 2"),
        ({"crypto": {"lane_bits": 16}}, r"crypto.lane_bits must be >= quantization_bits \+ 1"),
        ({"crypto": {"pack": 3}}, r"crypto.pack \* crypto.lane_bits must be in 1..48"),
        ({"crypto": {"coeff_mod_bit_sizes": [60, 60]}}, "must sum to at most 109 bits for 128-bit security"),
        ({"crypto": {"workers": -1}}, r"crypto.workers must be >= 0"),
        ({"crypto": {"global_scale_bits": 40}}, r"crypto.global_scale_bits must be >= crypto.pack \* crypto.lane_bits \+ 14"),
])
def test_privacy_and_precision_bounds_are_checked(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_dotted_override_parses_yaml_scalars():
    # Prepare
    cfg = Config()

    # Execute
    new = cfg.replace(**{"federation.rounds": "5", "federation.he": "false", "model.mlp_layers": "[8, 4]",
                         "training.lr": 0.5})

    # Assert: values converted to the field types, the original untouched (frozen copy)
    assert new.federation.rounds == 5
    assert new.federation.he is False
    assert new.model.mlp_layers == (8, 4)
    assert new.training.lr == 0.5
    assert cfg.federation.rounds == 40


def test_dotted_override_unknown_key_raises():
    with pytest.raises(ConfigError, match=r"federation\.roundz"):
        Config().replace(**{"federation.roundz": "5"})


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"federation": {"rounds": 3}, "model": {"name": "gmf"}}))

    cfg = load_config(path, {"federation.local_epochs": "2"})

    assert cfg.federation.rounds == 3
    assert cfg.federation.local_epochs == 2
    assert cfg.model.name == "gmf"
    assert cfg.training.epochs == 20  # untouched default


def test_invalid_yaml_raises_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_repo_params_yaml_loads():
    cfg = load_config(ROOT / "params.yaml")

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert cfg.data.source == raw["data"]["source"]
    assert cfg.partition.scheme == raw["partition"]["scheme"]
    assert cfg.federation.rounds == raw["federation"]["rounds"]
    assert list(cfg.model.mlp_layers) == raw["model"]["mlp_layers"]
    # every key of the file survives a round trip through the dataclasses
    assert to_dict(cfg) == {**to_dict(Config()), **{s: {**to_dict(Config())[s], **v} if isinstance(v, dict) else v
                                                    for s, v in raw.items()}}
    # the shipped params.yaml spells out the code's defaults: no params.yaml behaves the same
    assert cfg == Config()


def test_tiny_cfg_fixture_is_valid(tiny_cfg):
    assert tiny_cfg.data.source == "synthetic"
    assert tiny_cfg.partition.n_silos == 3


def test_parse_overrides_splits_on_the_first_equals_and_names_bad_pairs():
    from fedrec.core.config import parse_overrides

    assert parse_overrides(["federation.rounds=5", "tracking.uri=sqlite:///a=b.db"]) == \
        {"federation.rounds": "5", "tracking.uri": "sqlite:///a=b.db"}
    assert parse_overrides(None) == {}
    with pytest.raises(ConfigError, match="federation.rounds5"):
        parse_overrides(["federation.rounds5"])


# --- loud configuration (issue #24, items 3 and 7) ----------------------------------------------------------------


@pytest.mark.parametrize("cron", ["*/30 * * * *", "* * * * *", "0 3 * * 1-5"])
def test_a_cron_override_is_taken_as_text_not_as_yaml(cron):
    # "*/30 ..." is a YAML alias to YAML: it used to raise a ScannerError traceback
    cfg = Config().replace(**{"operations.schedule": cron, "silo.query": "SELECT * FROM t: x", "silo.source": ""})

    assert cfg.operations.schedule == cron
    assert cfg.silo.query == "SELECT * FROM t: x" and cfg.silo.source == ""


def test_null_clears_an_optional_text_key_and_a_non_text_value_that_is_no_yaml_is_named():
    assert Config().replace(**{"data.raw_dir": "/x"}).replace(**{"data.raw_dir": "null"}).data.raw_dir is None
    with pytest.raises(ConfigError, match=r"training\.seeds: '\[0, 1' is not a value"):
        Config().replace(**{"training.seeds": "[0, 1"})


@pytest.mark.parametrize(("key", "suggestion"), [("federation.round", "federation.rounds"),
                                                 ("rounds", "federation.rounds"),
                                                 ("privacy.clip", "privacy.clip_norm")])
def test_an_unknown_override_key_gets_a_did_you_mean(key, suggestion):
    with pytest.raises(ConfigError, match=rf"unknown config key '{key}'; did you mean '{suggestion}'\?"):
        Config().replace(**{key: "1"})


def test_an_unknown_params_yaml_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match=r"\['training\.epoch'\]; did you mean 'training\.epochs'\?"):
        from_dict({"training": {"epoch": 3}})


def test_a_section_given_a_value_names_its_keys():
    with pytest.raises(ConfigError, match=r"'federation' is a section, not a key.*federation\.rounds"):
        Config().replace(**{"federation": "3"})


def test_the_schema_covers_every_key_with_type_default_and_description():
    from fedrec.core.config import flatten
    from fedrec.core.config_reference import schema

    docs = {d.key: d for d in schema()}

    assert set(docs) == set(flatten(to_dict(Config())))
    assert not [k for k, d in docs.items() if not d.doc], "every key needs a #: comment in fedrec/core/config.py"
    assert docs["federation.rounds"].type == "int" and docs["federation.rounds"].default == 40
    assert docs["model.name"].type == "gmf | neumf | hybrid"
    assert docs["data.raw_dir"].type == "str | null"
    assert "federation.rounds must be >= 1" in docs["federation.rounds"].checks


def test_docs_config_md_is_the_generated_reference():
    from fedrec.core.config_reference import schema_markdown

    assert (ROOT / "docs" / "config.md").read_text() == schema_markdown() + "\n", \
        "regenerate: fedrec config --schema --markdown > docs/config.md"


def test_effective_config_names_each_values_source(tmp_path, monkeypatch):
    from fedrec.core.config_reference import effective

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"federation": {"rounds": 7, "he": False}}))
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path))

    rows = {k: (v, src) for k, v, src in effective(path, {"federation.he": "true"})}

    assert rows["federation.rounds"] == (7, str(path))
    assert rows["federation.he"] == (True, "-S")
    assert rows["training.epochs"] == (20, "default")
    assert rows["data.raw_dir"] == (str(tmp_path), "env FEDREC_DATA_DIR")


def test_effective_config_names_the_tracking_uri_from_the_environment_only_where_params_leave_it_null(tmp_path,
                                                                                                    monkeypatch):
    from fedrec.core.config_reference import effective

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tracking": {"experiment": "x"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/mlflow.db")

    from_env = {k: (v, src) for k, v, src in effective(path, None)}
    from_set = {k: (v, src) for k, v, src in effective(path, {"tracking.uri": "http://mlflow:5000"})}

    assert from_env["tracking.uri"] == ("sqlite:////srv/mlflow.db", "env MLFLOW_TRACKING_URI")
    assert from_set["tracking.uri"] == ("http://mlflow:5000", "-S")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")  # fedrec.core.env's own
    assert dict((k, src) for k, _, src in effective(path, None))["tracking.uri"] == "default"


def test_a_list_or_string_key_given_the_wrong_shape_says_how_to_write_it():
    with pytest.raises(ConfigError, match=r"training\.seeds: expected a list such as \[0, 1\], got '0,1'"):
        Config().replace(**{"training.seeds": "0,1"})
    with pytest.raises(ConfigError, match=r"federation\.silos: expected a string, got 0 \(quote it: '0'\)"):
        Config().replace(**{"federation.silos": "[0, 1]"})
    assert Config().replace(**{"federation.silos": "['0', '1']"}).federation.silos == ("0", "1")


def test_an_unquoted_cron_in_params_yaml_says_to_quote_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("operations:\n  schedule: */30 * * * *\n")

    with pytest.raises(ConfigError, match=r"not valid YAML(.|\n)*quote it, e\.g\. schedule: '\*/30 \* \* \* \*'"):
        load_config(path)
    path.write_text("operations:\n  schedule: '*/30 * * * *'\n")
    assert load_config(path).operations.schedule == "*/30 * * * *"


def test_the_rating_task_takes_its_own_defaults_unless_an_override_names_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "neumf"}, "rating": {"model": "gmf", "rounds": 7}}))

    ranking = load_config(path)
    rating = load_config(path, {"task": "rating"})
    named = load_config(path, {"task": "rating", "model.name": "neumf", "federation.rounds": "3"})

    assert (ranking.model.name, ranking.federation.rounds, ranking.training.embedding_l2) == ("neumf", 40, 0.001)
    assert (rating.model.name, rating.federation.rounds, rating.training.embedding_l2) == ("gmf", 7, 0.1)
    assert (named.model.name, named.federation.rounds) == ("neumf", 3)
    assert ranking.replace(task="rating") == rating  # switching the task in code reads the same defaults
    with pytest.raises(ConfigError, match="rating.rounds must be >= 1"):
        load_config(path, {"rating.rounds": "0"})

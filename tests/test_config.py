import pytest

from tasks.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, params_for_run


def test_repo_params_match_the_typed_defaults():
    # params.yaml mirrors the dataclasses: a drift between the two would silently change runs.
    assert load_config("params.yaml") == Config()


@pytest.mark.parametrize("raw, message", [
    ({"train": {"max_stepz": 3}}, "params: train.max_stepz: unknown key"),
    ({"trian": {}}, "params: trian: unknown section"),
    ({"split": {"holdout_fraction": 0.9}}, "params: split.holdout_fraction: must be within [0.05, 0.5]"),
    ({"lora": {"r": "16"}}, "params: lora.r: input should be a valid integer, got '16'"),
    ({"lora": {"r": True}}, "params: lora.r: input should be a valid integer, got True"),  # YAML `true` is no rank
    ({"train": {"learning_rate": True}}, "params: train.learning_rate: must be a number, got True"),
    ({"lora": {"target_modules": ["q_proj", 3]}}, "params: lora.target_modules[1]: input should be a valid string, got 3"),
    ({"data": {"format": "csv"}},
     "params: data.format: input should be 'auto', 'messages', 'alpaca' or 'prompt_completion', got 'csv'"),
])
def test_bad_values_are_one_line_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_override_types_follow_yaml_and_lists_become_tuples():
    cfg = config_from_dict({}, ["train.learning_rate=1e-3", "lora.target_modules=[q_proj, v_proj]",
                                "quantization.enabled=true"])
    assert cfg.train.learning_rate == 1e-3
    assert cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.quantization.enabled is True


def test_apply_overrides_keeps_comments_and_writes_nothing_when_invalid(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  max_steps: 60  # budget\n")
    apply_overrides(params, ["train.max_steps=7"])
    written = params.read_text()
    assert "# budget" in written and load_config(params).train.max_steps == 7
    with pytest.raises(ConfigError):
        apply_overrides(params, ["train.max_steps=0"])
    assert params.read_text() == written


def test_a_run_with_overrides_leaves_the_users_params_file_as_it_was(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  max_steps: 60  # budget\n")
    before = params.read_bytes()
    with params_for_run(params, ["train.max_steps=7"]) as cfg:
        assert cfg.train.max_steps == 7 and load_config(params).train.max_steps == 7  # what DVC's stages read
        assert "lora:" in params.read_text()  # defaults filled in for DVC
    assert params.read_bytes() == before and not (tmp_path / ".loragate" / "params.yaml.orig").exists()
    with pytest.raises(RuntimeError), params_for_run(params, ["train.max_steps=9"]):
        raise RuntimeError("the run failed")
    assert params.read_bytes() == before


def test_a_run_killed_midway_is_undone_by_the_next(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  max_steps: 60\n")
    before = params.read_bytes()
    (tmp_path / ".loragate").mkdir()
    (tmp_path / ".loragate" / "params.yaml.orig").write_bytes(before)  # what a killed run leaves
    params.write_text("train:\n  max_steps: 3\n")
    with params_for_run(params) as cfg:
        assert cfg.train.max_steps == 60
    assert params.read_bytes() == before

"""Config validation: errors name the file and the key, with suggestions for unknown keys."""

import re
from pathlib import Path

import pytest
import yaml

from srlm.config import ConfigError, load_config
from srlm.paths import CONFIG_DIR, DEFAULT_CONFIG, REPO_ROOT

MICRO = CONFIG_DIR / "micro.yaml"


def write(tmp_path: Path, data: dict) -> Path:
    """A config over the micro one (so tests need only the fixture kit), plus `data`."""
    base = yaml.safe_load(MICRO.read_text())
    base["paths"]["data_kit"] = str(REPO_ROOT / "tests" / "fixtures" / "kit")

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(merge(base, data)))
    return path


def error(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    return str(info.value)


def test_micro_config_loads_and_resolves_paths():
    cfg = load_config(MICRO)
    assert cfg.experiment.iterations == 1
    assert cfg.instructions.sources[0].path.endswith("tests/fixtures/kit/instruct/alpaca_5000/alpaca_5000.json")
    assert Path(cfg.paths.home).is_absolute()
    # untouched keys come from the default file
    assert cfg.select.selector == "likelihood"


def test_unknown_key_with_suggestion(tmp_path):
    msg = error(tmp_path, {"experiment": {"iteratons": 3}})
    assert "exp.yaml: unknown key 'iteratons' in 'experiment' (did you mean 'iterations'?)" in msg


def test_unknown_section_lists_nothing_silly(tmp_path):
    msg = error(tmp_path, {"expnad": {"candidates": 2}})
    assert "unknown key 'expnad' at the top level (did you mean 'expand'?)" in msg


def test_unknown_key_inside_a_list_item(tmp_path):
    msg = error(tmp_path, {"instructions": {"sources": [{"path": "x.json", "colums": {}}]}})
    assert re.search(r"unknown key 'colums' in 'instructions.sources\[0\]' \(did you mean 'columns'\?\)", msg)


def test_unknown_benchmark(tmp_path):
    msg = error(tmp_path, {"eval": {"benchmarks": {"mmlus": {"limit": 3}}}})
    assert "exp.yaml: unknown key 'mmlus' in 'eval.benchmarks' (did you mean 'mmlu'?)" in msg


def test_wrong_type(tmp_path):
    msg = error(tmp_path, {"expand": {"temperature": "hot"}})
    assert "exp.yaml: expand.temperature: Input should be a valid number" in msg and "'hot'" in msg


def test_impossible_value(tmp_path):
    msg = error(tmp_path, {"expand": {"candidates": 0}})
    assert "expand.candidates: Input should be greater than or equal to 1 (got 0)" in msg


def test_bad_choice(tmp_path):
    msg = error(tmp_path, {"select": {"selector": "longest"}})
    assert "select.selector: unknown selector 'longest'; choose one of length, likelihood, consistency" in msg


def test_cross_field_rule(tmp_path):
    msg = error(tmp_path, {"eval": {"benchmarks": {"gsm8k": {"protocol": "loglikelihood"}}}})
    assert "benchmarks.gsm8k: protocol 'loglikelihood' needs multiple choice" in msg


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        ([0, -3], "exp.yaml: eval.samples: samples must be positive integers, got [0, -3]"),
        ([1, 4, 4], "exp.yaml: eval.samples: samples must be distinct, got [4] repeated"),
    ],
)
def test_eval_samples_must_be_distinct_positive_counts(tmp_path, samples, message):
    assert message in error(tmp_path, {"eval": {"samples": samples}})


def test_launchpad_samples_knob_is_checked_when_the_evaluation_starts():
    """The Launchpad does not enforce pydantic bounds, so the evaluation step checks its knob first."""
    import dagster as dg

    from assets.evaluation import eval_settings
    from assets.launchpad import eval_config_class

    cfg = load_config(MICRO)
    knobs = eval_config_class(cfg)
    asset_key = dg.AssetKey(["iter_1", "eval"])
    settings = eval_settings(cfg, knobs(samples=[4, 1], temperature=0.5), asset_key)
    assert (settings.samples, settings.temperature, settings.seed) == ((1, 4), 0.5, cfg.eval.seed)
    with pytest.raises(ValueError, match=r"run config 'samples' of iter_1/eval must be positive integers, got \[0, -3\]"):
        eval_settings(cfg, knobs(samples=[0, -3], temperature=0.5), asset_key)
    with pytest.raises(ValueError, match=r"run config 'samples' of iter_1/eval must be distinct, got \[2\] repeated"):
        eval_settings(cfg, knobs(samples=[2, 1, 2], temperature=0.5), asset_key)


def test_launchpad_knobs_take_the_schema_bounds_and_the_experiment_values(tmp_path):
    from pydantic import ValidationError

    from assets.launchpad import expand_config_class, questions_config_class, select_config_class
    from srlm.config import Benchmark, Expand

    cfg = load_config(write(tmp_path, {"expand": {"top_p": 0.9}, "select": {"margin": 0.5}}))
    knobs = expand_config_class(cfg)
    assert (knobs().top_p, knobs().candidates, select_config_class(cfg)().margin) == (0.9, cfg.expand.candidates, 0.5)
    assert knobs.model_fields["top_p"].description == Expand.model_fields["top_p"].description
    for bad in ({"top_p": 0}, {"top_p": 1.5}, {"candidates": 0}):
        with pytest.raises(ValidationError):
            knobs(**bad)
    limits = questions_config_class(cfg)
    assert limits().gsm8k_limit == cfg.eval.benchmarks["gsm8k"].limit
    assert limits.model_fields["gsm8k_limit"].description == f"gsm8k: {Benchmark.model_fields['limit'].description}"


def test_missing_file_names_key_and_path(tmp_path):
    msg = error(tmp_path, {"instructions": {"sources": [{"path": "nowhere.jsonl"}]}})
    assert "exp.yaml: instructions.sources[0].path: file not found:" in msg
    assert str(tmp_path / "nowhere.jsonl") in msg  # relative to the config file


def test_missing_model_directory(tmp_path):
    msg = error(tmp_path, {"model": {"base": "no/such/model"}})
    assert "exp.yaml: model.base: directory not found:" in msg


def test_file_catalyst_needs_a_path(tmp_path):
    msg = error(tmp_path, {"catalyst": {"source": "file"}})
    assert "catalyst" in msg and "catalyst.file.path is not set" in msg


def test_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("experiment:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml \(line \d+, column \d+\): not valid YAML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_kit_not_found_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("SRLM_DATA_KIT", raising=False)
    msg = error(tmp_path, {"paths": {"data_kit": str(tmp_path)}})
    assert "uses {kit}" in msg and "not a kit folder" in msg


def test_env_var_selects_config(monkeypatch):
    monkeypatch.setenv("SRLM_CONFIG", str(MICRO))
    assert load_config().experiment.name == "micro"


def test_section_hash_changes_with_the_recipe(tmp_path):
    a = load_config(write(tmp_path, {}))
    b = load_config(write(tmp_path, {"expand": {"temperature": 0.5}}))
    assert a.section_hash("expand") != b.section_hash("expand")
    assert a.section_hash("train") == b.section_hash("train")


def test_every_default_key_is_documented_in_the_readme():
    readme = (REPO_ROOT / "README.md").read_text()
    defaults = yaml.safe_load(DEFAULT_CONFIG.read_text())

    def keys(node, prefix=""):
        for k, v in node.items():
            yield f"{prefix}{k}"
            if isinstance(v, dict) and k not in ("columns", "benchmarks", "lora"):
                yield from keys(v, f"{prefix}{k}.")

    missing = [k for k in keys(defaults) if f"`{k}`" not in readme]
    assert not missing, f"README config reference lacks: {missing}"


def test_the_readme_shows_the_default_values():
    """Each `| `key` | `value` | ... |` row of the README's config reference shows default.yaml's value."""
    readme = (REPO_ROOT / "README.md").read_text()
    shown = dict(re.findall(r"^\| `([\w.]+)` \| `(.*?)` \|", readme, re.M))
    defaults = yaml.safe_load(DEFAULT_CONFIG.read_text())

    def value(dotted):
        node = defaults
        for part in dotted.split("."):
            node = node[part]
        return node

    wrong = {}
    for key, text in shown.items():
        text = text.replace("&lt;", "<").replace("&gt;", ">")
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:  # e.g. {kit}/... reads as a plain string
            parsed = text
        if value(key) not in (parsed, text):
            wrong[key] = (text, value(key))
    assert len(shown) > 50
    assert not wrong, f"README shows other defaults than configs/default.yaml: {wrong}"

"""The Launchpad's knobs: Dagster config classes whose fields are experiment config keys, with the experiment's
values as defaults and the schema's types, bounds and descriptions (srlm/config.py) copied, not retyped.

The Launchpad does not enforce pydantic bounds: an asset checks a knob that could break it (eval_settings)."""

from typing import Any, Sequence

import dagster as dg
from pydantic import BaseModel, create_model
from pydantic.fields import FieldInfo

from srlm.config import Benchmark, ExperimentConfig


def knob(section: type[BaseModel], key: str, default: Any, about: str = "") -> tuple[Any, FieldInfo]:
    """A Launchpad field for the config key `section.key`: its type, bounds and description (after `about: `
    when given), with `default` (the experiment's value)."""
    field = section.model_fields[key]
    description = f"{about}: {field.description}" if about else field.description
    return field.annotation, FieldInfo.merge_field_infos(field, default=default, description=description)


def _knobs(name: str, section: BaseModel, keys: Sequence[str]) -> type[dg.Config]:
    """A config class named `name` with a knob for each of the section's `keys`, defaulting to its values."""
    fields = {key: knob(type(section), key, getattr(section, key)) for key in keys}
    return create_model(name, __base__=dg.Config, **fields)


def expand_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knobs of the candidates."""
    return _knobs("ExpandConfig", cfg.expand, ("candidates", "temperature", "top_p", "max_new_tokens"))


def select_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knob of a selection (the selector is the arm's)."""
    return _knobs("SelectConfig", cfg.select, ("margin",))


def eval_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knobs of every evaluation: the N of inference-time scaling and the sampling temperature."""
    return _knobs("EvalConfig", cfg.eval, ("samples", "temperature"))


def questions_config_class(cfg: ExperimentConfig) -> type[dg.Config]:
    """Launchpad knobs of eval/questions: how many questions of each benchmark are evaluated."""
    fields = {f"{name}_limit": knob(Benchmark, "limit", b.limit, about=name) for name, b in cfg.eval.enabled.items()}
    return create_model("QuestionsConfig", __base__=dg.Config, **fields)


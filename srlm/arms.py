"""Arms of an experiment and where each one's assets live (docs/design.md, "Arms").

An experiment compares named arms that share the data, the base model, the catalyst and the questions:

    sft                     LoRA on D0 only: no catalyst, no iterations (schema `sft`)
    self_train/<selector>   iterative self-training without the catalyst: from the sft checkpoint, the model
                            rewrites its own rationales with the answering prompt
    srlm/<selector>         the SRLM chain: from M0 (D0 + catalyst, schema `srlm_iter_0`), the model enriches
                            its rationales with the enriching prompt

Nothing shared is computed twice: every SRLM arm starts from the one M0, and their first iteration's
candidates, scores and selector choices (written by M0 from the same rationales with the same seeds) are
one set of assets too (schema `srlm_iter_1`). From the selection on, each arm has its own schema,
`<arm slug>_iter_<t>` (e.g. `srlm_likelihood_iter_2`). A schema is the first part of every asset key
in it and the SQL schema of its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from srlm.registry import ANSWER, ARM_KINDS, BASE_SCHEMA, ENRICH, SELF_TRAIN, SFT, SRLM, get_selector

SFT_SCHEMA = "sft"
M0_SCHEMA = "srlm_iter_0"
SHARED_GENERATION_SCHEMA = "srlm_iter_1"  # the SRLM arms' first candidates, scores and selector choices
BASE_ARM = "base"  # the `arm` value of the base model's rows


def arm_slug(arm: str) -> str:
    """An arm's name as a schema part or a tag: "srlm/likelihood" -> "srlm_likelihood"."""
    return arm.replace("/", "_")


@dataclass(frozen=True)
class Arm:
    name: str  # "sft" | "self_train/<selector>" | "srlm/<selector>"
    kind: str
    selector: Optional[str]

    @property
    def slug(self) -> str:
        return arm_slug(self.name)

    @property
    def prompt(self) -> str:
        """The task that writes this arm's candidates: the enriching prompt (SRLM) or answering (self-training)."""
        return ENRICH if self.kind == SRLM else ANSWER

    @property
    def uses_catalyst(self) -> bool:
        return self.kind == SRLM


def parse_arm(name: str, default_selector: str) -> Arm:
    """"sft", "srlm/<selector>", "self_train/<selector>"; a bare "srlm" or "self_train" takes `default_selector`."""
    kind, _, selector = name.partition("/")
    if kind not in ARM_KINDS:
        raise ValueError(f"unknown arm '{name}': arms are sft, self_train/<selector> and srlm/<selector>")
    if kind == SFT:
        if selector:
            raise ValueError(f"arm '{name}': sft takes no selector")
        return Arm(SFT, SFT, None)
    selector = selector or default_selector
    try:
        get_selector(selector)
    except ValueError as exc:
        raise ValueError(f"arm '{name}': {exc}") from None
    return Arm(f"{kind}/{selector}", kind, selector)


@dataclass(frozen=True)
class Stage:
    """One checkpoint of an arm's chain: where its tables live and what it continues from.

    `schema` holds the checkpoint, its training set, evaluation and (t >= 1) selection; `generation_schema`
    holds the candidates, scores and selector choices it was selected from (shared by the SRLM arms at t = 1)."""

    arm: str  # the `arm` column of its rows ("srlm" for M0 and the shared first generation)
    iteration: int
    schema: str
    generation_schema: Optional[str]
    previous: Optional["Stage"]
    selector: Optional[str]
    prompt: Optional[str]  # enrich | answer (t >= 1)
    uses_catalyst: bool

    @property
    def shared_generation(self) -> bool:
        """Whether its candidates are the SRLM arms' shared first generation."""
        return self.generation_schema == SHARED_GENERATION_SCHEMA

    @property
    def generation_arm(self) -> str:
        """The `arm` of its candidates and scores: "srlm" when the SRLM arms share them."""
        return SRLM if self.shared_generation else self.arm

    @property
    def label(self) -> str:
        """How reports name the checkpoint: "sft", "M0", "M2 srlm/likelihood"."""
        if self.schema in (SFT_SCHEMA, BASE_SCHEMA):
            return self.arm
        if self.schema == M0_SCHEMA:
            return "M0"
        return f"M{self.iteration} {self.arm}"


BASE_STAGE = Stage(BASE_ARM, -1, BASE_SCHEMA, None, None, None, None, False)
SFT_STAGE = Stage(SFT, 0, SFT_SCHEMA, None, BASE_STAGE, None, None, False)
M0_STAGE = Stage(SRLM, 0, M0_SCHEMA, None, BASE_STAGE, None, None, True)


def generation_schema(arm: Arm, iteration: int) -> str:
    if arm.kind == SRLM and iteration == 1:
        return SHARED_GENERATION_SCHEMA
    return f"{arm.slug}_iter_{iteration}"


def chain(arm: Arm, iterations: int) -> list[Stage]:
    """The arm's checkpoints in order: sft -> [sft]; self_train -> sft, then 1..T; srlm -> M0, then 1..T."""
    if arm.kind == SFT:
        return [SFT_STAGE]
    stages = [M0_STAGE if arm.kind == SRLM else SFT_STAGE]
    for t in range(1, iterations + 1):
        stages.append(
            Stage(arm.name, t, f"{arm.slug}_iter_{t}", generation_schema(arm, t), stages[-1], arm.selector, arm.prompt, arm.uses_catalyst)
        )
    return stages


def stages(arms: list[Arm], iterations: int) -> list[Stage]:
    """Every checkpoint of the experiment once (shared ones once), in a stable order."""
    out: dict[str, Stage] = {}
    for arm in arms:
        for stage in chain(arm, iterations):
            out.setdefault(stage.schema, stage)
    return list(out.values())


def evaluated(arms: list[Arm], iterations: int) -> list[Stage]:
    """Every stage an evaluation asset covers: the base model, then each checkpoint."""
    return [BASE_STAGE, *stages(arms, iterations)]


def generations(arms: list[Arm], iterations: int) -> list[Stage]:
    """The first stage selecting from each generation schema (t >= 1): the ones that write candidates,
    scores and selector choices, each once."""
    out: dict[str, Stage] = {}
    for stage in stages(arms, iterations):
        if stage.iteration >= 1:
            out.setdefault(stage.generation_schema, stage)
    return list(out.values())


@dataclass(frozen=True)
class Pair:
    """Two checkpoints compared on the same questions: `candidate` against `reference`."""

    candidate: Stage
    reference: Stage
    relation: str  # vs_sft | vs_previous | vs_self_train


def comparison_pairs(arms: list[Arm], iterations: int) -> list[Pair]:
    """Each checkpoint against sft (when the experiment has it) and against the previous checkpoint of its
    own arm (the base model for sft and M0); each SRLM arm's last checkpoint against each self-training
    arm's last one."""
    has_sft = any(a.kind in (SFT, SELF_TRAIN) for a in arms)
    pairs: dict[tuple[str, str], Pair] = {}
    for stage in stages(arms, iterations):
        if has_sft and stage.schema != SFT_SCHEMA:
            pairs.setdefault((stage.schema, SFT_SCHEMA), Pair(stage, SFT_STAGE, "vs_sft"))
        if stage.previous is not None:
            pairs.setdefault((stage.schema, stage.previous.schema), Pair(stage, stage.previous, "vs_previous"))
    finals = {arm.kind: [] for arm in arms}
    for arm in arms:
        finals[arm.kind].append(chain(arm, iterations)[-1])
    for srlm in finals.get(SRLM, []):
        for baseline in finals.get(SELF_TRAIN, []):
            pairs.setdefault((srlm.schema, baseline.schema), Pair(srlm, baseline, "vs_self_train"))
    return list(pairs.values())


def lineage(arm: str) -> tuple[str, ...]:
    """The `arm` values of the checkpoints an arm's chain passes through, from the base model on."""
    kind = arm.partition("/")[0]
    if kind == SRLM:
        return (BASE_ARM, SRLM, arm)
    if kind == SELF_TRAIN:
        return (BASE_ARM, SFT, arm)
    return (BASE_ARM, arm)


def leaf_arms(arms: list[str]) -> list[str]:
    """The arms a chart draws a line for (sft and each iterative arm), among `arm` values of rows."""
    return sorted({a for a in arms if a not in (BASE_ARM, SRLM)})

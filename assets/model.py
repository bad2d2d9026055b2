"""model/base: the base model every checkpoint starts from: a local Hugging Face directory, or the
bootstrap model (a tiny Llama and BPE tokenizer trained from scratch on the instruction text)."""


import dagster as dg
import jinja2

from assets.data import BASE_MODEL
from assets.tables import code_version, frame, table_output
from resources import GenerationResource
from srlm import prompts, schemas
from srlm.arms import BASE_ARM
from srlm.checkpoints import checkpoint_id_for, commit_dir
from srlm.config import ExperimentConfig
from srlm.datasets import load_instructions


def corpus_documents(cfg: ExperimentConfig) -> list[str]:
    """The bootstrap corpus as chat-formatted answering conversations, so the base model already speaks
    the chat format and the <think> convention the loop trains on."""
    from srlm.bootstrap import CHAT_TEMPLATE

    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    examples = load_instructions(cfg.model.bootstrap.corpus, cfg.experiment.seed).examples
    return [
        template.render(
            messages=[
                *prompts.answer_messages(e.instruction, e.input),
                {"role": "assistant", "content": prompts.answer_completion(e.rationale, e.output)},
            ],
            add_generation_prompt=False,
        )
        for e in examples
    ]


def build_model_assets(cfg: ExperimentConfig) -> list[dg.AssetsDefinition]:
    source = "the bootstrap model trained here" if cfg.model.is_bootstrap else f"{cfg.model.base}"

    @dg.asset(
        key=BASE_MODEL,
        group_name="model",
        kinds={"pytorch", "huggingface"},
        description=(
            f"The base model ({source}); one row: checkpoint_id, path (a Hugging Face model directory), size. "
            "A preset or a .gguf file is converted once into $SRLM_HOME/models. Every checkpoint is a LoRA adapter on top of it."
        ),
        # the bootstrap corpus holds answers in the think format; the enrich templates do not reach the base model
        code_version=code_version(cfg.section_hash("model"), prompts.ANSWER_FORMAT_VERSION),
    )
    def base(context: dg.AssetExecutionContext, generation: GenerationResource):
        if cfg.model.is_bootstrap:
            row, meta = _bootstrap(context, cfg)
        else:
            row, meta = _local(cfg, context.run_id)
        # checks that it loads: a directory that is not a causal LM fails here, clearly
        row["context_length"] = meta["context_length"] = generation.context_length(row["path"])
        return table_output(frame([row], {**schemas.CHECKPOINTS, **schemas.BASE_MODEL_EXTRA}), meta)

    return [base]


def _row(checkpoint_id: str, path: str, run_id: str) -> dict:
    return {
        "checkpoint_id": checkpoint_id,
        "arm": BASE_ARM,
        "iteration": -1,
        "base_model": checkpoint_id,
        "path": path,
        "trained_on": None,
        "train_loss": None,
        "run_id": run_id,
        "init": "pretrained",
        "parent_checkpoint_id": None,
        "n_examples": None,
        "steps": None,
        "seconds": None,
        "truncated_examples": None,
        "source": "bootstrap",
        "parameters": None,
        "heldout_perplexity": None,
        "tokens_seen": None,
        "context_length": None,
    }


def _bootstrap(context: dg.AssetExecutionContext, cfg: ExperimentConfig) -> tuple[dict, dict]:
    from srlm.bootstrap import BootstrapSettings, pretrain

    settings = BootstrapSettings.of(cfg.model.bootstrap, seed=cfg.experiment.seed)
    documents = corpus_documents(cfg)
    context.log.info(f"bootstrap: {len(documents)} documents, budget {settings.max_seconds:g} s or {settings.max_steps} steps")
    # trained into a run folder, then committed under its content id (a budget in seconds makes two runs differ)
    staging = cfg.home / "models" / f"run-{context.run_id}"
    report = pretrain(documents, staging, settings, device=cfg.model.device, log=context.log.info)
    ckpt_id = checkpoint_id_for("base", staging)
    out = commit_dir(staging, cfg.home / "models" / ckpt_id)
    row = _row(ckpt_id, str(out), context.run_id)
    final_loss = report.loss_curve[-1][1] if report.loss_curve else None
    row.update(
        train_loss=final_loss,
        n_examples=len(documents),
        steps=report.steps,
        seconds=report.seconds,
        parameters=report.parameters,
        heldout_perplexity=report.heldout_perplexity,
        tokens_seen=report.tokens_seen,
    )
    meta = {
        "checkpoint_id": ckpt_id,
        "parameters": report.parameters,
        "tokens_seen": report.tokens_seen,
        "steps": report.steps,
        "seconds": round(report.seconds, 1),
        "heldout_perplexity": report.heldout_perplexity,
        "vocab_size": report.vocab_size,
        "loss_curve": [[s, round(loss, 4)] for s, loss in report.loss_curve],
    }
    return row, meta


def _local(cfg: ExperimentConfig, run_id: str) -> tuple[dict, dict]:
    """A preset, a .gguf file (converted once into $SRLM_HOME/models) or a Hugging Face directory."""
    from srlm.base_models import model_card, resolve_base

    resolved = resolve_base(cfg.model.base, cfg.home / "models")
    card = model_card(resolved.path)
    ckpt_id = checkpoint_id_for("base", resolved.path)
    row = _row(ckpt_id, str(resolved.path), run_id)
    row.update(source=resolved.source["kind"], parameters=card["parameters"])
    meta = {
        "checkpoint_id": ckpt_id,
        "path": dg.MetadataValue.path(str(resolved.path)),
        **{k: v for k, v in resolved.source.items() if v is not None},
        "parameters": card["parameters"],
        "architecture": card["architecture"],
        "vocab_size": card["vocab_size"],
        "chat_template": dg.MetadataValue.md(f"```jinja\n{card['chat_template'] or '(none)'}\n```"),
    }
    return row, meta

"""Cross-check of the loglikelihood protocol against EleutherAI lm-evaluation-harness, per question.

    pip install -e ".[bench]"          # lm-eval==0.4.13 (does not move the torch / transformers pins)
    python bench/lm_eval_crosscheck.py --model DIR [--arc-limit 200] [--hellaswag-limit 200]
                                       [--mmlu-subjects a b c] [--mmlu-limit 25]

The same local model directory (a bootstrap model, SmolLM2, any local HF causal LM) is scored twice on the
same questions of the offline data kit:
- project: srlm.evaluation.evaluate_loglikelihood (srlm.benchmarks readers and loglikelihood_requests,
  TransformersEngine.logprobs); its rows carry the acc choice (highest summed log-probability) and the
  acc_norm choice (prediction_norm / correct_norm: summed log-probability per character of the choice).
- harness: lm_eval.simple_evaluate with its "hf" model (HFLM) on tasks written into a temp dir. No hub is
  needed: each task `include`s the installed harness's own YAML (arc/arc_challenge.yaml,
  hellaswag/hellaswag.yaml, and mmlu/default/mmlu_<subject>.yaml with _default_template_yaml), so
  doc_to_text, doc_to_choice, doc_to_target, target_delimiter, the MMLU description and the metrics are the
  harness's, and only the data source is replaced: ARC-Challenge reads the kit's JSONL with
  `dataset_path: json` + `data_files` (process_docs maps the kit's AI2 layout {question: {stem, choices:
  [{text, label}]}} to the hub layout {question, choices: {text, label}}); HellaSwag reads a JSONL of the
  kit's (already preprocessed) items as {query, choices, label}, the fields the harness's process_docs
  would make from the hub rows (so both sides get the kit's strings, which differ in details from the
  harness's own preprocessing of the hub data: see the kit README); MMLU reads the kit's header-less CSVs
  with pandas (all cells as strings, no NA conversion) through `custom_dataset`, and asks for acc_norm
  too (the harness's MMLU template reports acc only; its choices are one letter, so acc_norm = acc).
  The harness's acc choice is argmax of its per-choice log-likelihoods (--log_samples gives them per
  question); its acc_norm verdict is the per-sample acc_norm it logs.

Per question, the two acc choices are compared; every disagreement is put into one class:
  prompt-text   the (context, continuation) strings differ (data reading or formatting)
  tokens        the strings agree but the token ids of context or continuation differ
  max-length    the inputs agree but the sides use different context limits and one truncates
  near-tie      identical inputs; the top two choices are closer than the per-choice numeric difference
                between the two implementations (float rounding from different batching / padding /
                attention masks), so the argmax can flip
  unexplained   none of the above (a bug on one side)
and the two acc_norm verdicts (right or wrong) are compared. The script also prints the largest
per-choice log-probability difference on identical inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import build_bootstrap_model, describe_model

DEFAULT_MMLU_SUBJECTS = ("abstract_algebra", "college_mathematics", "high_school_european_history", "marketing")

UTILS_PY = '''"""Data adapters for the cross-check tasks: the offline kit's files in the layouts the harness's YAML expects."""


def arc_docs(dataset):
    """AI2 JSONL rows -> the hub's allenai/ai2_arc rows (question, choices {text, label}, answerKey, id)."""

    def convert(doc):
        q = doc["question"]
        return {
            "id": doc["id"],
            "question": q["stem"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
            "answerKey": doc["answerKey"],
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


def hellaswag_docs(dataset):
    """The JSONL rows already are what the harness's process_docs makes: query, choices, label."""
    return dataset


def mmlu_dataset(srlm_test_csv=None, srlm_dev_csv=None, srlm_subject=None, **_):
    """Header-less MMLU CSVs -> the hub's cais/mmlu rows (question, subject, choices, answer index)."""
    import datasets
    import pandas as pd

    def load(path):
        df = pd.read_csv(path, header=None, names=["question", "A", "B", "C", "D", "answer"], dtype=str,
                         keep_default_na=False, encoding="utf-8")
        return datasets.Dataset.from_dict({
            "question": df["question"].tolist(),
            "subject": [srlm_subject] * len(df),
            "choices": df[["A", "B", "C", "D"]].values.tolist(),
            "answer": ["ABCD".index(a.strip()) for a in df["answer"]],
        })

    return datasets.DatasetDict({"test": load(srlm_test_csv), "dev": load(srlm_dev_csv)})
'''


def find_model(explicit: str | None) -> Path | None:
    """--model, else the newest bootstrap base model under $SRLM_HOME/models or ./.srlm/models."""
    if explicit:
        return Path(explicit)
    homes = [Path(os.environ["SRLM_HOME"])] if os.environ.get("SRLM_HOME") else []
    homes.append(Path.cwd() / ".srlm")
    found = [p for h in homes for p in (h / "models").glob("base-*") if (p / "config.json").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def with_bos_tokenizer(model_dir: Path, out: Path) -> Path:
    """A copy of model_dir whose tokenizer.json prepends the bos token (a TemplateProcessing post-processor)."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out)
    bos = AutoTokenizer.from_pretrained(str(model_dir)).bos_token
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    tok.save(str(out / "tokenizer.json"))
    print(f"--add-bos: the tokenizer of the copy now prepends {bos} (id {bos_id}) when add_special_tokens=True")
    return out


def write_tasks(task_dir: Path, kit: Path, subjects: list[str], hellaswag: list) -> dict[str, str]:
    """YAML tasks in task_dir; returns {harness task name: benchmark key ("arc_challenge", "hellaswag" or
    "mmlu/<subject>")}. `hellaswag`: the kit's questions to write as the HellaSwag task's data."""
    import lm_eval

    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    q = json.dumps  # a JSON string is a valid double-quoted YAML scalar
    (task_dir / "utils.py").write_text(UTILS_PY)
    names = {"srlm_xcheck_arc_challenge": "arc_challenge"}
    (task_dir / "srlm_xcheck_arc_challenge.yaml").write_text(
        f"include: {q(str(tasks_root / 'arc' / 'arc_challenge.yaml'))}\n"
        "task: srlm_xcheck_arc_challenge\n"
        "tag: srlm_xcheck\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        "dataset_kwargs:\n"
        f"  data_files: {{test: {q(str(kit / 'eval' / 'arc_challenge' / 'test.jsonl'))}}}\n"
        "training_split: null\n"
        "validation_split: null\n"
        "test_split: test\n"
        "process_docs: !function utils.arc_docs\n"
    )
    if hellaswag:
        docs = task_dir / "hellaswag.jsonl"
        docs.write_text("".join(json.dumps({"query": x.question, "choices": list(x.choices), "label": x.gold_index}) + "\n"
                                for x in hellaswag))
        names["srlm_xcheck_hellaswag"] = "hellaswag"
        (task_dir / "srlm_xcheck_hellaswag.yaml").write_text(
            f"include: {q(str(tasks_root / 'hellaswag' / 'hellaswag.yaml'))}\n"
            "task: srlm_xcheck_hellaswag\n"
            "tag: srlm_xcheck\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            "dataset_kwargs:\n"
            f"  data_files: {{validation: {q(str(docs))}}}\n"
            "training_split: null\n"
            "process_docs: !function utils.hellaswag_docs\n"
        )
    for subject in subjects:
        name = f"srlm_xcheck_mmlu_{subject}"
        names[name] = f"mmlu/{subject}"
        (task_dir / f"{name}.yaml").write_text(
            f"include: {q(str(tasks_root / 'mmlu' / 'default' / f'mmlu_{subject}.yaml'))}\n"
            f"task: {name}\n"
            "tag: srlm_xcheck\n"
            "dataset_path: csv\n"
            "dataset_name: null\n"
            "custom_dataset: !function utils.mmlu_dataset\n"
            "dataset_kwargs:\n"
            f"  srlm_test_csv: {q(str(kit / 'eval' / 'mmlu' / 'test' / f'{subject}_test.csv'))}\n"
            f"  srlm_dev_csv: {q(str(kit / 'eval' / 'mmlu' / 'dev' / f'{subject}_dev.csv'))}\n"
            f"  srlm_subject: {q(subject)}\n"
            "metric_list:\n"  # the template's acc, plus acc_norm to compare with the project's
            "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
            "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
        )
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: newest $SRLM_HOME/models/base-*, else build one)")
    ap.add_argument("--bootstrap-seconds", type=float, default=60.0, help="budget when a model must be built")
    ap.add_argument("--kit", help="offline data kit folder (default: srlm.kit.find_data_kit)")
    ap.add_argument("--arc-limit", type=int, default=200, help="first N ARC-Challenge test questions")
    ap.add_argument("--hellaswag-limit", type=int, default=200, help="first N HellaSwag questions (0: none)")
    ap.add_argument("--mmlu-subjects", nargs="*", default=list(DEFAULT_MMLU_SUBJECTS))
    ap.add_argument("--mmlu-limit", type=int, default=25, help="first N test questions per MMLU subject")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--show", type=int, default=3, help="disagreements to print per class")
    ap.add_argument(
        "--add-bos",
        action="store_true",
        help="score a temp copy of the model whose tokenizer prepends its bos token when asked for special tokens, "
        "as Llama / Gemma / Mistral tokenizers do (the bootstrap tokenizer adds none): shows the 'tokens' class",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="srlm-bench-xcheck-"))
    # no hub here: everything offline, and the datasets / evaluate caches go to the temp dir
    os.environ.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp / "hf"), HF_DATASETS_CACHE=str(tmp / "hf" / "datasets"), TOKENIZERS_PARALLELISM="false",
    )
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_questions(args: argparse.Namespace, kit: Path) -> dict[str, list]:
    """Benchmark key -> the questions both sides score, in file order."""
    from srlm.benchmarks import read_benchmark

    questions = {"arc_challenge": read_benchmark("arc_challenge", kit)[: args.arc_limit]}
    if args.hellaswag_limit:
        questions["hellaswag"] = read_benchmark("hellaswag", kit)[: args.hellaswag_limit]
    mmlu_all = read_benchmark("mmlu", kit) if args.mmlu_subjects else []
    for subject in args.mmlu_subjects:
        questions[f"mmlu/{subject}"] = [q for q in mmlu_all if q.subset == subject][: args.mmlu_limit]
    return questions


def project_side(args: argparse.Namespace, model_dir: Path, questions: dict[str, list]):
    """(engine, question_id -> evaluation row) from srlm.evaluation.evaluate_loglikelihood."""
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineSettings
    from srlm.evaluation import evaluate_loglikelihood

    t0 = time.perf_counter()
    engine = TransformersEngine(model_dir, TransformersEngineSettings("cpu", "float32", args.batch_size, trust_remote_code=False))
    rows = {}
    for qs in questions.values():
        for q, row in zip(qs, evaluate_loglikelihood(qs, engine, None)):
            rows[q.question_id] = row
    print(f"project: {len(rows)} questions scored in {time.perf_counter() - t0:.0f} s", flush=True)
    return engine, rows


def harness_side(args: argparse.Namespace, model_dir: Path, kit: Path, questions: dict[str, list], tmp: Path):
    """(HFLM, question_id -> the harness's logged sample) from lm_eval.simple_evaluate."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    task_dir = tmp / "tasks"
    task_dir.mkdir()
    task_names = write_tasks(task_dir, kit, list(args.mmlu_subjects), questions.get("hellaswag", []))
    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=args.batch_size)
    samples = {name: list(range(len(questions[key]))) for name, key in task_names.items()}
    results = simple_evaluate(
        model=lm,
        tasks=list(task_names),
        task_manager=TaskManager(include_path=str(task_dir)),
        samples=samples,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
    )
    print(f"harness: {sum(len(v) for v in samples.values())} questions scored in {time.perf_counter() - t0:.0f} s", flush=True)
    by_id = {}
    for name, key in task_names.items():
        for s in results["samples"][name]:
            qid = f"arc_challenge/{s['doc']['id']}" if key == "arc_challenge" else f"{key}/{s['doc_id']}"
            by_id[qid] = s
    return lm, by_id


def run(args: argparse.Namespace, tmp: Path) -> None:
    import lm_eval
    import torch

    from srlm.kit import find_data_kit

    kit = find_data_kit(args.kit)
    model_dir = find_model(args.model)
    if model_dir is None:
        model_dir = build_bootstrap_model(tmp / "model", args.bootstrap_seconds)
    if args.add_bos:
        model_dir = with_bos_tokenizer(model_dir, tmp / "model-bos")
    print(f"model: {model_dir.name}: {describe_model(model_dir)}; lm-eval {lm_eval.__version__}, torch {torch.__version__}")
    questions = read_questions(args, kit)
    engine, project = project_side(args, model_dir, questions)
    lm, harness = harness_side(args, model_dir, kit, questions, tmp)
    report(args, questions, engine, project, lm, harness)


def disagreement(q, row: dict, sample: dict, engine, lm, h_ll: list[float]) -> tuple[str, str]:
    """The class of an acc disagreement (see the module docstring) and a line of detail."""
    from srlm.benchmarks import loglikelihood_requests
    from srlm.engines.tokenization import encode_pair

    p_args = loglikelihood_requests(q)
    h_args = [tuple(a) for a in sample["arguments"]]
    if [tuple(a) for a in p_args] != h_args:
        first = next(i for i, (a, b) in enumerate(zip(p_args, h_args)) if tuple(a) != tuple(b))
        return "prompt-text", f"project {p_args[first]!r} vs harness {h_args[first]!r}"
    p_tok = [encode_pair(engine.tokenizer, c, t) for c, t in p_args]
    h_tok = [lm._encode_pair(c, t) for c, t in h_args]
    if any(tuple(a) != tuple(b) for a, b in zip(p_tok, h_tok)):
        first = next(i for i, (a, b) in enumerate(zip(p_tok, h_tok)) if tuple(a) != tuple(b))
        part = 0 if p_tok[first][0] != h_tok[first][0] else 1
        return "tokens", (
            f"choice {first} {'context' if part == 0 else 'continuation'}: project {p_tok[first][part][:6]}... "
            f"({len(p_tok[first][part])} tokens) vs harness {h_tok[first][part][:6]}... ({len(h_tok[first][part])} tokens)"
        )
    longest = max(len(c) + len(t) for c, t in p_tok)
    truncated = longest > min(engine.max_length, lm.max_length) + 1
    if truncated and engine.max_length != lm.max_length:
        return "max-length", f"{longest} tokens; limits project {engine.max_length}, harness {lm.max_length}"
    p_ll = row["choice_logprobs"]
    diffs = [abs(a - b) for a, b in zip(p_ll, h_ll)]
    gap_p, gap_h = (sorted(x)[-1] - sorted(x)[-2] for x in (p_ll, h_ll))
    cls = "near-tie" if max(gap_p, gap_h) <= 2 * max(diffs) + 1e-6 else "unexplained"
    return cls, (
        f"top-2 gap project {gap_p:.2e} / harness {gap_h:.2e}; max per-choice |diff| {max(diffs):.2e}"
        f"{'; truncated' if truncated else ''}"
    )


def identical_inputs(q, sample: dict, engine, lm) -> bool:
    """Both sides score the same token ids (same strings, same context/continuation split)."""
    from srlm.benchmarks import loglikelihood_requests
    from srlm.engines.tokenization import encode_pair

    pairs = loglikelihood_requests(q)
    if [tuple(a) for a in pairs] != [tuple(a) for a in sample["arguments"]]:
        return False
    return all(tuple(encode_pair(engine.tokenizer, c, t)) == tuple(lm._encode_pair(c, t)) for c, t in pairs)


def report(args, questions: dict[str, list], engine, project: dict, lm, harness: dict) -> None:
    """Per benchmark: acc agreement (choices) with disagreement classes, acc_norm agreement (verdicts), accuracies."""
    classes: Counter = Counter()
    examples: dict[str, list[str]] = {}
    per_bench: dict[str, Counter] = {}
    max_diff_identical = 0.0
    for key, qs in questions.items():
        stats = per_bench.setdefault(key.split("/")[0], Counter())
        for q in qs:
            sample = harness.get(q.question_id)
            if sample is None:
                classes["missing in harness output"] += 1
                continue
            row = project[q.question_id]
            h_ll = [float(r[0]) for r in sample["filtered_resps"]]
            h_pred = max(range(len(h_ll)), key=h_ll.__getitem__)  # np.argmax: first index wins ties
            p_pred = q.labels.index(row["prediction"])
            stats["questions"] += 1
            stats["project acc"] += row["correct"]
            stats["harness acc"] += h_pred == q.gold_index
            stats["project acc_norm"] += row["correct_norm"]
            stats["harness acc_norm"] += float(sample["acc_norm"])
            stats["acc_norm agree"] += row["correct_norm"] == (float(sample["acc_norm"]) == 1.0)
            if identical_inputs(q, sample, engine, lm):
                stats["identical inputs"] += 1
                diffs = [abs(a - b) for a, b in zip(row["choice_logprobs"], h_ll)]
                max_diff_identical = max(max_diff_identical, *diffs)
            if p_pred == h_pred:
                stats["acc agree"] += 1
                continue
            cls, detail = disagreement(q, row, sample, engine, lm, h_ll)
            classes[cls] += 1
            examples.setdefault(cls, []).append(f"{q.question_id}: project {q.labels[p_pred]} harness {q.labels[h_pred]} ({detail})")

    print("\nRESULT lm_eval_crosscheck")
    print(f"  context limit: project {engine.max_length} tokens, harness {lm.max_length} tokens")
    total: Counter = Counter()
    for bench, st in per_bench.items():
        total.update(st)
        n = st["questions"]
        print(
            f"  {bench}: {n} questions; acc agreement {st['acc agree']}/{n} = {st['acc agree'] / n:.1%}, acc_norm "
            f"agreement {st['acc_norm agree']}/{n} = {st['acc_norm agree'] / n:.1%}; "
            f"identical inputs {st['identical inputs']}/{n}; acc project {st['project acc'] / n:.3f} / harness "
            f"{st['harness acc'] / n:.3f}; acc_norm project {st['project acc_norm'] / n:.3f} / harness {st['harness acc_norm'] / n:.3f}"
        )
    n = total["questions"]
    print(f"  all: acc agreement {total['acc agree']}/{n} = {total['acc agree'] / n:.1%}, "
          f"acc_norm agreement {total['acc_norm agree']}/{n} = {total['acc_norm agree'] / n:.1%}")
    print(f"  largest per-choice |log p difference| on identical inputs: {max_diff_identical:.2e}")
    print("  acc disagreement classes:")
    if not classes:
        print("    none")
    explain = {
        "prompt-text": "the two sides built different strings (data reading or prompt format)",
        "tokens": "same strings, different token ids (context/continuation split or special tokens)",
        "max-length": "different context limits, so one side truncates and the other does not",
        "near-tie": "identical inputs; the top-two choices differ by less than the float noise between the "
        "two implementations (batch composition, padding, attention mask, logits slicing)",
        "unexplained": "identical inputs and a clear margin: a bug on one side",
        "missing in harness output": "the harness logged no sample for this question",
    }
    for cls, count in classes.most_common():
        print(f"    {cls}: {count}  -- {explain.get(cls, '')}")
        for line in examples.get(cls, [])[: args.show]:
            print(f"      {line}")



if __name__ == "__main__":
    sys.exit(main())

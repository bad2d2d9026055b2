"""Cross-check of the loglikelihood protocol against EleutherAI lm-evaluation-harness, per question.

    pip install -e ".[bench]"          # lm-eval==0.4.13 (does not move the torch / transformers pins)
    python bench/lm_eval_crosscheck.py --model DIR [--arc-limit 200] [--mmlu-subjects a b c] [--mmlu-limit 25]

The same local model directory is scored twice on the same questions of the offline data kit:
- project: srlm.evaluation.evaluate_loglikelihood (srlm.benchmarks readers and loglikelihood_requests,
  TransformersEngine.logprobs); the prediction is the choice with the highest summed log-probability.
- harness: lm_eval.simple_evaluate with its "hf" model (HFLM) on tasks written into a temp dir. No hub is
  needed: each task `include`s the installed harness's own YAML (arc/arc_challenge.yaml, and
  mmlu/default/mmlu_<subject>.yaml with _default_template_yaml), so doc_to_text, doc_to_choice,
  doc_to_target, target_delimiter and the MMLU description are the harness's, and only the data source is
  replaced: ARC-Challenge reads the kit's JSONL with `dataset_path: json` + `data_files` (process_docs maps
  the kit's AI2 layout {question: {stem, choices: [{text, label}]}} to the hub layout {question, choices:
  {text, label}}); MMLU reads the kit's header-less CSVs with pandas (all cells as strings, no NA
  conversion) through `custom_dataset`. The harness's choice is argmax of its per-choice log-likelihoods
  (its "acc"; --log_samples gives them per question).

Per question, the two argmax choices are compared; every disagreement is put into one class:
  prompt-text   the (context, continuation) strings differ (data reading or formatting)
  tokens        the strings agree but the token ids of context or continuation differ
  max-length    the inputs agree but the sides use different context limits and one truncates
  near-tie      identical inputs; the top two choices are closer than the per-choice numeric difference
                between the two implementations (float rounding from different batching / padding /
                attention masks), so the argmax can flip
  unexplained   none of the above (a bug on one side)
The script also prints the largest per-choice log-probability difference on identical inputs, and how
often the harness's acc_norm choice differs from acc (the project reports acc, not acc_norm).
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


def write_tasks(task_dir: Path, kit: Path, subjects: list[str]) -> dict[str, str]:
    """YAML tasks in task_dir; returns {harness task name: benchmark key ("arc_challenge" or "mmlu/<subject>")}."""
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
        )
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: newest $SRLM_HOME/models/base-*, else build one)")
    ap.add_argument("--bootstrap-seconds", type=float, default=60.0, help="budget when a model must be built")
    ap.add_argument("--kit", help="offline data kit folder (default: srlm.kit.find_data_kit)")
    ap.add_argument("--arc-limit", type=int, default=200, help="first N ARC-Challenge test questions")
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


def run(args: argparse.Namespace, tmp: Path) -> None:
    import lm_eval
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from srlm.benchmarks import loglikelihood_requests, read_benchmark
    from srlm.engines.transformers_engine import TransformersEngine, TransformersEngineConfig, encode_pair
    from srlm.evaluation import evaluate_loglikelihood
    from srlm.kit import find_data_kit

    kit = find_data_kit(args.kit)
    model_dir = find_model(args.model)
    if model_dir is None:
        model_dir = build_bootstrap_model(tmp / "model", args.bootstrap_seconds)
    if args.add_bos:
        model_dir = with_bos_tokenizer(model_dir, tmp / "model-bos")
    print(f"model: {model_dir.name}: {describe_model(model_dir)}; lm-eval {lm_eval.__version__}, torch {torch.__version__}")

    # ------------------------------------------------------------------ questions (the same on both sides)
    questions = {}  # benchmark key -> list of Question, in file order
    questions["arc_challenge"] = read_benchmark("arc_challenge", kit)[: args.arc_limit]
    mmlu_all = read_benchmark("mmlu", kit) if args.mmlu_subjects else []
    for subject in args.mmlu_subjects:
        questions[f"mmlu/{subject}"] = [q for q in mmlu_all if q.subset == subject][: args.mmlu_limit]

    # ------------------------------------------------------------------ project side
    t0 = time.perf_counter()
    engine = TransformersEngine(model_dir, TransformersEngineConfig(device="cpu", dtype="float32", batch_size=args.batch_size))
    project = {}  # question_id -> (choice index, per-choice totals)
    for key, qs in questions.items():
        for q, row in zip(qs, evaluate_loglikelihood(qs, engine, None)):
            project[q.question_id] = (q.labels.index(row["prediction"]), row["choice_logprobs"])
    print(f"project: {len(project)} questions scored in {time.perf_counter() - t0:.0f} s")

    # ------------------------------------------------------------------ harness side
    t0 = time.perf_counter()
    task_dir = tmp / "tasks"
    task_dir.mkdir()
    task_names = write_tasks(task_dir, kit, list(args.mmlu_subjects))
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
    print(f"harness: {sum(len(v) for v in samples.values())} questions scored in {time.perf_counter() - t0:.0f} s")

    # ------------------------------------------------------------------ compare, question by question
    harness_id = {}
    for name, key in task_names.items():
        for s in results["samples"][name]:
            if key == "arc_challenge":
                qid = f"arc_challenge/{s['doc']['id']}"
            else:
                qid = f"{key}/{s['doc_id']}"
            harness_id[qid] = s

    classes: Counter = Counter()
    examples: dict[str, list[str]] = {}
    per_bench: dict[str, Counter] = {}
    max_diff_identical = 0.0
    norm_flips = 0
    max_len_project, max_len_harness = engine.max_length, lm.max_length
    for key, qs in questions.items():
        bench = "arc_challenge" if key == "arc_challenge" else "mmlu"
        stats = per_bench.setdefault(bench, Counter())
        for q in qs:
            s = harness_id.get(q.question_id)
            if s is None:
                classes["missing in harness output"] += 1
                continue
            h_ll = [float(r[0]) for r in s["filtered_resps"]]
            h_pred = max(range(len(h_ll)), key=h_ll.__getitem__)  # np.argmax: first index wins ties
            p_pred, p_ll = project[q.question_id]
            stats["questions"] += 1
            stats["project correct"] += p_pred == q.gold_index
            stats["harness correct (acc)"] += h_pred == q.gold_index
            if s.get("acc_norm") is not None:  # ARC reports acc and acc_norm; the MMLU template only acc
                stats["with acc_norm"] += 1
                stats["harness acc_norm"] += float(s["acc_norm"])
                norm_flips += (float(s["acc_norm"]) == 1.0) != (h_pred == q.gold_index)

            p_args = loglikelihood_requests(q)
            h_args = [tuple(a) for a in s["arguments"]]
            same_text = [tuple(a) for a in p_args] == [(c, t) for c, t in h_args]
            p_tok = [encode_pair(engine.tokenizer, c, t) for c, t in p_args]
            h_tok = [lm._encode_pair(c, t) for c, t in h_args]
            same_tokens = same_text and all(a == b for a, b in zip(p_tok, h_tok))
            longest = max(len(c) + len(t) for c, t in p_tok)
            truncated = longest > min(max_len_project, max_len_harness) + 1
            diffs = [abs(a - b) for a, b in zip(p_ll, h_ll)] if len(p_ll) == len(h_ll) else [float("inf")]
            if same_tokens:
                max_diff_identical = max(max_diff_identical, max(diffs))
                stats["identical inputs"] += 1
            stats["truncated (both sides)"] += truncated
            if p_pred == h_pred:
                stats["agree"] += 1
                continue
            if not same_text:
                cls = "prompt-text"
                first = next(i for i, (a, b) in enumerate(zip(p_args, h_args)) if tuple(a) != tuple(b))
                detail = f"project {p_args[first]!r} vs harness {h_args[first]!r}"
            elif not same_tokens:
                cls = "tokens"
                first = next(i for i, (a, b) in enumerate(zip(p_tok, h_tok)) if a != b)
                part = 0 if p_tok[first][0] != h_tok[first][0] else 1
                detail = (
                    f"choice {first} {'context' if part == 0 else 'continuation'}: project "
                    f"{p_tok[first][part][:6]}... ({len(p_tok[first][part])} tokens) vs harness "
                    f"{h_tok[first][part][:6]}... ({len(h_tok[first][part])} tokens)"
                )
            elif truncated and max_len_project != max_len_harness:
                cls = "max-length"
                detail = f"{longest} tokens; limits project {max_len_project}, harness {max_len_harness}"
            else:
                gap_p = sorted(p_ll)[-1] - sorted(p_ll)[-2]
                gap_h = sorted(h_ll)[-1] - sorted(h_ll)[-2]
                if max(gap_p, gap_h) <= 2 * max(diffs) + 1e-6:
                    cls = "near-tie"
                else:
                    cls = "unexplained"
                detail = (
                    f"top-2 gap project {gap_p:.2e} / harness {gap_h:.2e}; max per-choice |diff| {max(diffs):.2e}"
                    f"{'; truncated' if truncated else ''}"
                )
            classes[cls] += 1
            stats[f"disagree: {cls}"] += 1
            examples.setdefault(cls, []).append(
                f"{q.question_id}: project {q.labels[p_pred]} harness {q.labels[h_pred]} ({detail})"
            )

    print("\nRESULT lm_eval_crosscheck")
    print(f"  context limit: project {max_len_project} tokens, harness {max_len_harness} tokens")
    total = Counter()
    for bench, st in per_bench.items():
        total.update(st)
        n = st["questions"]
        norm = f", harness acc_norm {st['harness acc_norm'] / st['with acc_norm']:.3f}" if st["with acc_norm"] else ""
        print(
            f"  {bench}: {n} questions; agreement {st['agree']}/{n} = {st['agree'] / n:.1%}; "
            f"identical inputs {st['identical inputs']}/{n}; truncated {st['truncated (both sides)']}; "
            f"accuracy project {st['project correct'] / n:.3f}, harness acc {st['harness correct (acc)'] / n:.3f}{norm}"
        )
    n = total["questions"]
    print(f"  all: agreement {total['agree']}/{n} = {total['agree'] / n:.1%}")
    print(f"  largest per-choice |log p difference| on identical inputs: {max_diff_identical:.2e}")
    print(
        f"  questions where the harness's acc_norm is right/wrong differently from acc: {norm_flips}/"
        f"{total['with acc_norm']} (acc_norm divides by the choice's length in characters; the project reports acc)"
    )
    print("  disagreement classes:")
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

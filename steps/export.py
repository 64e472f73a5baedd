"""After register: the registered model as a plain Hugging Face checkpoint that any stock runtime serves.

    python steps/export.py --local --register-task-id offline-... --ctranslate2 --output-dir runs/export

The LoRA updates are merged into the weights and the prompt becomes vocabulary rows that the tokenizer
puts before every input (components/export/plain_checkpoint.py), so that

    AutoTokenizer.from_pretrained("runs/export/model"), AutoModelForSeq2SeqLM.from_pretrained("runs/export/model")

generate what ``load_finetuned`` generates, with no code from this project. ``generation_config.json``
holds the decoding the evaluate step used (from the registered folder's evaluation.json; greedy when
the folder has none), and the folder a model card with the evaluation. It is a few GB for ruT5-large.
``--ctranslate2`` also writes ``runs/export/ctranslate2``, the CTranslate2 conversion of that folder
(components/export/ctranslate2_model.py).

On a server the folder is registered as its own model, tagged "plain checkpoint", with the test
metrics as metadata; its parent is the adapter model the register task registered, and it is
published when that one is. That is the model clearml-serving's custom engine serves
(components/export/clearml_serving_preprocess.py). The CTranslate2 folder is the task's artifact.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearml_adapter import tracking
from cli.options import ArgumentParser, add_settings
from components.decoding import Decoding
from components.errors import UserError
from components.export.ctranslate2_model import convert_to_ctranslate2
from components.export.model_card import model_card
from components.export.plain_checkpoint import export_plain_checkpoint
from components.modeling import ADAPTER_WEIGHTS, adapter_digest, input_length_for
from steps.config import ExportOptions

PLAIN_MODEL_NAME = "ruT5-large LoRA+prompt (plain checkpoint)"  # with --model-dir; else the adapter model's name + " (plain checkpoint)"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, ExportOptions)
    tracking.add_common_arguments(parser)
    return parser


def read_evaluation(model_dir: Path) -> dict | None:
    """The evaluation the registered folder carries (None if it has none), refused if it scored other weights than the folder's."""
    path = model_dir / "evaluation.json"
    if not path.is_file():
        return None
    evaluation = json.loads(path.read_text(encoding="utf-8"))
    if evaluation.get("adapter_sha256") != adapter_digest(model_dir):
        raise UserError(
            f"{path} does not describe {model_dir / ADAPTER_WEIGHTS} (its adapter_sha256 is "
            f"{evaluation.get('adapter_sha256') or 'missing'}): evaluate these weights again, or remove it to export without figures."
        )
    return evaluation


def run(args: argparse.Namespace, task) -> dict:
    model_dir = tracking.upstream_input(args.register_task_id, "model", args.model_dir, ("--register-task-id", "--model-dir"), "a model folder")
    evaluation = read_evaluation(model_dir)
    decoding = evaluation["decoding"] if evaluation else {**asdict(Decoding()), "description": Decoding().describe()}
    output = args.output_dir / "model"
    max_input_length = input_length_for(model_dir, args.max_input_length)
    info = export_plain_checkpoint(model_dir, output, decoding=decoding, max_input_length=max_input_length)
    (output / "README.md").write_text(model_card(info, evaluation), encoding="utf-8")
    print(
        f"Exported {model_dir} to {output}: a plain checkpoint, prompt tokens {info['prompt_token_ids'][0]}..{info['prompt_token_ids'][-1]}, "
        f"inputs cut at {max_input_length} tokens."
    )
    result = {"model_dir": str(output), **info, "model_id": None if task.is_offline() else register(task, args, output, info, evaluation)}
    if args.ctranslate2:
        converted = convert_to_ctranslate2(output, args.output_dir / "ctranslate2")
        if not task.is_offline():
            tracking.upload_path(task, "ctranslate2", converted)
        result["ctranslate2_dir"] = str(converted)
        print(f"Converted it for CTranslate2 into {converted}.")
    return result


def register(task, args: argparse.Namespace, output: Path, info: dict, evaluation: dict | None) -> str:
    """The export in the model registry, its parent the adapter model the register task registered (if any)."""
    adapter = tracking.output_model_of(args.register_task_id) if args.register_task_id else None
    metrics = evaluation["metrics"] if evaluation else {}
    model_id = tracking.register_model(
        task,
        f"{adapter.name} (plain checkpoint)" if adapter else PLAIN_MODEL_NAME,
        output,
        tags=["plain checkpoint"],
        metadata={
            **{f"test_{k}": v for k, v in metrics.items()},
            "base_model": info["base_model"],
            "lora_rank": info["lora_rank"],
            "prompt_tokens": len(info["prompt_token_ids"]),
            "adapter_model_id": adapter.id if adapter else "",
        },
        publish=bool(adapter and adapter.published),
        parent_id=adapter.id if adapter else None,
    )
    lineage = f"from adapter model {adapter.id}" if adapter else "with no adapter model (given by --model-dir)"
    print(f"Registered the export as model {model_id}, {lineage}.")
    return model_id


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("export", "custom", build_parser, run, argv)


if __name__ == "__main__":
    main()

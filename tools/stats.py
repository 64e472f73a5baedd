"""Print the parameter counts of ruT5-large with the adapters, without downloading it.

    python -m tools.stats [--lora-rank R] [--prompt-length P]

The defaults reproduce the published figures: 740,047,872 total, 2,379,776 trainable (0.32%).
"""

from __future__ import annotations

from cli.options import ArgumentParser
from components.modeling import parameter_stats, rut5_large_on_meta
from components.settings import BASE_MODEL, AdapterSettings


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--lora-rank", type=int, default=AdapterSettings.lora_rank, help="LoRA's rank on q and v")
    parser.add_argument("--prompt-length", type=int, default=AdapterSettings.prompt_length, help="trainable prompt vectors")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    settings = AdapterSettings(lora_rank=args.lora_rank, prompt_length=args.prompt_length)
    stats = parameter_stats(rut5_large_on_meta(settings))
    print(f"{BASE_MODEL} + LoRA r={settings.lora_rank} on {'/'.join(settings.lora_targets)} + {settings.prompt_length}-token prompt")
    print(f"total parameters:     {stats['total']:>13,}")
    print(f"trainable parameters: {stats['trainable']:>13,}")
    print(f"trainable:            {stats['trainable_percent']:>12.2f}%")
    return stats


if __name__ == "__main__":
    main()

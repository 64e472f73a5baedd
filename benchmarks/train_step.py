"""Training-step time and memory: our LoRA (+ prompt) against HF PEFT's LoRA and the floor.

    python benchmarks/train_step.py --size small                                   # 2-core CPU, about a minute a variant
    python benchmarks/train_step.py --size rut5-large --precision bf16 --checkpointing    # one GPU

One step = forward, backward and optimizer step (adapters only) on the same batch and
random-weight architecture, for four variants:

  ours       our LoRA on q/v + our 20-token prompt
  ours_lora  our LoRA on q/v only
  peft_lora  HF PEFT's LoRA, same rank, alpha, dropout and targets
  floor      no adapter at all; the input embeddings require grad, so backward still
             runs through the whole network (the least any adapter can cost)

Variants are interleaved (order rotated every round) after warm-up; times are medians
and the ratios are medians of per-round (paired) ratios: ratio_vs_peft = ours_lora /
peft_lora, ratio_vs_floor = ours / floor. Memory: on a GPU the step's peak allocation
above what was resident before it; on CPU the activations saved for backward. The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext

import torch
from common import SIZES, build_model, device_and_sync, device_name, median, print_json_last, timed

from components.modeling import apply_peft
from components.prompt_tuning import extend_attention_mask

VARIANTS = ("ours", "ours_lora", "peft_lora", "floor")
H100_BF16_TFLOPS = 790.0  # measured


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-length", type=int, default=100)
    parser.add_argument("--target-length", type=int, default=200)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing in every variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's ceiling for model-FLOPs utilisation (default on CUDA: 790, an H100's bf16, measured; none on the CPU)",
    )
    return parser


class Variant:
    def __init__(self, name: str, base, args, device):
        self.name = name
        model = copy.deepcopy(base)
        prompt_length = 0
        if name in ("ours", "ours_lora"):
            prompt_length = args.prompt_length if name == "ours" else 0
            model = apply_peft(model, args.lora_rank, args.lora_alpha, args.lora_dropout, prompt_length)
        elif name == "peft_lora":
            import peft

            config = peft.LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=["q", "v"])
            model = peft.get_peft_model(model, config)
        else:
            model.requires_grad_(False)
            model.enable_input_require_grads()
        self.model = model.to(device).train()
        if args.checkpointing:
            (model.get_base_model() if name == "peft_lora" else model).activation_checkpointing_enable()
            if name == "peft_lora":
                model.get_base_model().enable_input_require_grads()
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
        self.autocast = (
            nullcontext()
            if args.precision == "fp32"
            else torch.autocast(device.type, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float16)
        )
        self.prompt_length = prompt_length

    def batch(self, input_ids, labels):
        mask = torch.ones_like(input_ids)
        return {"input_ids": input_ids, "attention_mask": extend_attention_mask(mask, self.prompt_length), "labels": labels}

    def step(self, batch) -> None:
        with self.autocast:
            loss = self.model(**batch).loss
        self.scaler.scale(loss).backward()
        if self.optimizer is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)


def saved_activation_mb(variant: Variant, batch) -> float:
    """Bytes saved for backward during one step, parameters excluded (CPU memory measure)."""
    params = {p.data_ptr() for p in variant.model.parameters()}
    seen, total = set(), 0

    def pack(tensor):
        nonlocal total
        key = (tensor.data_ptr(), tensor.numel())
        if tensor.data_ptr() not in params and key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        variant.step(batch)
    return total / 2**20


def cuda_step_peak_mb(variant: Variant, batch) -> float:
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    variant.step(batch)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - resident) / 2**20


def model_flops(base, args, prompt_length: int) -> float:
    """Approximate FLOPs of one frozen-base training step: 2N forward + 2N backward (activation
    gradients only) per token, encoder and decoder apart; attention scores and recompute not counted."""
    encoder = sum(p.numel() for p in base.encoder.block.parameters())
    decoder = sum(p.numel() for p in base.decoder.block.parameters()) + base.lm_head.weight.numel()
    tokens_in, tokens_out = args.batch_size * (args.input_length + prompt_length), args.batch_size * args.target_length
    return 4.0 * (encoder * tokens_in + decoder * tokens_out)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    device, sync = device_and_sync()
    base = build_model(args.size, device)
    vocab = base.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (args.batch_size, args.input_length), generator=generator).to(device)
    labels = torch.randint(3, vocab, (args.batch_size, args.target_length), generator=generator).to(device)
    variants = [Variant(name, base, args, device) for name in VARIANTS]
    batches = {v.name: v.batch(input_ids, labels) for v in variants}

    for _ in range(args.warmup):
        for v in variants:
            v.step(batches[v.name])
    times = {v.name: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants[round_index % len(variants) :] + variants[: round_index % len(variants)]
        for v in order:
            times[v.name].append(timed(lambda: v.step(batches[v.name]), sync))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    measure = cuda_step_peak_mb if device.type == "cuda" else saved_activation_mb
    peak = {v.name: measure(v, batches[v.name]) for v in variants}
    seconds = {name: median(t) for name, t in times.items()}
    ratio_vs_peft = median([a / b for a, b in zip(times["ours_lora"], times["peft_lora"])])
    ratio_vs_floor = median([a / b for a, b in zip(times["ours"], times["floor"])])
    tokens = args.batch_size * (args.input_length + args.target_length)
    flops = model_flops(base, args, args.prompt_length)
    peak_tflops = args.peak_tflops or (H100_BF16_TFLOPS if device.type == "cuda" else None)
    result = {
        "ours_s": round(seconds["ours"], 5),
        "ours_lora_s": round(seconds["ours_lora"], 5),
        "peft_lora_s": round(seconds["peft_lora"], 5),
        "floor_s": round(seconds["floor"], 5),
        "ratio_vs_peft": round(ratio_vs_peft, 4),
        "ratio_vs_floor": round(ratio_vs_floor, 4),
        "ours_peak_mb": round(peak["ours"], 1),
        "peft_peak_mb": round(peak["peft_lora"], 1),
        "device": device_name(device),
        "size": args.size,
        "precision": args.precision,
        "checkpointing": args.checkpointing,
        "batch": [args.batch_size, args.input_length, args.target_length],
        "ours_samples_per_s": round(args.batch_size / seconds["ours"], 2),
        "ours_tokens_per_s": round(tokens / seconds["ours"], 1),
        "ours_mfu": round(flops / seconds["ours"] / (peak_tflops * 1e12), 4) if peak_tflops else None,
        "memory_measure": "step peak above resident (CUDA)" if device.type == "cuda" else "activations saved for backward",
        "all_peak_mb": {k: round(v, 1) for k, v in peak.items()},
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()

"""Hold-out generation speed: loragate's batched path vs a per-example `generate` loop, in one run,
on the bundled SmolLM2-135M-Instruct (CPU), same prompts, same greedy settings.

    python -m bench.eval_throughput [--examples 64] [--batch-size 16] [--max-new-tokens 40]

Both paths decode greedily with the KV cache and stop at EOS; the batched one left-pads, groups
prompts of similar length, and stops a batch when all its rows are done. Also checks that the two
paths give the same answers (greedy decoding is deterministic; left padding may flip near-ties).
Writes bench/results/eval_throughput.json.
"""
from __future__ import annotations

import argparse
import time

import torch

from tasks.config import Config
from tasks.evaluation.holdout import generate, load_for_inference
from tasks.io import read_jsonl, write_json
from tasks.training.models import resolve_model


@torch.inference_mode()
def per_example(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    """The loop most notebooks write: one prompt at a time."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def _prompts(n: int) -> list[list[dict]]:
    for path in ("data/splits/holdout.jsonl", "data/splits/train.jsonl"):
        try:
            rows = read_jsonl(path)
            break
        except FileNotFoundError:
            continue
    else:
        raise SystemExit("bench: no data/splits/*.jsonl: run `dvc repro` first")
    rows = (rows * (n // len(rows) + 1))[:n]
    return [r["messages"][:-1] for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=Config().eval.batch_size)
    ap.add_argument("--max-new-tokens", type=int, default=Config().eval.max_new_tokens)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_for_inference(resolve_model(Config().model.base))
    prompts = _prompts(args.examples)
    generate(model, tokenizer, prompts[:2], 4, 2, "warm-up")
    started = time.perf_counter()
    loop = per_example(model, tokenizer, prompts, args.max_new_tokens)
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, "batched")
    batched_s = time.perf_counter() - started
    same = sum(a == b for a, b in zip(loop, batched)) / len(prompts)
    result = {"model": Config().model.base, "examples": len(prompts), "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
              "per_example_s": round(loop_s, 2), "batched_s": round(batched_s, 2),
              "per_example_examples_per_s": round(len(prompts) / loop_s, 2),
              "batched_examples_per_s": round(len(prompts) / batched_s, 2),
              "speedup": round(loop_s / batched_s, 2), "identical_answers": round(same, 3)}
    print(f"per-example loop: {loop_s:.1f} s ({result['per_example_examples_per_s']} ex/s); "
          f"batched (batch {args.batch_size}): {batched_s:.1f} s ({result['batched_examples_per_s']} ex/s) -> "
          f"{result['speedup']}x; identical answers {same:.1%}")
    write_json("bench/results/eval_throughput.json", result)


if __name__ == "__main__":
    main()

"""Two-level polyplan Chain vs transformers assisted generation, same pair, same draft length.

    .venv/bin/python benchmarks/executor_vs_assisted.py --assistant smollm2-135m:bf16 --gamma 5

Both decode greedily with the float32 SmolLM2 target; transformers gets
``num_assistant_tokens=gamma``, ``num_assistant_tokens_schedule="constant"`` and
``assistant_confidence_threshold=0`` (off), so both verify blocks of exactly ``gamma`` drafts.
Runs are interleaved A B A B per prompt and repeated; reported figures are medians of decode
time per token and their ratio (> 1: polyplan faster). Outputs are checked token-identical."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from polyplan import Chain
from polyplan.data.prompt_file import prompt_set
from polyplan.weights import load_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", default="smollm2")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--assistant", default="smollm2-135m:bf16")
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--prompts-file", default=None, help="your own prompt file (default: the built-in eval set)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()

    pool = load_pool(args.pool)
    tok = pool.tokenizer
    target, assistant = pool.drafters([args.target, args.assistant])
    chain = Chain([target, assistant], [args.gamma], tokenizer=tok)
    gc = assistant.model.generation_config
    gc.num_assistant_tokens = args.gamma
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0

    def run_hf(ids: list[int]) -> tuple[list[int], float]:
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = target.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                assistant_model=assistant.model,
                do_sample=False,
                max_new_tokens=args.max_new_tokens,
                eos_token_id=None,
                pad_token_id=tok.eos_token_id,
            )
        return out[0, len(ids) :].tolist(), time.perf_counter() - t0

    def run_polyplan(ids: list[int]) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        r = chain.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=[])
        return r.tokens, time.perf_counter() - t0

    prompts = [tok(p.text)["input_ids"] for p in prompt_set(args.prompts_file).select(limit=args.prompts)]
    run_hf(prompts[0][:8]), run_polyplan(prompts[0][:8])  # warm-up
    per_token = {"polyplan": [], "transformers": []}
    ratios, identical = [], 0
    for _ in range(args.repeats):
        for ids in prompts:
            a_tokens, a_s = run_polyplan(ids)
            b_tokens, b_s = run_hf(ids)
            identical += a_tokens == b_tokens
            per_token["polyplan"].append(a_s / len(a_tokens))
            per_token["transformers"].append(b_s / len(b_tokens))
            ratios.append((b_s / len(b_tokens)) / (a_s / len(a_tokens)))
    med = {k: statistics.median(v) for k, v in per_token.items()}
    n = args.repeats * len(prompts)
    print(f"target {args.target}, assistant {args.assistant}, gamma {args.gamma}, {n} runs each, interleaved")
    for k, v in med.items():
        print(f"{k:13s} median {1000 * v:8.2f} ms/token  ({1 / v:6.2f} tok/s)")
    print(
        f"speed ratio transformers/polyplan: median {statistics.median(ratios):.3f}; identical outputs {identical}/{n}"
    )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "benchmark": "executor_vs_assisted",
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": platform.platform(),
                    "args": vars(args),
                    "median_s_per_token": med,
                    "median_ratio": statistics.median(ratios),
                    "ratios": ratios,
                    "identical": identical,
                    "runs": n,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

"""The peer `cargo xtask bench --generate --peer` measures lomo's decoding against: HF
transformers' greedy `generate` on the same weights (an HF checkpoint the bench writes) and the
same prompt token ids, with the same number of threads.

Needs: pip install torch transformers safetensors
Prints one JSON object on stdout: the new token ids, prefill seconds, decode tokens/s, versions.
"""
import argparse
import json
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument("--ids", required=True, help="prompt token ids, comma-separated")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    import transformers
    from transformers import AutoModelForCausalLM

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    model.eval()
    ids = torch.tensor([[int(t) for t in a.ids.split(",")]])
    greedy = dict(do_sample=False, eos_token_id=None, pad_token_id=0, min_new_tokens=a.max_new_tokens)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, **{**greedy, "min_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=a.max_new_tokens, **greedy)
        total = time.perf_counter() - t0
    new = out[0, ids.shape[1]:].tolist()
    decode = max(total - prefill, 1e-9)
    print(f"peer: {len(new)} tokens in {total:.3f} s (prefill {prefill:.3f} s)", file=sys.stderr)
    print(json.dumps(dict(
        new_ids=new,
        prefill_seconds=prefill,
        total_seconds=total,
        decode_tokens_per_s=(len(new) - 1) / decode,
        threads=torch.get_num_threads(),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__),
    )))


if __name__ == "__main__":
    main()

"""The peer `cargo xtask bench --peer` measures lomo against: PyTorch + HF transformers + the LOMO
authors' package (lomo-optim), on the same HF checkpoint and the same batch, with gradient
checkpointing on, as the authors' trainer runs it (LOMO/src/lomo_trainer.py: one forward, then
`grad_norm(loss)` and `fused_backward(loss, lr)` when clipping by norm).

Needs: pip install torch transformers safetensors lomo-optim
Run by the bench; by hand:
    python torch_lomo.py --model DIR --batch batch.json --optimizer lomo --dtype f32 --steps 4 --threads 2
Prints one JSON object on stdout: per-step seconds and losses, CPU seconds, peak RSS, versions.
"""
import argparse
import json
import resource
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--batch", required=True, help="JSON with input_ids, attention_mask, labels ([rows][tokens])")
    p.add_argument("--optimizer", choices=["lomo", "adalomo"], default="lomo")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--steps", type=int, default=4, help="steps, the first of them a warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    # AdaLomo allocates its state with .cuda(); on a CPU-only machine keep it on the CPU.
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kw: self
    import transformers
    from transformers import AutoModelForCausalLM
    from lomo_optim import AdaLomo, Lomo

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    if not a.no_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    with open(a.batch) as f:
        batch = {k: torch.tensor(v) for k, v in json.load(f).items()}

    if a.optimizer == "lomo":
        opt = Lomo(model, lr=a.lr, clip_grad_norm=a.clip_grad_norm, weight_decay=a.weight_decay)
    else:
        opt = AdaLomo(model, lr=a.lr, clip_grad_norm=a.clip_grad_norm, weight_decay=a.weight_decay)

    steps = []
    for _ in range(a.steps):
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        if a.clip_grad_norm is not None:
            opt.grad_norm(loss)
        opt.fused_backward(loss, a.lr)
        seconds = time.perf_counter() - t0
        steps.append(dict(seconds=seconds, cpu_seconds=time.process_time() - cpu0, loss=float(loss)))
        print(f"peer step {len(steps)}: {seconds:.3f} s, loss {float(loss):.6f}", file=sys.stderr)

    out = dict(
        steps=steps,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
        checkpointing=not a.no_checkpointing,
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, lomo_optim=_version("lomo-optim")),
    )
    print(json.dumps(out))


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    main()

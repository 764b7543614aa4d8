"""The peers `cargo xtask bench --peer` measures lomo against, on the same HF checkpoint and the
same batch, with gradient checkpointing on:

- `--optimizer lomo|adalomo`: PyTorch + HF transformers + the LOMO authors' package (lomo-optim),
  as the authors' trainer runs it (LOMO/src/lomo_trainer.py: one forward, then `grad_norm(loss)`
  and `fused_backward(loss, lr)` when clipping by norm).
- `--optimizer hooks`: PyTorch's own fused-in-backward, as torchtune's `optimizer_in_bwd` does
  it: a `register_post_accumulate_grad_hook` on every parameter applies plain SGD
  (`p.add_(p.grad, alpha=-lr)`, LOMO's update without clipping or weight decay) and frees the
  gradient (`p.grad = None`) as soon as it is accumulated. A parameter used twice under
  checkpointing (a tied embedding) would be updated once per accumulation; the bench's models
  are untied.

Needs: pip install torch transformers safetensors (and lomo-optim for lomo/adalomo)
Run by the bench; by hand:
    python torch_lomo.py --model DIR --batch batch.json --optimizer lomo --dtype f32 --steps 4 --threads 2
    python torch_lomo.py --model DIR --batch batch.json --optimizer hooks --dtype bf16 --device cuda
Prints one JSON object on stdout: per-step seconds and losses, CPU seconds, peak RSS, on CUDA
torch's peak allocated and reserved device memory, versions.
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
    p.add_argument("--optimizer", choices=["lomo", "adalomo", "hooks"], default="lomo")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=4, help="steps, the first of them a warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    a = p.parse_args()
    if a.optimizer == "hooks" and (a.clip_grad_norm is not None or a.weight_decay):
        p.error("--optimizer hooks is plain SGD: no --clip-grad-norm or --weight-decay")

    import torch

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {a.device}: torch {torch.__version__} sees no CUDA device")
    # AdaLomo allocates its state with .cuda(); on the CPU keep it there.
    if not cuda:
        torch.Tensor.cuda = lambda self, *args, **kw: self
    import transformers
    from transformers import AutoModelForCausalLM

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(device)
    if not a.no_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    with open(a.batch) as f:
        batch = {k: torch.tensor(v, device=device) for k, v in json.load(f).items()}

    step = make_step(a, model)
    wait = torch.cuda.synchronize if cuda else (lambda: None)
    steps = []
    for _ in range(a.steps):
        wait()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        loss = step(batch)
        wait()
        seconds = time.perf_counter() - t0
        steps.append(dict(seconds=seconds, cpu_seconds=time.process_time() - cpu0, loss=loss))
        print(f"peer step {len(steps)}: {seconds:.3f} s, loss {loss:.6f}", file=sys.stderr)

    out = dict(
        steps=steps,
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
        checkpointing=not a.no_checkpointing,
        optimizer=a.optimizer,
        device=str(device),
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__, lomo_optim=_version("lomo-optim")),
    )
    if cuda:
        out.update(
            device_name=torch.cuda.get_device_name(device),
            max_memory_allocated=torch.cuda.max_memory_allocated(device),
            max_memory_reserved=torch.cuda.max_memory_reserved(device),
        )
    print(json.dumps(out))


def make_step(a, model):
    """One training step on a batch, returning the loss before the update as a float."""
    if a.optimizer == "hooks":
        import torch

        lr = a.lr

        @torch.no_grad()
        def update(param):
            param.add_(param.grad, alpha=-lr)
            param.grad = None

        for param in model.parameters():
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(update)

        def step(batch):
            loss = model(**batch).loss
            loss.backward()
            return loss.detach().item()

        return step

    from lomo_optim import AdaLomo, Lomo

    cls = Lomo if a.optimizer == "lomo" else AdaLomo
    opt = cls(model, lr=a.lr, clip_grad_norm=a.clip_grad_norm, weight_decay=a.weight_decay)

    def step(batch):
        loss = model(**batch).loss
        if a.clip_grad_norm is not None:
            opt.grad_norm(loss)
        opt.fused_backward(loss, a.lr)
        return loss.detach().item()

    return step


def _version(dist):
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:
        return None


if __name__ == "__main__":
    main()

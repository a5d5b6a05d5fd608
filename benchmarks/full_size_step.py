"""The seed recipes at their real input size: two optimizer steps of each on the CPU, with peak memory and
seconds per step, so a GPU user's first run cannot fail on a shape or position-embedding path.

    .venv/bin/python benchmarks/full_size_step.py [--configs eva02_base convnext_base] [--batch 2] [--steps 2]
                                                  [--set key=value ...]

Each config runs in a process of its own (its peak resident memory is its own): the model as the config
builds it (random weights: model.pretrained=false), at the input size timm resolves for it (448 px for EVA-02
Base, 384 for ConvNeXt Base), the config's optimizer, loss and AMP, through the training loop's own
`train_one_epoch` (batches of random images in channels_last, as the loader delivers them), then one
validation-sized forward pass. `--set key=value ...` applies to every config, with the recipes the fold loop
applies in the loop itself (train.ema_decay, augment.mixup/cutmix, train.clip_grad, the optimizer's layer decay;
train.finetune_size adds a step and a forward pass at that size through the resampled position embeddings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(config: str, batch: int, steps: int, overrides: list[str]) -> dict:
    import torch

    from foldvision.config import load_config
    from foldvision.learn.engine import build_model_for, predict, runtime_kwargs, train_one_epoch
    from foldvision.learn.losses import create_loss
    from foldvision.learn.optim import create_optimizer, create_scheduler
    from foldvision.learn.recipes import WeightEma, create_mix

    cfg = load_config(config, ["model.pretrained=false", "model.pretrained_file=null", "train.device=cpu",
                               f"train.batch_size={batch}", *overrides], ROOT / "configs")
    classes = 5
    # train.finetune_size: one set of weights at both sizes, as the fold loop builds it (ViTs resample their
    # position embeddings per input)
    model_cfg = dataclasses.replace(cfg.model, dynamic_img_size=True) if cfg.train.finetune_size else cfg.model
    setup = build_model_for(model_cfg, classes, cfg.data.channels, **runtime_kwargs(cfg.train))
    size = setup.preprocessing.size
    optimizer = create_optimizer(setup.model, cfg.train, steps)
    scheduler = create_scheduler(optimizer, cfg.train, steps)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, cfg.data.channels, size, size, generator=generator)
                .contiguous(memory_format=torch.channels_last), torch.arange(batch) % classes) for _ in range(steps)]
    before = {k: v.detach().clone() for k, v in setup.model.state_dict().items() if v.is_floating_point()}
    timed = []

    class Timed(list):  # the loop's loader: records when each batch is asked for
        def __iter__(self):
            for item in super().__iter__():
                timed.append(time.perf_counter())
                yield item

    start = time.perf_counter()
    # the recipes as the fold loop passes them: EMA after each step, Mixup/CutMix as loss mixing, clipping
    ema = WeightEma(setup.model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay else None
    stats = train_one_epoch(setup.net, Timed(batches), create_loss(cfg.loss), optimizer, scheduler, setup.amp,
                            setup.device, mix=create_mix(cfg.augment, classes), clip_grad=cfg.train.clip_grad,
                            ema=ema)
    end = time.perf_counter()
    changed = sum(not torch.equal(before[k], v) for k, v in setup.model.state_dict().items() if k in before)
    probs = predict(ema.module if ema else setup.net, [(batches[0][0], None)], setup.amp, setup.device)
    step_seconds = [b - a for a, b in zip([start, *timed[1:]], [*timed[1:], end])]
    finetune = None
    if cfg.train.finetune_size:  # one more step and a forward pass at the larger size
        big = cfg.train.finetune_size
        images = torch.randn(batch, cfg.data.channels, big, big, generator=generator).contiguous(
            memory_format=torch.channels_last)
        start = time.perf_counter()
        train_one_epoch(setup.net, [(images, torch.arange(batch) % classes)], create_loss(cfg.loss), optimizer,
                        None, setup.amp, setup.device, ema=ema)
        predict(ema.module if ema else setup.net, [(images, None)], setup.amp, setup.device)
        finetune = {"size": big, "seconds": time.perf_counter() - start}
    return {"finetune": finetune, "config": config, "model": cfg.model.name, "input": f"{size}x{size}", "batch": batch, "steps": steps,
            "amp": setup.amp.mode, "params_M": sum(p.numel() for p in setup.model.parameters()) / 1e6,
            "seconds_per_step": step_seconds, "train_loss": stats["train_loss"],
            "tensors_changed": f"{changed}/{len(before)}", "probs_shape": list(probs.shape),
            "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["eva02_base", "convnext_base"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one config, JSON out
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="key=value for every config")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.batch, args.steps, args.overrides)))
        return
    for config in args.configs:
        done = subprocess.run([sys.executable, __file__, "--one", config, "--batch", str(args.batch), "--steps",
                               str(args.steps), "--set", *args.overrides], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(f"{config}: FAILED\n{done.stderr[-3000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        steps = ", ".join(f"{s:.1f}" for s in r["seconds_per_step"])
        print(f"{r['config']}: {r['model']} at {r['input']}, batch {r['batch']}, amp {r['amp']}, "
              f"{r['params_M']:.1f}M parameters: {r['steps']} steps of {steps} s, train loss {r['train_loss']:.3f}, "
              f"{r['tensors_changed']} weight tensors changed, validation probs {r['probs_shape']}, "
              f"peak memory {r['peak_rss_GiB']:.2f} GiB"
              + (f"; then a step and a forward pass at {r['finetune']['size']} px in {r['finetune']['seconds']:.1f} s"
                 if r["finetune"] else ""))


if __name__ == "__main__":
    main()

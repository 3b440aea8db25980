"""Training-step cost of SoftCPT over T tasks against T per-task CoOp steps, measured in one run (CPU).

Image features are cached in both (the image tower is frozen), so a step is text encoding, the logits,
the loss and the backward pass. For T tasks of C classes each and one batch of 32 cached image features
that mixes the tasks, three variants are timed on a ViT-B-16-sized text tower (width 512, 12 layers,
random; ``benchmarks/common.py``):

- ``softcpt``: one vlprompt SoftCPT (NATA) step: the T task prompts and all T·C class prompts in one batch
  each, truncated at their longest end-of-text token, the task-masked loss;
- ``per_task_coop``: T vlprompt CoOp steps, task by task, each on its task's samples and C classes (the
  same images and class tokens), the baseline a user would otherwise run;
- ``softcpt_reference``: SoftCPT as kding1225/softcpt computes it: every task's class prompts encoded
  separately over all 77 positions (its ``compute_text_features_full``), the same loss.

The two SoftCPT variants give the same loss (checked to 1e-4 relative). Timings are interleaved and
repeated (medians and per-round ratios), for T in (2, 4, 8) to show how the cost grows with T.
Results: ``benchmarks/results/softcpt_step.json``. Run: ``python benchmarks/softcpt_step.py``
(``--smoke``: tiny text tower, T = 2, one round, seconds; see ``benchmarks/common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import machine_record, paired_ratios, parse_args, run_rounds, text_tower_backbone, text_tower_record

from vlprompt.backbones import Backbone
from vlprompt.labels import Task, TaskSpace
from vlprompt.methods import Batch, CoOp, CoOpConfig, SoftCPT, SoftCPTConfig
from vlprompt.methods.multitask import task_cross_entropy

WORDS = ["red", "green", "blue", "small", "large", "striped", "wooden", "metal", "glass", "old", "bird", "fish",
         "cat", "dog", "horse", "flower", "tree", "car", "boat", "house"]  # fmt: skip
CLASSES_PER_TASK = 10
BATCH = 32


def task_space(n_tasks: int) -> TaskSpace:
    """T tasks of ten two-word classes each, with two-word task names."""
    tasks = []
    for t in range(n_tasks):
        names = [f"{WORDS[(t + i) % len(WORDS)]} {WORDS[(3 * t + 7 * i + 1) % len(WORDS)]}" for i in range(10)]
        tasks.append(Task(f"{WORDS[t % len(WORDS)]} {WORDS[(t + 5) % len(WORDS)]} things", tuple(names)))
    return TaskSpace(tuple(tasks))


def reference_text_features(method: SoftCPT, bb: Backbone) -> torch.Tensor:
    """The reference's loop: each task's class prompts through the text tower over all 77 positions."""
    contexts = method.generate_context(method.task_features(bb))
    model, out = bb.model, []
    for t, task in enumerate(method.labels.tasks):
        ids = bb.tokenize([f"{' '.join(['X'] * method.n_ctx)} {name}." for name in task.classes])
        embeds = bb.token_embedding(ids)
        embeds = torch.cat([embeds[:, :1], contexts[t].expand(len(ids), -1, -1), embeds[:, 1 + method.n_ctx :]], 1)
        x = embeds + model.positional_embedding
        for block in model.transformer.resblocks:
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        out.append(x[torch.arange(len(ids)), ids.argmax(-1)] @ model.text_projection)
    return torch.cat(out)


def variants_for(bb: Backbone, n_tasks: int) -> dict:
    """The three step functions for T = ``n_tasks``, each returning its loss."""
    labels = task_space(n_tasks)
    torch.manual_seed(0)
    softcpt = SoftCPT(bb, labels, SoftCPTConfig(n_ctx=16))
    coops = [CoOp(bb, t.classes, CoOpConfig(n_ctx=16)) for t in labels.tasks]
    generator = torch.Generator().manual_seed(n_tasks)
    features = torch.randn(BATCH, bb.embed_dim, generator=generator)
    tasks = torch.arange(BATCH) % n_tasks
    targets = torch.randint(0, CLASSES_PER_TASK, (BATCH,), generator=generator)
    batch = Batch(features=features, targets=targets, task=tasks)

    def softcpt_step():
        loss = softcpt.loss(bb, batch, softcpt.logits(bb, batch))
        loss.backward()
        return loss.item()

    def reference_step():
        text = F.normalize(reference_text_features(softcpt, bb), dim=-1)
        logits = bb.logit_scale * F.normalize(features, dim=-1) @ text.t()
        loss = task_cross_entropy(logits, targets, tasks, labels.blocks())
        loss.backward()
        return loss.item()

    def per_task_step():
        total = 0.0
        for t, coop in enumerate(coops):
            rows = (tasks == t).nonzero().flatten()
            part = Batch(features=features[rows], targets=targets[rows])
            loss = coop.loss(bb, part, coop.logits(bb, part))
            loss.backward()
            total += loss.item()
        return total

    return {"softcpt": softcpt_step, "per_task_coop": per_task_step, "softcpt_reference": reference_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; rounds stop early to stay within it")
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="torch threads")
    args = parse_args(parser, "softcpt_step", smoke={"tasks": [2], "rounds": 1})
    torch.set_num_threads(args.threads)
    load = list(os.getloadavg())
    start = time.time()
    bb = text_tower_backbone(tiny=args.smoke)
    results = {}
    for i, n_tasks in enumerate(args.tasks):
        print(f"T = {n_tasks} tasks of {CLASSES_PER_TASK} classes, batch {BATCH}", flush=True)
        deadline = start + args.budget * (i + 1) / len(args.tasks)
        times, outputs = run_rounds(variants_for(bb, n_tasks), args.rounds, deadline)
        same = abs(outputs["softcpt"] - outputs["softcpt_reference"]) <= 1e-4 * abs(outputs["softcpt_reference"])
        results[str(n_tasks)] = {
            "classes": n_tasks * CLASSES_PER_TASK,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "softcpt_vs_per_task_coop": paired_ratios(times, "softcpt", "per_task_coop"),
            "reference_vs_softcpt": paired_ratios(times, "softcpt_reference", "softcpt"),
            "same_loss_as_reference": same,
            "rounds": len(times["softcpt"]),
        }
        print(json.dumps(results[str(n_tasks)], indent=1), flush=True)
    record = {"benchmark": "softcpt_step", "batch": BATCH, "classes_per_task": CLASSES_PER_TASK, "results": results}
    record |= {"text_tower": text_tower_record(bb), "total_seconds": round(time.time() - start, 1)}
    record |= machine_record(load, smoke=args.smoke)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} ({record['total_seconds']} s)")


if __name__ == "__main__":
    main()

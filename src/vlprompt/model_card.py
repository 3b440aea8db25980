"""The model card (README.md) of a prompt pushed to the Hub, from its prompt.json and, when the prompt sits in a
run directory (``RUN/seedN/prompt``), the run's ``config.yaml`` (dataset, shots, recipe) and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RunDirError

#: The recipe fields a card lists (the whole resolved recipe is in the run's config.yaml).
RECIPE_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "schedule", "warmup_epochs", "precision", "augment")


def run_context(prompt_dir: Path) -> tuple[dict[str, Any], Any]:
    """(the run's config.yaml, the seed's results.json) around ``prompt_dir``; empty where there are none."""
    from .schema import read_json_file, read_yaml_file

    seed_dir, run_dir = prompt_dir.parent, prompt_dir.parent.parent
    config = read_yaml_file(run_dir / "config.yaml", RunDirError) if (run_dir / "config.yaml").is_file() else {}
    results = read_json_file(seed_dir / "results.json", "results.json", RunDirError) if (
        seed_dir / "results.json"
    ).is_file() else None  # fmt: skip
    return (config if isinstance(config, dict) else {}), results


def model_card(prompt_dir: str | Path, repo_id: str) -> Any:
    """A ``huggingface_hub.ModelCard``: method, backbone identity, dataset, shots, recipe, results, how to load."""
    from huggingface_hub import ModelCard, ModelCardData

    from .bank import is_bank, read_bank
    from .prompts import read_prompt_config

    folder = Path(prompt_dir)
    bank = read_bank(folder) if is_bank(folder) else None
    prompt = read_prompt_config(folder / bank["prompts"][0]["path"] if bank else folder)
    config, results = run_context(folder)
    backbone = prompt["backbone"]
    data: dict[str, Any] = config["data"] if isinstance(config.get("data"), dict) else {}
    dataset = data.get("dataset") or data.get("collection") or data.get("split_file") or data.get("root")
    card_data = ModelCardData(library_name="vlprompt", tags=["vlprompt", "prompt-learning", "clip", prompt["method"]])
    title = f"{'prompt bank' if bank else prompt['method']} on {backbone['model']}"
    lines = [f"# {repo_id}: {title}", "", "A vlprompt prompt: only its trainable tensors (safetensors) and its "
             "config (JSON); the frozen backbone is loaded from its own source.", "", "| | |", "|---|---|"]  # fmt: skip
    rows = {
        "method": f"`{prompt['method']}`",
        "method options": f"`{json.dumps(prompt['config'])}`",
        "backbone": f"`{backbone['model']}` ({backbone.get('pretrained')})",
        "backbone identity": f"`{json.dumps(backbone)}`",
        "labels": _labels(prompt),
        "tasks": ", ".join(e["name"] for e in bank["prompts"]) if bank else None,
        "dataset": f"`{dataset}`" if dataset else None,
        "shots": data.get("shots"),
        "seed": (prompt.get("extra") or {}).get("seed"),
        "recipe": _recipe(config),
        "vlprompt version": prompt.get("library_version"),
    }
    lines += [f"| {k} | {v} |" for k, v in rows.items() if v not in (None, "")]
    lines += _results(results)
    lines += _how_to_load(repo_id, bank)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _labels(prompt: dict[str, Any]) -> str:
    labels = prompt.get("labels") or prompt.get("classes")
    labels = {"kind": "classes", "names": labels} if isinstance(labels, list) else labels
    if not isinstance(labels, dict):
        return ""
    pairs, tasks = labels.get("pairs") or [], labels.get("tasks") or []
    names = labels.get("names") or [" ".join(map(str, p)) for p in pairs] or [t.get("name") for t in tasks]
    shown = ", ".join(str(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    return f"{labels.get('kind')}: {len(names)} ({shown})" if names else str(labels.get("kind"))


def _recipe(config: dict[str, Any]) -> str | None:
    train = config.get("train") if isinstance(config.get("train"), dict) else None
    if not train:
        return None
    from .methods import METHODS

    name = config.get("preset")
    cls = METHODS.get(str(config.get("method")))
    if not name and cls is not None:  # the run's default: the method's own recipe
        name = cls.default_preset(config.get("method_options") or {})
    fields = ", ".join(f"{k} {train[k]}" for k in RECIPE_FIELDS if k in train)
    recipe = f"preset `{name}`" if name else "TrainConfig's defaults"
    return f"{recipe}: {fields} (the run's config.yaml has every field)"


def _results(results: Any) -> list[str]:
    rows = [results] if isinstance(results, dict) else [r for r in results or [] if isinstance(r, dict)]
    if not rows:
        return []
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "prompt"))
    lines = ["", "## Results (this seed, on the run's test split)", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]  # fmt: skip
    return lines + ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _how_to_load(repo_id: str, bank: dict[str, Any] | None) -> list[str]:
    name = f"hf-hub:{repo_id}"
    task = f", task={bank['prompts'][0]['name']!r}" if bank else ""
    flag = f" --task {bank['prompts'][0]['name']}" if bank else ""
    return ["", "## How to load it", "", "```python", "from vlprompt import Predictor", "",
            f'predictor = Predictor.from_pretrained("{name}"{task})  # the backbone it was trained on',
            'predictor.predict(["image.jpg"], topk=3)', "```", "", "```bash",
            f"vlprompt predict image.jpg --prompt {name}{flag}", "```",
            "", "Files are fetched through the Hugging Face cache (`HF_HUB_OFFLINE=1` reads only the cache); "
            "prompt.safetensors is checked against the checksum in prompt.json on load."]  # fmt: skip

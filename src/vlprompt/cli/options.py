"""The small commands' typed configs (the run commands' are ``vlprompt.runs``'), and the command table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.sampling import CLASS_SPLITS
from ..errors import OptionError
from ..hub import is_hub_name, parse_hub_name
from ..incontext.canvas import CanvasStyle
from ..labels import ClassNames, PairSpace, TaskSpace
from ..methods import methods_for
from ..runs import (
    BackboneConfig,
    ClassificationRun,
    CZSLRun,
    DataConfig,
    MultiTaskRun,
)
from ..runs.bench import BenchRun
from ..runs.config import check_seeds


@dataclass
class EvalCommand:
    """Evaluate a saved prompt on a dataset split.

    Attributes:
        prompt: the prompt directory, or a Hub name ``hf-hub:org/name[@revision]``.
        backbone: the frozen model (default: the one the prompt was trained on).
        data: the dataset.
        split: the split to evaluate ("train", "val" or "test").
        class_split: "all", "base" or "new" (the halves of base-to-new).
        task: the task to evaluate, of a prompt bank or a multi-task prompt.
        tpt: evaluate with test-time prompt tuning around the prompt (it needs a text context, e.g. CoOp's).
        tpt_options: TPT's options with ``tpt``, e.g. '{views: 64, select: 0.1, calibration_weight: 50}'.
    """

    prompt: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: str = "test"
    class_split: str = "all"
    task: str | None = None
    tpt: bool = False
    tpt_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        _require_prompt(self.prompt)
        if self.class_split not in CLASS_SPLITS:
            raise OptionError(f"--class_split must be 'all', 'base' or 'new', not {self.class_split!r}")
        if self.tpt_options and not self.tpt:
            raise OptionError("--tpt_options needs --tpt true")
        if self.tpt:
            self.tpt_config()
        if self.task is None and not is_hub_name(self.prompt):
            _require_class_prompt(self.prompt)
        self.backbone.validate()
        self.data.validate()

    def tpt_config(self) -> Any:
        """TPT's config around the saved prompt (read from its prompt.json: checked before any work)."""
        from ..methods import TPT
        from ..prompts import read_prompt_config

        if self.task is not None:
            raise OptionError("--tpt wraps one prompt: it does not take --task")
        unknown = sorted(set(self.tpt_options) & {"method", "options"})
        if unknown:
            raise OptionError(f"--tpt_options {unknown}: TPT wraps the prompt itself, with its method and options")
        saved = read_prompt_config(self.prompt)
        options = {**self.tpt_options, "method": saved["method"], "options": saved["config"]}
        return TPT.Config.from_dict(options, TPT.name, "--tpt_options")


@dataclass
class PredictCommand:
    """Classify images with a saved prompt, or zero-shot from class names.

    Attributes:
        prompt: a prompt directory (or Hub name ``hf-hub:org/name[@revision]``), or a prompt bank / multi-task
            prompt with ``task``.
        task: the task(s) to predict, comma-separated (a prompt bank or a multi-task prompt): each image is
            encoded once for all of them.
        classes: zero-shot instead: comma-separated class names.
        template: the zero-shot template, with {} for the class name.
        backbone: the frozen model (default: the prompt's, or the bundled one for zero-shot).
        topk: how many of the best classes to print per image.
        json: print JSON with every class probability instead.
        batch_size: images per forward pass.
    """

    prompt: str | None = None
    task: str | None = None
    classes: str | None = None
    template: str = "a photo of a {}."
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    topk: int = 5
    json: bool = False
    batch_size: int = 64

    def validate(self) -> None:
        if (self.prompt is None) == (self.classes is None):
            raise OptionError("give either --prompt DIR or --classes (zero-shot), not both")
        if self.topk < 1:
            raise OptionError(f"--topk must be >= 1, not {self.topk}")
        if self.batch_size < 1:
            raise OptionError(f"--batch_size must be >= 1, not {self.batch_size}")
        if self.classes is not None and not self.class_names():
            raise OptionError("--classes needs at least one class name")
        if self.task is not None and (self.prompt is None or not self.tasks()):
            raise OptionError("--task names task(s) of --prompt (a prompt bank or multi-task prompt), e.g. --task a")
        if self.prompt is not None:
            _require_prompt(self.prompt)
        self.backbone.validate()

    def class_names(self) -> list[str]:
        return [c.strip() for c in (self.classes or "").split(",") if c.strip()]

    def tasks(self) -> list[str]:
        return [t.strip() for t in (self.task or "").split(",") if t.strip()]


@dataclass
class InterpretCommand:
    """Nearest vocabulary words of each learned context vector.

    Attributes:
        prompt: the prompt directory.
        backbone: the frozen model (default: the one the prompt was trained on).
        k: neighbours per vector.
    """

    prompt: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    k: int = 3

    def validate(self) -> None:
        _require_prompt(self.prompt)
        if self.k < 1:
            raise OptionError(f"--k must be >= 1, not {self.k}")
        self.backbone.validate()


@dataclass
class DemoData:
    """The built-in benchmark's few-shot table.

    Attributes:
        shots: K images per class for the few-shot table.
        view: the few-shot view of the benchmark: colours (default), shapes or pairs.
    """

    shots: int = 16
    view: str | None = None


@dataclass
class DemoCommand:
    """Every method on the built-in benchmark with the bundled tiny CLIP (offline).

    Attributes:
        out: the demo's run directory.
        seeds: one run per seed.
        methods: the demo rows to run (default: one row per method family; [all]: every row).
        data: the few-shot table's shots and view.
        overwrite: replace an existing demo run in ``out``.
    """

    out: str = "runs/demo"
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    methods: list[str] | None = None
    data: DemoData = field(default_factory=DemoData)
    overwrite: bool = False

    def validate(self) -> None:
        if self.data.shots < 0:
            raise OptionError(f"--data.shots must be >= 0 (0: all images), not {self.data.shots}")
        check_seeds(self.seeds)


@dataclass
class BankCommand:
    """Gather separately trained prompts into one prompt bank (one backbone, named prompts).

    Attributes:
        prompts: task name -> prompt directory (or ``hf-hub:org/name``), e.g. '{colour: runs/a/seed1/prompt,
            shape: hf-hub:org/shape-coop}'.
        out: the bank directory to write.
        backbone: the frozen model (default: the one the prompts were trained on).
    """

    prompts: dict[str, str] = field(default_factory=dict)
    out: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def validate(self) -> None:
        if not self.prompts:
            raise OptionError("--prompts is empty: give task names and prompt directories, e.g. '{colour: DIR}'")
        for prompt in self.prompts.values():
            _require_prompt(prompt)
        if not self.out:
            raise OptionError("--out is required: the bank directory to write")
        self.backbone.validate()  # the command checks --out with the run-directory guard before any work


@dataclass
class DatasetsRoot:
    """Attributes:
    root: the datasets root (CoOp's $DATA layout, see docs/datasets.md).
    """

    root: str = ""


@dataclass
class DataCommand:
    """Check benchmark datasets under a root: what is missing and where to get it (nothing is downloaded).

    Attributes:
        data: the datasets root.
    """

    data: DatasetsRoot = field(default_factory=DatasetsRoot)

    def validate(self) -> None:
        if not self.data.root:
            raise OptionError("--data.root is required: the folder that holds the dataset folders (CoOp's $DATA)")


@dataclass
class IncontextCommand:
    """In-context visual prompting: example pairs and queries on 2x2 canvases, the answer filled by an inpainter.

    Attributes:
        examples: example input images.
        outputs: their outputs, one per example: a black/white mask (segmentation), a mask whose white
            pixels' bounding box is the box (detection), an image (colourisation, image).
        queries: the query images.
        task: segmentation, detection, colourisation or image (any image-to-image task).
        model: the inpainter: vlprompt/tiny-canvas (bundled), a folder saved by vlprompt, or the authors'
            MAE-VQGAN checkpoint (.pth).
        arch: the MAE architecture of a .pth checkpoint (mae_vit_large_patch16, ...).
        targets: optional true outputs of the queries, to score the answers.
        canvas: how cells are resized and the canvas coloured; ``--canvas.resize pil`` builds the canvases as
            the reference does (8-bit cells resized by PIL with ``--canvas.resample``, default bicubic).
        out: folder for the filled canvases (canvas_<i>.png) and answers (answer_<i>.png).
        overwrite: replace an earlier incontext run in ``out``.
        json: print the answers' numbers as JSON.
    """

    examples: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    task: str = "segmentation"
    model: str = "vlprompt/tiny-canvas"
    arch: str = "mae_vit_large_patch16"
    targets: list[str] | None = None
    canvas: CanvasStyle = field(default_factory=CanvasStyle)
    out: str = "runs/incontext"
    overwrite: bool = False
    json: bool = False

    def validate(self) -> None:
        from ..incontext import TASKS

        if self.task not in TASKS:
            raise OptionError(f"--task must be one of {sorted(TASKS)}, not {self.task!r}")
        if not self.examples or not self.queries:
            raise OptionError("give --examples [a.png,...], --outputs [a_mask.png,...] and --queries [q.png,...]")


@dataclass
class MethodsCommand:
    """Every registered method: the command that trains it, its capabilities and its recipes.

    Attributes:
        json: print JSON (one object per method) instead of a table.
    """

    json: bool = False


def _require_class_prompt(prompt: str) -> None:
    """``eval`` scores a dataset's classes: a prompt that scores pairs, or several tasks, is refused up front."""
    from ..methods import METHODS
    from ..prompts import read_prompt_config

    method = read_prompt_config(prompt)["method"]
    kind = getattr(METHODS.get(method.lower()), "label_kind", ClassNames)
    if kind is PairSpace:
        raise OptionError(
            f"--prompt {prompt} was trained by {method}, which scores (attribute, object) pairs, not a dataset's "
            "classes: `vlprompt predict` scores its pairs, and `vlprompt czsl` evaluates pair methods"
        )
    if kind is TaskSpace:
        raise OptionError(f"--prompt {prompt} was trained by {method} on several tasks: name one with --task")


def _require_prompt(prompt: str) -> None:
    """A prompt is given, and a Hub name is well formed (checked before any work)."""
    if not prompt:
        raise OptionError("--prompt is required: a prompt directory (e.g. RUN/seed1/prompt) or hf-hub:org/name")
    if is_hub_name(prompt):
        parse_hub_name(prompt)


@dataclass
class PushCommand:
    """Upload a prompt folder (or bank) to the Hugging Face Hub with a generated model card (README.md).

    ``vlprompt push RUN/seed1/prompt org/name``: the prompt's JSON and safetensors files (checked against their
    checksums first) and a card with the method, backbone, dataset, shots, recipe and results of its run, and
    how to load it (``--prompt hf-hub:org/name``). Credentials are huggingface_hub's (``HF_TOKEN`` or
    ``hf auth login``).

    Attributes:
        revision: the branch to push to (created when missing; default: main).
        private: create the repository as private (when it does not exist yet).
        commit_message: the commit's message (default: "Upload vlprompt prompt (FOLDER)").
    """

    revision: str | None = None
    private: bool = False
    commit_message: str | None = None


#: subcommand -> (config dataclass, help)
COMMAND_CONFIGS: dict[str, tuple[type, str]] = {
    "train": (ClassificationRun, "train prompts over seeds (few-shot, base-to-new)"),
    "czsl": (CZSLRun, "compositional zero-shot: train on seen pairs, test in the closed / open world"),
    "multitask": (MultiTaskRun, "several few-shot tasks at once (SoftCPT), or a method once per task"),
    "eval": (EvalCommand, "evaluate a saved prompt"),
    "predict": (PredictCommand, "predict the classes of images"),
    "interpret": (InterpretCommand, "interpret learned context vectors"),
    "bank": (BankCommand, "gather trained prompts into a prompt bank"),
    "push": (PushCommand, "upload a prompt to the Hugging Face Hub with a model card"),
    "demo": (DemoCommand, "run the built-in demo"),
    "bench": (BenchRun, "run a protocol over datasets, methods, shots and seeds (paper-style tables)"),
    "data": (DataCommand, "check benchmark datasets: `vlprompt data check NAME|all --data.root DIR`"),
    "incontext": (IncontextCommand, "in-context visual prompting by inpainting (no training)"),
    "methods": (
        MethodsCommand,
        "list the methods: command, capabilities, recipes (`vlprompt train --method X --help`)",
    ),
}
METHOD_HELP = {
    "train": f"the method: {', '.join(methods_for(ClassNames))}",
    "czsl": f"the method: {', '.join(methods_for(PairSpace))}",
    "multitask": f"the method: {', '.join(methods_for(TaskSpace))}, or a single-task method run once per task "
    f"({', '.join(methods_for(ClassNames))})",
}

"""Prompts on the Hugging Face Hub, in peft's manner: load ``hf-hub:org/name[@revision]``, push a prompt folder.

Loading goes through huggingface_hub's ``snapshot_download`` and its cache (with ``HF_HUB_OFFLINE=1``, from the
cache only). Only ``*.json`` and ``*.safetensors`` files are fetched, and of them vlprompt reads only
``prompt.json`` / ``bank.json`` and ``prompt.safetensors``, whose checksum is verified on load as for a local folder.

>>> Predictor.from_pretrained("hf-hub:org/name")                   # doctest: +SKIP
>>> push_to_hub("runs/pets-coop/seed1/prompt", "org/pets-coop")      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .errors import PromptFileError

HUB_PREFIX = "hf-hub:"
#: The files of a Hub prompt that are downloaded and uploaded (a prompt, or a bank of prompt folders).
PROMPT_PATTERNS = ["*.json", "*.safetensors"]
CARD_FILE = "README.md"


class HubError(PromptFileError):
    """A Hub prompt name is malformed, or its prompt cannot be fetched (absent from the cache when offline)."""


def is_hub_name(source: object) -> bool:
    """Whether ``source`` names a Hub prompt (``hf-hub:org/name``) rather than a local folder."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def parse_hub_name(source: str) -> tuple[str, str | None]:
    """``hf-hub:org/name[@revision]`` -> (``org/name``, revision or None); a malformed name is a one-line error."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = source.removeprefix(HUB_PREFIX)
    repo_id, at, revision = name.partition("@")
    form = "expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION"
    if repo_id.count("/") != 1 or (at and not revision):
        raise HubError(f"{source!r} is not a Hub prompt name: {form}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).splitlines()[0]
        raise HubError(f"{source!r} is not a Hub prompt name ({reason}): {form}") from None
    return repo_id, revision or None


def local_prompt_dir(source: str | Path) -> Path:
    """The local folder of a prompt (or bank): ``source`` itself, or a Hub prompt's snapshot in the HF cache."""
    if not is_hub_name(source):
        return Path(source)
    from huggingface_hub import constants

    repo_id, revision = parse_hub_name(str(source))
    return Path(_snapshot(repo_id, revision, str(constants.HF_HUB_CACHE), constants.HF_HUB_OFFLINE))


@functools.lru_cache(maxsize=32)
def _snapshot(repo_id: str, revision: str | None, cache_dir: str, offline: bool) -> str:
    """Download (or find in the cache) a Hub prompt's JSON and safetensors files; once per process."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .bank import BANK_FILE
    from .prompts import CONFIG_FILE

    name = HUB_PREFIX + repo_id + (f"@{revision}" if revision else "")
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=PROMPT_PATTERNS,
                library_name="vlprompt",
                library_version=__version__,
            )
        )
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise HubError(
            f"{name} is not in the Hugging Face cache ({cache_dir}) and {why}: fetch it first with "
            f"`{fetch} --include '*.json' '*.safetensors'` where there is network (into this cache)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{name}: the Hub repository {repo_id} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{name}: no model repository {repo_id} on the Hub (private? `hf auth login`)") from None
    except HfHubHTTPError as err:
        raise HubError(f"{name}: the Hub answered {str(err).splitlines()[0]}") from None
    if not any((folder / marker).is_file() for marker in (CONFIG_FILE, BANK_FILE)):
        raise HubError(f"{name} holds no {CONFIG_FILE} or {BANK_FILE}: it is not a vlprompt prompt")
    return str(folder)


def check_pushable(folder: Path) -> list[Path]:
    """The prompt folder's files to upload (``*.json``, ``*.safetensors``), after loading its config(s) and
    verifying every tensor file against its checksum: a corrupt or foreign folder is refused before any upload."""
    from .bank import is_bank, read_bank
    from .prompts import TENSORS_FILE, check_tensors, load_tensors, read_prompt_config

    if not folder.is_dir():
        raise PromptFileError(f"{folder} is not a folder: push takes a prompt directory (e.g. RUN/seed1/prompt)")
    prompts = [folder / e["path"] for e in read_bank(folder)["prompts"]] if is_bank(folder) else [folder]
    for prompt in prompts:
        config = read_prompt_config(prompt)
        check_tensors(load_tensors(prompt / TENSORS_FILE), config.get("tensors_sha256"), prompt / TENSORS_FILE)
    return sorted({p for pattern in PROMPT_PATTERNS for p in folder.rglob(pattern) if p.is_file()})


def push_to_hub(
    prompt_dir: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> Any:
    """Upload a prompt folder (or bank) to the Hub repository ``repo_id`` with a generated model card.

    Creates the repository (and the branch ``revision``) when missing; returns huggingface_hub's ``CommitInfo``.
    Credentials are huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``).
    """
    from huggingface_hub import HfApi

    from .model_card import model_card

    repo_id, _ = parse_hub_name(HUB_PREFIX + repo_id.removeprefix(HUB_PREFIX))
    folder = Path(prompt_dir)
    files = check_pushable(folder)
    api = HfApi(library_name="vlprompt", library_version=__version__)
    with tempfile.TemporaryDirectory(prefix="vlprompt-push-") as staging:
        for path in files:
            target = Path(staging) / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        model_card(folder, repo_id).save(Path(staging) / CARD_FILE)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            revision=revision,
            commit_message=commit_message or f"Upload vlprompt prompt ({folder.name})",
        )

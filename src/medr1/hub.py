"""Pushing to the hub: the token (found by huggingface_hub: HF_TOKEN, a stored login, Colab's secret), whether a push
can happen at all (checked before an export writes anything), and the upload. The token is never printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from medr1.errors import ExportError
from medr1.log import log
from medr1.preflight import reachable


def hub_token() -> str:
    """The hub token (HF_TOKEN, a stored login or Colab's secret, through huggingface_hub); never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise ExportError("pushing to the hub needs a write token: set HF_TOKEN in the environment, or on Colab add "
                          "a secret named HF_TOKEN (key icon in the left bar) and allow this notebook to read it")
    return token


def check_hub(repo_id: str, get_token: Callable[[], str] = hub_token) -> None:
    """Whether a push to `repo_id` can happen, before anything is written: a valid repository name (before the token
    is looked for), hub offline mode off, the hub reachable (unless a proxy carries it, as for W&B), the token valid
    and allowed to write there; else one line, the token never shown."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ExportError(f"push repository {repo_id!r} is not a valid hub name (you/name): {err}") from None
    token = get_token()

    later = "or export now and push later"
    if constants.HF_HUB_OFFLINE:  # what huggingface_hub itself reads, now (set from the environment at its import)
        raise ExportError(f"cannot push: hub offline mode is on (HF_HUB_OFFLINE=1); unset it to push, {later}")
    try:
        up = reachable(constants.ENDPOINT)
    except ValueError as err:  # a port that is no number
        raise ExportError(f"HF_ENDPOINT={constants.ENDPOINT!r} is not a valid URL ({err})") from None
    if not up:
        raise ExportError(f"cannot push: the hub ({urlsplit(constants.ENDPOINT).netloc}) cannot be reached (no "
                          f"network?); {later}")
    try:
        who = HfApi(token=token).whoami()
        auth = (who.get("auth") or {}).get("accessToken") or {}
    except Exception as err:  # noqa: BLE001 - network, auth and hub errors: one clear line, token never shown
        if getattr(getattr(err, "response", None), "status_code", None) == 401:
            raise ExportError("the hub refused the token (401 Unauthorized): HF_TOKEN (or the stored login) is not a "
                              "valid token; make a write token at https://huggingface.co/settings/tokens") from None
        raise ExportError(f"cannot push: the hub did not check the token: {_one_line(err, token)}") from None
    if auth.get("role") == "read":
        raise ExportError("HF_TOKEN (or the stored login) is a read token: pushing needs one with write access")
    full = repo_id if "/" in repo_id else f"{who.get('name', '')}/{repo_id}"  # a bare name goes to the user's
    namespace = full.split("/")[0]
    if auth.get("role") == "fineGrained" and not _may_write(auth.get("fineGrained") or {}, namespace, full):
        raise ExportError(f"HF_TOKEN (or the stored login) is a fine-grained token that cannot write to {namespace}'s "
                          "repositories: give it write access to them (repo.write), or use a write token")


def _may_write(grained: dict, namespace: str, repo_id: str) -> bool:
    """A fine-grained token's `repo.write`: for every repository, for those of `namespace` (a user or an org), or for
    `repo_id` itself."""
    scoped = [s.get("permissions") or [] for s in grained.get("scoped") or []
              if (s.get("entity") or {}).get("name") in (namespace, repo_id)]
    return any("repo.write" in perms for perms in [grained.get("global") or [], *scoped])


def _one_line(err: BaseException, token: str) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0].replace(token, '***')}"


def push_folder(folder: str | Path, repo_id: str, *, private: bool = True, ignore: tuple[str, ...] = ()) -> str:
    """Create the repository (private by default; an existing one keeps its visibility) and upload `folder`;
    errors from the hub come back as one line with the token masked out."""
    token = hub_token()  # HF_TOKEN, else the login's token, else Colab's secret
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", ignore_patterns=list(ignore),
                          commit_message=f"medr1 export: {Path(folder).name}")
    except Exception as err:  # noqa: BLE001 - network, auth and hub errors: one clear line, token never shown
        raise ExportError(f"push of {folder} to {repo_id!r} failed: {_one_line(err, token)}") from None
    log.info(f"pushed {folder} to the hub as {repo_id} ({'private' if private else 'public'})")
    return repo_id

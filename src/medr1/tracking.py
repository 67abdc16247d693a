"""Where training logs go: W&B (`report_to`) or only the run folder. Checked when a run is prepared, before the model
loads: a missing key, a W&B that cannot be reached or a key it refuses is said in one line, never waited on."""

from __future__ import annotations

import base64
import os
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from medr1.config import Config, hint
from medr1.errors import ConfigError
from medr1.log import log
from medr1.preflight import reachable
from medr1.presets import PRESETS

_WANDB_DIR = ""  # the WANDB_DIR reporting() set: a later run in this process may replace it, not the user's own
_FROM_COLAB = ""  # the key wandb_key() exported from Colab's secrets: once refused it goes, so a fixed secret is read


def wandb_key() -> str | None:
    """WANDB_API_KEY from the environment, else Colab's secrets (exported for wandb, never printed)."""
    global _FROM_COLAB
    if key := os.environ.get("WANDB_API_KEY"):
        return key
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        key = userdata.get("WANDB_API_KEY")
    except Exception:  # noqa: BLE001 - not on Colab, or the secret is not granted
        return None
    if key:
        os.environ["WANDB_API_KEY"] = _FROM_COLAB = key
    return key


def key_refused(key: str, url: str, timeout: float = 5.0) -> str:
    """Why W&B refuses `key` ("" when it takes it, or gives no answer): W&B's own format check, then one read-only
    question to its API. Not wandb.login, which may save the key in ~/.netrc; the key is sent, never printed."""
    try:  # wandb's own format check ("API key must have 40+ characters"), where this wandb has it
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:
        check_api_key = None
    if check_api_key and (problem := check_api_key(key)):
        return problem.rstrip(".")
    auth = base64.b64encode(f"api:{key}".encode()).decode()  # W&B's own scheme: user "api", the key as password
    ask = Request(f"{url.rstrip('/')}/graphql", data=b'{"query": "{ viewer { id } }"}', method="POST",
                  headers={"Authorization": f"Basic {auth}", "Content-Type": "application/json"})
    try:
        urlopen(ask, timeout=timeout).close()
    except (OSError, ValueError) as err:  # only a refusal counts: no answer in time is for wandb.init to report
        code = getattr(err, "code", None)
        return f"{urlsplit(url).netloc} answered {code} {err.reason}" if code in (401, 403) else ""
    return ""


def wandb_url() -> str:
    """The server wandb logs to, as wandb reads it: WANDB_BASE_URL, else the host `wandb login --host` saved in its
    settings file (a company's W&B), else its default. The check and the key go there, never to another host."""
    if url := os.environ.get("WANDB_BASE_URL"):  # as wandb reads it: before its settings file
        return url
    try:
        from wandb import Settings

        settings = Settings(quiet=True)
        folder = os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb"  # where wandb.setup() looks
        settings.settings_system = os.path.expanduser(os.path.join(folder, "settings"))
        settings.update_from_system_settings()  # the file alone: another WANDB_ variable wandb refuses is not ours
        return str(settings.base_url)
    except Exception:  # noqa: BLE001 - no wandb, or a settings file it cannot read: W&B's public host
        return "https://api.wandb.ai"


def reporting(config: Config) -> str:
    """'wandb' or 'none'. A headless run never waits for a key (without one W&B is off, said), nor for a W&B it cannot
    reach (wandb.init would wait 90 s, then fail after the model loaded); a key W&B refuses (revoked, mistyped, cut
    short) would fail at the first step: an error under report_to='wandb', else W&B off. W&B's folder: output_dir."""
    global _WANDB_DIR
    if config.report_to == "none":
        # a CPU preset's value; the environment only: reading a Colab secret may ask the user to grant it
        if PRESETS.get(config.preset, {}).get("report_to") == "none" and os.environ.get("WANDB_API_KEY"):
            log.info(f"W&B is off: report_to='none' (the {config.preset!r} preset's value, or yours), though a "
                     f"WANDB_API_KEY is set: {hint('report_to', 'auto')} to log to W&B")
        return "none"
    mode = os.environ.get("WANDB_MODE")
    if not (wandb_key() or mode in ("offline", "disabled")):
        log.info("report_to='wandb' but no WANDB_API_KEY (environment or Colab secret); logging to W&B is off"
                 if config.report_to == "wandb" else "no WANDB_API_KEY; training logs stay local (run.json, plots)")
        return "none"
    url = wandb_url()
    try:
        up = mode in ("offline", "disabled") or reachable(url)
    except ValueError as err:  # a port that is no number
        log.info(f"WANDB_BASE_URL is not a valid URL ({err}); logging to W&B is off, training logs stay local")
        return "none"
    if not up:
        log.info(f"W&B ({urlsplit(url).netloc}) cannot be reached; logging to W&B is off, training logs stay local "
                 "(run.json, plots); WANDB_MODE=offline keeps a local W&B log to sync later")
        return "none"
    if mode not in ("offline", "disabled") and (refused := key_refused(os.environ["WANDB_API_KEY"], url)):
        if os.environ["WANDB_API_KEY"] == _FROM_COLAB:
            del os.environ["WANDB_API_KEY"]  # a fixed secret is read at the next run
        fix = "fix WANDB_API_KEY (the environment, or the Colab secret)"
        if config.report_to == "wandb":
            raise ConfigError(f"report_to='wandb' but W&B refused WANDB_API_KEY ({refused}): {fix}, or "
                              f"{hint('report_to', 'none')}")
        log.info(f"W&B refused WANDB_API_KEY ({refused}); logging to W&B is off, training logs stay local: {fix}")
        return "none"
    if os.environ.get("WANDB_DIR", _WANDB_DIR) == _WANDB_DIR:
        os.environ["WANDB_DIR"] = _WANDB_DIR = os.path.abspath(os.path.expanduser(config.output_dir))
    os.environ["WANDB_PROJECT"] = config.wandb_project  # TRL reads only this; the knob of this run wins
    return "wandb"

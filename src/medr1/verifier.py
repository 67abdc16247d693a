"""The optional model-judged reward: the dataset authors' verifier scores an answer part against the reference.

Apart from the rule-based rewards (medr1.rewards) because it is a model: torch and transformers, a 3B
download, and its own failure when offline. Used only when the weight `reward_verifier` is above 0.
"""

from __future__ import annotations

from medr1 import distributed
from medr1.config import Config, hint
from medr1.errors import ModelError
from medr1.preflight import read_model_config
from medr1.rewards import answer_part

# The input format the verifier was trained on (the dataset authors' reward model): response, reference, EOS.
VERIFIER_TEMPLATE = ("<Model Response>\n{}\n</Model Response>\n\n<Reference Answer>\n{}\n</Reference Answer>\n\n"
                     "Your task is to evaluate the model response by comparing it to the reference answer. If the "
                     "model response is correct and aligns with the reference answer, output \"True\" . If it is "
                     "incorrect or fails to select the correct option (if options are provided), output \"False\" . {}")


def check(config: Config) -> None:
    """With reward_verifier > 0, verifier_model's config.json must be there (a folder, the hub cache, or the hub when
    online), checked as model_name is: the verifier itself loads only when the first answer is scored, after the
    policy model loaded and GRPO steps ran, too late for a typo or an uncached model to fail."""
    if config.reward_verifier <= 0:
        return
    try:
        check_head(config.verifier_model)
    except ModelError as err:
        raise ModelError(f"{err}. Set {hint('reward_verifier', 0)} to train without the verifier.") from None


def check_head(name: str) -> None:
    """verifier_model's config.json must declare a 2-label sequence classifier, as the authors' verifier does
    (LlamaForSequenceClassification): a causal LM loads with a newly initialized score head, and its random
    P(correct) would be the reward, unsaid."""
    cfg = read_model_config(name, "verifier_model")
    labels = len(cfg["id2label"]) if cfg.get("id2label") else cfg.get("num_labels", 2)  # transformers' default: 2
    if labels != 2 or not any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
        raise ModelError(f"verifier_model={name!r} is no 2-label sequence classifier (its config.json declares "
                         f"architectures={cfg.get('architectures')}, {labels} labels): its score head would load "
                         f"random weights and the reward be noise; give a verifier such as {Config.verifier_model}")


class Verifier:
    """The authors' verifier (a 2-label sequence classifier): reward = P(correct) of the answer part.

    Loaded on first use only, so nothing downloads unless the weight `reward_verifier` is above 0.
    """

    def __init__(self, model_name: str = Config.verifier_model, style: str = "seed", batch_size: int = 8,
                 max_length: int = 4096, precision: str = "auto"):
        self.model_name, self.style, self.batch_size, self.max_length = model_name, style, batch_size, max_length
        self.precision = precision  # the policy's knob: "auto" is fp16 on a T4, where bf16 is only emulated
        self.model = self.tokenizer = None
        self.__name__ = "verifier"

    def load(self) -> None:
        """Its tokenizer through medr1's loader, as the policy's (AutoTokenizer can drop spaces, and may leave no pad
        token to batch with); the model is told the pad id, which it needs to find each text's last token."""
        from transformers import AutoModelForSequenceClassification

        from medr1.model import match_tokenizer, torch_dtype
        from medr1.preflight import model_path
        from medr1.tokenizer import load_tokenizer

        try:
            check_head(self.model_name)
            path = model_path(self.model_name, "verifier_model")
            self.tokenizer = load_tokenizer(path, self.style, knob="verifier_model")
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=2, dtype=torch_dtype(self.precision), device_map=distributed.device_map()).eval()
            match_tokenizer(self.model, self.tokenizer)
        except ModelError as err:  # medr1's own: the folder or the tokenizer
            raise ModelError(f"{err}. Set {hint('reward_verifier', 0)} to train without it.") from None
        except OSError as err:
            raise ModelError(f"verifier_model={self.model_name!r} could not be loaded ({str(err).splitlines()[0]}); "
                             f"offline it must be in the hub cache first. Set {hint('reward_verifier', 0)} to "
                             "train without it.") from None

    def __call__(self, completions: list[str], ground_truth: list[str], **kwargs) -> list[float]:
        import torch

        answers = [answer_part(c, self.style) for c in completions]
        todo = [k for k, a in enumerate(answers) if a]  # no answer part: 0, like correctness
        if todo and self.model is None:
            self.load()
        texts = [VERIFIER_TEMPLATE.format(answers[k], ground_truth[k], self.tokenizer.eos_token) for k in todo]
        out = [0.0] * len(completions)
        with torch.inference_mode():
            for k in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[k:k + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_length).to(self.model.device)
                probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, 1].tolist()
                for idx, p in zip(todo[k:k + self.batch_size], probs, strict=True):
                    out[idx] = p
        return out

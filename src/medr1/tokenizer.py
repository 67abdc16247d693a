"""The one tokenizer loader: faithful to tokenizer.json, checked by a round trip, saved so it reloads the same.

Why not `AutoTokenizer`: DeepSeek-R1-Distill-Llama-8B ships a Llama-3 byte-level BPE tokenizer.json, but its
tokenizer_config.json declares `LlamaTokenizerFast`, and transformers 5 (up to 5.17 at least) then builds
`LlamaTokenizer` with SentencePiece's Metaspace: every space and newline is lost ("Hello world" -> "Helloworld").
Upstream special-cases only `deepseek-ai/deepseek-r1-distill-llama-*` ids (not `unsloth/...`, a folder, an adapter).
So medr1 builds `PreTrainedTokenizerFast` from tokenizer.json and proves it with a probe before any weights load;
saved, it declares `TokenizersBackend`, so `AutoTokenizer.from_pretrained(folder)` (vLLM, TGI, a later script) reads
the same ids.
"""

from __future__ import annotations

import os

from medr1.stack import import_unsloth_first

from medr1 import prompts
from medr1.errors import ModelError

# Spaces, newlines, tabs, unicode, digits and R1's reasoning markers: what a broken pre-tokenizer loses first.
PROBE = "Hello world\n\tβ-blocker 5 mg/kg, 37.5 °C;  two  spaces\n<think>\nreasoning</think>\n\nanswer"
# Pad candidates that are not EOS, in the order R1-distill and Llama-3 vocabularies hold them.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|reserved_special_token_0|>")
ADDED_PAD = "<｜▁pad▁｜>"


def load_tokenizer(name_or_path: str, prompt_style: str = "seed", *, knob: str = "model_name"):
    """The tokenizer of a hub id, a local folder, a saved adapter or checkpoint, read from its tokenizer.json
    (`AutoTokenizer` only where there is none: a SentencePiece-only model). The pad token is made distinct from
    EOS, and the chat template renders medr1's prompt for `prompt_style`."""
    import_unsloth_first()
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except OSError:
            raise ModelError(f"{knob}={name_or_path!r}: no tokenizer could be loaded "
                             f"({str(err).splitlines()[0]})") from None
    check_tokenizer(tokenizer, name_or_path)
    set_pad_token(tokenizer)
    tokenizer.chat_template = chat_template(prompt_style)
    return tokenizer


def check_tokenizer(tokenizer, name: str = "") -> None:
    """Refuse a tokenizer that does not give back the text it was given, before anything trains on it."""
    what = f"the tokenizer of {name or 'the model'} ({type(tokenizer).__name__})"
    if tokenizer.eos_token is None:
        raise ModelError(f"{what} has no EOS token: a model trained without one never stops")
    text = PROBE + tokenizer.eos_token
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if back != text:
        i = len(os.path.commonprefix([text, back]))  # the first character that differs
        lost = f"at character {i} expected {text[i:i + 12]!r}, got {back[i:i + 12]!r}"
        if i == min(len(text), len(back)):  # one is a prefix of the other
            lost = f"expected {len(text)} characters, got {len(back)} ({back[-24:]!r} at the end)"
        raise ModelError(f"{what} does not round-trip text: {lost}. Training on it would teach the model broken "
                         "text; medr1 reads tokenizer.json directly, so this tokenizer's files are themselves wrong")
    if ids[-1] != tokenizer.eos_token_id:
        raise ModelError(f"{what} does not encode its EOS {tokenizer.eos_token!r} as the single token "
                         f"{tokenizer.eos_token_id}")
    vocab = tokenizer.get_vocab()
    for marker in (prompts.THINK_OPEN, prompts.THINK_CLOSE):
        if marker in vocab and tokenizer(marker, add_special_tokens=False)["input_ids"] != [vocab[marker]]:
            raise ModelError(f"{what} splits {marker!r} into several tokens although its vocabulary has it as one")


def set_pad_token(tokenizer) -> None:
    """Make pad differ from EOS, adding a pad token where the vocabulary has none to spare (the model's embeddings
    then grow: model.match_tokenizer). A pad equal to EOS (DeepSeek's own upload) lets a collator mask EOS out of the
    labels: the model never learns to stop."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return
    tokenizer.add_special_tokens({"pad_token": ADDED_PAD})


def chat_template(style: str) -> str:
    """A Jinja chat template that renders exactly medr1's generation prompt (BOS + inference prompt), so servers
    that read it (vLLM, TGI, llama.cpp through GGUF metadata) ask the model the way it was trained. The last user
    message is the question; an assistant message after it (a training example) is rendered after the prompt,
    ending with EOS."""
    prefix, suffix = prompts.inference_prompt("\x00", style).split("\x00")
    return (
        "{{ bos_token }}{% set q = (messages | selectattr('role', 'equalto', 'user') | list | last).content %}"
        f"{_jinja_literal(prefix)}{{{{ q }}}}{_jinja_literal(suffix)}"
        "{% if messages[-1].role == 'assistant' %}{{ messages[-1].content }}{{ eos_token }}{% endif %}"
    )


def _jinja_literal(text: str) -> str:
    return "{{ " + repr(text) + " }}" if text else ""


def byte_level_with_bos(backend, bos: str) -> None:
    """Give a `tokenizers.Tokenizer` Llama-3's ends: a plain ByteLevel decoder, and BOS added to every text."""
    from tokenizers import decoders, processors

    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, backend.token_to_id(bos))])])


def generation_text(tokenizer, question: str, style: str) -> str:
    """What medr1 generates from: the chat template's rendering (BOS + inference prompt), tokenized as is."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                         tokenize=False, chat_template=chat_template(style))

"""The one tokenizer loader: faithful to tokenizer.json, checked by a round trip, saved so it reloads the same.

Why not `AutoTokenizer`: DeepSeek-R1-Distill-Llama-8B ships a Llama-3 byte-level BPE tokenizer.json, but its
tokenizer_config.json declares `LlamaTokenizerFast`, and transformers 5 (up to 5.17 at least) then builds
`LlamaTokenizer` with SentencePiece's Metaspace: every space and newline is lost ("Hello world" -> "Helloworld").
Upstream special-cases only `deepseek-ai/deepseek-r1-distill-llama-*` ids (not `unsloth/...`, a folder, an adapter).
So medr1 builds `PreTrainedTokenizerFast` from tokenizer.json and proves it with a probe before any weights load;
saved, it declares that class (not transformers 5's `TokenizersBackend`, which transformers 4 lacks: vLLM and
llama.cpp's converter pin transformers < 5), so `AutoTokenizer.from_pretrained(folder)` under either reads the same
ids. Without a tokenizer.json, the same class converts a SentencePiece tokenizer.model, and `AutoTokenizer`
reads a named class's own files (GPT-2's vocab.json + merges.txt); a model with none (saved without its tokenizer, a
partial download) is refused in one line, not built from tokenizer_config.json's named tokens alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from medr1.stack import import_unsloth_first

from medr1 import data, prompts
from medr1.errors import ModelError

# Spaces, newlines, tabs, unicode, digits and R1's reasoning markers: what a broken pre-tokenizer loses first.
PROBE = "Hello world\n\tβ-blocker 5 mg/kg, 37.5 °C;  two  spaces\n<think>\nreasoning</think>\n\nanswer"
# Pad candidates that are not EOS, in the order R1-distill and Llama-3 vocabularies hold them.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<｜▁pad▁｜>", "<|reserved_special_token_0|>")
ADDED_PAD = "<｜▁pad▁｜>"


def load_tokenizer(name_or_path: str, prompt_style: str = "seed", *, knob: str = "model_name"):
    """The tokenizer of a hub id, a local folder, a saved adapter or checkpoint, read from its tokenizer.json
    (without one: from its other tokenizer files, see the module's docstring). The pad token is made distinct from
    EOS, and the chat template renders medr1's prompt for `prompt_style`."""
    import_unsloth_first()
    from transformers import AutoTokenizer

    try:  # tokenizer.json; without one, a SentencePiece tokenizer.model converted
        tokenizer, err = fast_class().from_pretrained(name_or_path), None
    except (OSError, ValueError) as first:
        tokenizer, err = None, first
    where, has_json = _tokenizer_json(name_or_path)  # after the load: online, it has fetched tokenizer.json if any
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError):
            if has_json:
                raise ModelError(f"{knob}={name_or_path!r}: no tokenizer could be loaded "
                                 f"({str(err).splitlines()[0]})") from None
    if has_json and err is None:
        why = "medr1 reads tokenizer.json directly, so this tokenizer's files are themselves wrong"
    elif has_json:
        why = f"its tokenizer.json could not be read ({str(err).splitlines()[0]}), so AutoTokenizer built it"
    elif files := built_from(tokenizer):
        why = (f"there is no tokenizer.json in {where}: transformers built it from {', '.join(files)}; save the "
               "model's tokenizer beside it (tokenizer.save_pretrained)")
    else:  # nothing, or what transformers 5 builds from tokenizer_config.json alone (the trap's class, no vocabulary)
        raise ModelError(_no_tokenizer_json(name_or_path, knob, where))
    check_tokenizer(tokenizer, name_or_path, why)
    set_pad_token(tokenizer)
    tokenizer.chat_template = chat_template(prompt_style)
    return tokenizer


def fast_class() -> type:
    """transformers 5's tokenizer of a tokenizer.json (`TokenizersBackend`), under the name its saves declare:
    transformers 5 writes the class's own name, one transformers 4 does not have ("does not exist"), so vLLM and
    llama.cpp's converter (both pin transformers < 5) could not read a folder medr1 saved; `PreTrainedTokenizerFast`
    both read from tokenizer.json to the same ids. Made on first use (transformers loads after Unsloth), kept in
    this module so that it pickles by name, and made by `__getattr__` where a fresh process unpickles one."""
    if (made := globals().get("PreTrainedTokenizerFast")) is None:
        import_unsloth_first()
        from transformers import TokenizersBackend

        made = type("PreTrainedTokenizerFast", (TokenizersBackend,), {"__module__": __name__})
        globals()["PreTrainedTokenizerFast"] = made
    return made


def __getattr__(name: str) -> type:
    """`medr1.tokenizer.PreTrainedTokenizerFast` where no tokenizer was loaded yet: what unpickling one asks for."""
    if name == "PreTrainedTokenizerFast":
        return fast_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _tokenizer_json(name_or_path: str) -> tuple[str, bool]:
    """(where the model's files are, as a message names it; whether tokenizer.json is there): a local folder, or
    the hub cache's snapshot of a hub id."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return str(local), (local / "tokenizer.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    try:
        found, config = (try_to_load_from_cache(name_or_path, f) for f in ("tokenizer.json", "config.json"))
    except ValueError:  # not a valid hub id: nothing of it is cached
        found = config = None
    where = f"the hub cache ({Path(config).parent})" if isinstance(config, str) else f"the hub cache of {name_or_path}"
    return where, isinstance(found, str)


def built_from(tokenizer) -> list[str]:
    """The vocabulary files transformers found for `tokenizer` (its class's `vocab_files_names`); none where it was
    built from tokenizer_config.json's named tokens alone (a handful of tokens: every text would come out broken)."""
    if tokenizer is None:
        return []
    kwargs = tokenizer.init_kwargs
    return [Path(kwargs[key]).name for key in tokenizer.vocab_files_names if isinstance(kwargs.get(key), str)]


def _no_tokenizer_json(name_or_path: str, knob: str, where: str) -> str:
    """One line for a model without a tokenizer: the knob, the folder, what is missing and what to do."""
    if not Path(name_or_path).expanduser().is_dir():  # a hub id
        todo = f"download it once online (hf download {name_or_path}) or give a local folder that holds it"
    else:
        todo = (f"save the tokenizer beside the model (tokenizer.save_pretrained({where!r}), the tokenizer it was "
                "trained with) or copy its base model's tokenizer.json and tokenizer_config.json into it")
    return (f"{knob}={name_or_path!r}: no tokenizer.json in {where}, and transformers builds no tokenizer from its "
            f"other files (a model saved without its tokenizer, or a partial download): {todo}")


def check_tokenizer(tokenizer, name: str = "", why: str = "") -> None:
    """Refuse a tokenizer that does not give back the text it was given, before anything trains on it (`why`: what
    the round-trip error adds, where the tokenizer came from)."""
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
                         f"text{'; ' + why if why else ''}")
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
    ending with EOS. The model was trained on single questions: a system message and earlier turns are not shown
    to it (README and card say so). It never raises: llama.cpp's server renders a system message and several turns
    as it loads a model and, on an error, serves every request in ChatML instead."""
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


def token_view(row: dict[str, str], tokenizer, config) -> str:
    """One row as the trainer sees it: each token's id and text, whether it counts in the loss, the round trip.
    A lost space or newline, a split `<think>`, a missing EOS or a misplaced mask shows at a glance. Whether it
    fits and is trained on is data.row_fate's (the policy, the split and duplicates decide it)."""
    text = prompts.format_row(row, tokenizer.eos_token, config.prompt_style)
    enc = data.encode_rows([row], tokenizer, config.prompt_style)[0]
    counted = enc.completion if config.loss_on == "completion" else [1] * len(enc.ids)
    counted = [0, *counted[1:]]  # the first token is never predicted
    lines = [f"--- row at token level: {len(enc.ids)} tokens ({type(tokenizer).__name__}); loss_on="
             f"{config.loss_on!r}: '+' counts in the loss, '.' does not ---"]
    lines += [f"{i:6d} {tok:8d} {'+' if c else '.'} {tokenizer.decode([tok])!r}"
              for i, (tok, c) in enumerate(zip(enc.ids, counted, strict=True))]
    back = tokenizer.decode(enc.ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    bos = tokenizer.bos_token or ""
    same = back == text or (bos and back == bos + text)
    lines.append(f"round trip: decode(ids) {'==' if same else '!='} the training text"
                 f"{'' if same else ' (the tokenizer loses text: do not train on it)'}; "
                 f"{sum(counted)} of {len(enc.ids)} tokens count in the loss")
    return "\n".join(lines)

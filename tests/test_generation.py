"""Many answers at once (medr1.infer.generate_many, medr1.decode) against the model's own forward and `generate`.

On the tiny offline Llama in fp32 with a LoRA adapter whose B matrices are random (so base and fine-tuned
differ): the batched decoder must give what `model.generate` gives, token for token; the same answers at
batch 1 and batch 64 and with fewer slots than prompts (rows refilled as others finish); stop at EOS;
and honour the adapter being switched off, merged into a 16-bit copy or called as modules.
"""

from pathlib import Path

import pytest
import torch

from medr1 import decode, infer, prompts
from medr1.decode import Sampling, Stats
from medr1.llama import shape_limits

NEW = 20  # new tokens per answer: enough to diverge if anything differs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matmuls on a shared CPU: one thread each, else OpenMP waits on busy cores (20x slower seen here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from medr1.presets import LORA_TARGETS
    from medr1.tiny import tiny_model_path
    from medr1.tokenizer import load_tokenizer

    path = str(tiny_model_path())
    tokenizer = load_tokenizer(path, "seed")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)  # LoRA A is drawn here: the same adapter in every process (its answers must not reach EOS)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGETS)))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained-looking adapter: base and fine-tuned answers differ
            p.data.normal_(0, 0.05)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def texts():
    import medr1
    from medr1.readers import read_rows

    rows = read_rows(Path(medr1.__file__).parent / "assets" / "medical_tiny.jsonl")  # the bundled fixture
    # 80 prompts: every fixture question in both prompt styles
    return [prompts.inference_prompt(r["Question"], style) for style in prompts.STYLES for r in rows]


def _tokens(gens):
    return [(g["text"], g["stopped"], g["new_tokens"]) for g in gens]


def test_decoder_logits_equal_the_models_forward(lm, texts):
    model, tokenizer = lm
    ids = tokenizer(texts[0])["input_ids"]
    for merge in (False, True):
        dec = decode.Decoder(model, slots=2, max_len=len(ids) + 8, merge=merge)
        with torch.inference_mode():
            ours = dec.prefill([(1, ids)])[0]
            theirs = model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (merge, (ours - theirs).abs().max())


@pytest.mark.parametrize("variant", ["finetuned", "base"])
def test_greedy_answers_equal_model_generate(lm, texts, variant):
    model, tokenizer = lm
    ctx = model.disable_adapter() if variant == "base" else torch.no_grad()
    with ctx:
        hf = infer.generate_many(model, tokenizer, texts[:6], max_new_tokens=NEW, engine="hf", batch_size=1)
        for merge in ("no", "yes"):
            ours = infer.generate_many(model, tokenizer, texts[:6], max_new_tokens=NEW, engine="medr1", merge=merge)
            assert _tokens(ours) == _tokens(hf), merge
    assert all(g["new_tokens"] == NEW for g in hf)  # random LoRA: no EOS, every answer runs to the budget


def test_adapter_changes_the_answers(lm, texts):
    """The comparison above is of two different models: switching the adapter off changes the answers."""
    model, tokenizer = lm
    tuned = infer.generate_many(model, tokenizer, texts[:4], max_new_tokens=NEW, merge="yes")
    with model.disable_adapter():
        base = infer.generate_many(model, tokenizer, texts[:4], max_new_tokens=NEW, merge="yes")
    assert all(a["text"] != b["text"] for a, b in zip(tuned, base, strict=True))


def test_the_same_answers_at_batch_1_and_the_most_rows_a_step(lm, texts):
    model, tokenizer = lm
    most = shape_limits(torch.device("cpu"))[0]  # 16 rows a step on a CPU (64 or 256 on a GPU)
    stats = {b: Stats() for b in (1, 5, most)}
    runs = {b: infer.generate_many(model, tokenizer, texts, max_new_tokens=NEW, batch_size=b, stats=stats[b])
            for b in (1, 5, most)}
    assert len(texts) == 80 and stats[most].slots == most and stats[1].slots == 1
    assert _tokens(runs[1]) == _tokens(runs[most]) == _tokens(runs[5])  # 5 slots: rows refilled as others finish
    assert stats[most].generated_tokens == sum(g["new_tokens"] for g in runs[most]) > 60 * NEW
    assert stats[most].steps < stats[1].steps / (most // 2)  # up to `most` rows a step
    with pytest.raises(ValueError, match=f"at most {most} rows per step"):
        infer.generate_many(model, tokenizer, texts[:2], max_new_tokens=2, batch_size=most + 1)


def test_stops_at_eos_and_counts_it(lm, texts):
    """Make the 6th greedy token of each answer the stop token: every row must stop right there."""
    model, tokenizer = lm
    ids = [tokenizer(t)["input_ids"] for t in texts[:8]]
    free = decode.decode(model, ids, max_new_tokens=NEW, eos_ids=set())
    stop = {r.tokens[5] for r in free}
    stopped = decode.decode(model, ids, max_new_tokens=NEW, eos_ids=stop, slots=3)
    for f, s in zip(free, stopped, strict=True):
        first = next(j for j, t in enumerate(f.tokens) if t in stop)
        assert s.stopped and s.tokens == f.tokens[:first] and first <= 5
    assert not any(r.stopped for r in free)


def test_sampling_is_seeded_and_top_p_keeps_the_top(lm, texts):
    model, tokenizer = lm
    kw = dict(max_new_tokens=NEW, merge="yes")
    a = infer.generate_many(model, tokenizer, texts[:3], sampling=Sampling(seed=1), samples=2, **kw)
    b = infer.generate_many(model, tokenizer, texts[:3], sampling=Sampling(seed=1), samples=2, **kw)
    c = infer.generate_many(model, tokenizer, texts[:3], sampling=Sampling(seed=2), samples=2, **kw)
    assert len(a) == 6 and _tokens(a) == _tokens(b) and _tokens(a) != _tokens(c)
    assert a[0]["text"] != a[1]["text"]  # two samples of one question differ
    greedy = infer.generate_many(model, tokenizer, texts[:3], **kw)
    nearly = infer.generate_many(model, tokenizer, texts[:3], sampling=Sampling(top_p=1e-9), **kw)
    assert _tokens(nearly) == _tokens(greedy)  # top_p that keeps one token is greedy
    with pytest.raises(ValueError, match="need sampling"):
        infer.generate_many(model, tokenizer, texts[:3], samples=2, **kw)


def test_a_questions_samples_do_not_depend_on_the_batch(lm, texts):
    """Each draw comes from (seed, prompt, sample, position) alone: a question's samples are the same asked alone,
    among prompts of other lengths, in another order, with one slot or many (rows refilled as others finish)."""
    model, tokenizer = lm
    ids = [tokenizer(t)["input_ids"] for t in texts[:5]]
    assert len({len(p) for p in ids}) > 2  # prompts of different lengths

    def answers(order, slots=0, seed=3407):
        done = decode.decode(model, [ids[i] for i in order for _ in range(2)], max_new_tokens=12, eos_ids=set(),
                             slots=slots, sampling=Sampling(seed=seed))
        return {(i, k): done[2 * j + k].tokens for j, i in enumerate(order) for k in range(2)}

    alone = answers([0])
    for order, slots in (([0, 1, 2, 3, 4], 0), ([0, 1, 2, 3, 4], 1), ([4, 2, 0, 3], 3), ([3, 0], 0)):
        run = answers(order, slots)
        assert run[0, 0] == alone[0, 0] and run[0, 1] == alone[0, 1], (order, slots)
        if 3 in order:
            assert run[3, 0] == answers([3])[3, 0]
    assert answers([0, 1, 2, 3, 4], slots=1) == answers([0, 1, 2, 3, 4], slots=4)  # every question, not just one
    assert alone[0, 0] != alone[0, 1] and answers([0], seed=1)[0, 0] != alone[0, 0]
    kw = dict(max_new_tokens=12, sampling=Sampling(seed=3407), samples=2, merge="yes")  # the reviewer's repro
    first = _tokens(infer.generate_many(model, tokenizer, texts[:1], **kw))
    assert _tokens(infer.generate_many(model, tokenizer, texts[:4], **kw))[:2] == first
    assert _tokens(infer.generate_many(model, tokenizer, texts[:4], batch_size=1, **kw))[:2] == first


def test_unseeded_sampling_runs_and_varies(lm, texts):
    model, tokenizer = lm
    ids = [tokenizer(t)["input_ids"] for t in texts[:3]]
    runs = [decode.decode(model, ids, max_new_tokens=8, eos_ids=set(), sampling=Sampling(seed=None)) for _ in "ab"]
    assert all(len(r.tokens) == 8 for run in runs for r in run)
    assert [r.tokens for r in runs[0]] != [r.tokens for r in runs[1]]  # a fresh random key each call


@pytest.mark.parametrize("temperature, top_p", [(0.6, 0.95), (1.0, 0.8), (0.6, 1.0)])
def test_the_sampler_draws_from_the_top_p_nucleus_at_the_temperature(temperature, top_p):
    """Inverse-CDF picks with the hashed uniforms have softmax(logits / T)'s frequencies within the top-p nucleus,
    along one row's positions and across rows' keys; nothing outside the nucleus; ties in token order."""
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5, 1.0, -3.0, 0.0, 1.5])
    probs = torch.softmax(logits / temperature, dim=0)
    sorted_probs, order = probs.sort(descending=True, stable=True)
    kept = order[sorted_probs.cumsum(0) - sorted_probs <= top_p]
    want = torch.zeros_like(probs)
    want[kept] = probs[kept] / probs[kept].sum()
    n = 40_000
    sampling = Sampling(temperature=temperature, top_p=top_p)
    one_row = decode.uniforms(torch.full((n,), decode.stream_keys([[5, 6]], 3407)[0]), torch.arange(n))
    many_rows = decode.uniforms(torch.tensor(decode.stream_keys([[i] for i in range(n)], 3407)), torch.full((n,), 7))
    for u in (one_row, many_rows):
        assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
        picked = decode.pick_tokens(logits.expand(n, -1), sampling, u)
        freq = torch.bincount(picked, minlength=len(logits)).double() / n
        assert freq[want == 0].sum() == 0
        assert torch.all((freq - want).abs() <= 4 * (want * (1 - want) / n).sqrt() + 1e-3), (freq, want)
    assert decode.pick_tokens(logits[None], Sampling(top_p=1e-9), torch.tensor([0.99])).item() == 1  # the top one


def test_models_the_decoder_does_not_run_fall_back_to_generate(lm, texts, monkeypatch):
    model, tokenizer = lm
    hf = infer.generate_many(model, tokenizer, texts[:2], max_new_tokens=NEW, engine="hf")
    monkeypatch.setattr(model.get_base_model().config, "model_type", "gpt2")
    assert "gpt2" in decode.unsupported(model)
    stats = Stats()
    assert _tokens(infer.generate_many(model, tokenizer, texts[:2], max_new_tokens=NEW, stats=stats)) == _tokens(hf)
    assert "model.generate" in stats.notes[0]
    with pytest.raises(ValueError, match="cannot run this model"):
        infer.generate_many(model, tokenizer, texts[:2], max_new_tokens=NEW, engine="medr1")


def test_memory_plan_on_a_cpu_and_sizes(lm):
    model, _ = lm
    c = model.get_base_model().config
    head_dim = c.hidden_size // c.num_attention_heads
    assert decode.kv_bytes_per_slot(model, 128) == c.num_hidden_layers * 2 * c.num_key_value_heads * 128 * head_dim * 4
    assert decode.plan(model, rows=500, max_len=128) == (16, False, "16 slots on cpu")  # the CPU's step rows
    assert decode.plan(model, rows=7, max_len=128, slots=3)[0] == 3
    with pytest.raises(ValueError, match="at most 16 rows per step"):
        decode.plan(model, rows=500, max_len=128, slots=17)
    assert decode.merged_bytes(model) == 4 * sum(
        p.numel() for n, p in model.named_parameters() if "proj.base_layer.weight" in n)


def test_generate_keeps_what_an_unstopped_row_generated(lm, monkeypatch):
    """`model.generate` pads a row only after its EOS: a row that never stopped keeps every token, even a last one
    that is the pad id (a model may write it), and a stopped row ends at its EOS."""
    model, tokenizer = lm
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    made = torch.tensor([[5, 6, pad, pad], [7, eos, pad, pad]])
    monkeypatch.setattr(model, "generate", lambda input_ids, **kw: torch.cat([input_ids, made], dim=1))
    rows = infer.hf_generate(model, tokenizer, ["a question", "another one"], max_new_tokens=4)
    assert [(r.tokens, r.stopped) for r in rows] == [([5, 6, pad, pad], False), ([7], True)]


@pytest.mark.parametrize("path", ["medr1", "hf", "sharded"])
def test_stats_add_up_over_the_calls_they_are_passed_to(lm, texts, path, monkeypatch):
    """One rule for every engine: a Stats passed to two calls holds the sums of their counts and times."""
    import dataclasses

    model, tokenizer = lm
    if path == "sharded":  # 2 processes, 1 prompt each call: rank 1 has no share and sends what it would send
        monkeypatch.setattr(infer.distributed, "world_size", lambda: 2)
        monkeypatch.setattr(infer.distributed, "init", lambda: None)
        monkeypatch.setattr(torch.distributed, "all_gather_object",
                            lambda out, mine: out.__setitem__(slice(None), [mine, ([], [], Stats())]))
    engine = "hf" if path == "hf" else "medr1"
    both, second = Stats(), Stats()
    infer.generate_many(model, tokenizer, texts[:1], max_new_tokens=NEW, engine=engine, stats=both)
    first = dataclasses.replace(both, notes=list(both.notes))
    for stats in (both, second):  # a much shorter second call: its time alone is less than the first's
        infer.generate_many(model, tokenizer, texts[1:2], max_new_tokens=1, engine=engine, stats=stats)
    for key in ("prompts", "generated_tokens", "steps"):
        assert getattr(both, key) == getattr(first, key) + getattr(second, key), key
    assert both.prompts == 2 and both.generated_tokens == NEW + 1 and len(both.notes) == 2
    assert both.seconds > first.seconds > 0
    speed = both.record(answers=2)
    assert speed["generated_tokens_per_s"] == round(both.generated_tokens / both.seconds, 1) and speed["answers"] == 2


def test_a_question_asked_twice_gets_the_same_samples_whatever_shares_its_process(lm, texts):
    """`evaluate --samples k` on a file with a question twice: the sample index was counted from identical prompts
    before it, so the second ask's samples changed with what shared its process (round robin) or the subset."""
    model, tokenizer = lm
    kw = dict(max_new_tokens=12, sampling=Sampling(seed=3407), samples=2, merge="yes")
    alone = _tokens(infer.generate_many(model, tokenizer, texts[:1], **kw))
    twice = _tokens(infer.generate_many(model, tokenizer, [texts[0], texts[0], texts[1]], **kw))
    assert twice[:2] == alone and twice[2:4] == alone and alone[0] != alone[1]


def test_a_sharded_pass_records_the_slowest_process_times(monkeypatch):
    """Under several processes eval.json's `prefill_s` read 0.0 and `ms_per_step` was wall time over steps (prefill and
    the gather included): the parts' prefill and decode times were never carried over. The processes run side by
    side, so the pass's times are the slowest one's."""
    from medr1 import distributed

    parts = [Stats(slots=4, prompts=2, generated_tokens=40, steps=10, prefill_s=0.5, decode_s=2.0, seconds=2.6),
             Stats(slots=4, prompts=2, generated_tokens=30, steps=8, prefill_s=0.25, decode_s=1.0, seconds=1.3)]
    monkeypatch.setattr(distributed, "init", lambda: None)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(infer, "generate_many", lambda *a, **k: [{"text": "x"}] * 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda out, _: out.__setitem__(slice(None), [([0, 2], ["a", "c"], parts[0]),
                                                                     ([1, 3], ["b", "d"], parts[1])]))
    stats = Stats()
    assert infer._sharded(None, None, ["p0", "p1", "p2", "p3"], stats, samples=1) == ["a", "b", "c", "d"]
    speed = stats.record()
    assert (speed["steps"], speed["prefill_s"], speed["ms_per_step"]) == (10, 0.5, 200.0)
    assert speed["generated_tokens"] == 70 and speed["prompts"] == 4

"""The benchmark scripts on a CPU (tiny model), the fast preset's sizing rule, and packing that keeps rows apart."""

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

from medr1.speed import sizing

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    """benchmarks/<name>.py as a module; its folder on sys.path, as when it runs (bench_eval imports bench)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


bench = script("bench")
CONFIGS, parse_variant, random_rows, row_lengths, table = (
    bench.CONFIGS, bench.parse_variant, bench.random_rows, bench.row_lengths, bench.table)


def test_bench_runs_every_configuration_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    code = bench.main(["--warmup", "1", "--measure", "1", "--rows", "24", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report
    assert {"gpu", "date", "model_shape", "results"} <= set(report)
    assert report["gpu"] == "cpu" and report["model_shape"] == "tiny"
    results = {r["config"]: r for r in report["results"]}
    assert list(results) == ["seed", "tutorial", "hf", "fast"]
    for r in results.values():
        assert r["trained_tokens_per_s"] > 0 and r["tokens_per_step"] > 0, r
        assert 0 <= r["pad_fraction"] < 1 and r["peak_gib"] is None, r
        assert r["s_per_60_steps"] == pytest.approx(60 * r["step_s"], rel=0.01)
        seed_rate = results["seed"]["trained_tokens_per_s"]
        assert r["speedup_vs_seed"] == pytest.approx(r["trained_tokens_per_s"] / seed_rate, rel=0.01)
    assert results["seed"]["speedup_vs_seed"] == 1.0
    # what each configuration is: the recipe, twice its rows per step, plain HF, the packed fast preset
    assert results["seed"]["per_device_train_batch_size"] == 1 and results["seed"]["gradient_accumulation_steps"] == 4
    assert results["tutorial"]["per_device_train_batch_size"] == 2
    assert results["tutorial"]["tokens_per_step"] > 1.3 * results["seed"]["tokens_per_step"]
    assert results["hf"]["backend"] == "hf" and results["seed"]["backend"] == "unsloth"
    fast = results["fast"]
    assert fast["packing"] and fast["max_steps_of_preset"] == 15 and fast["learning_rate"] == pytest.approx(4e-4)
    assert fast["packing_check"]["rel_error"] < 1e-3
    assert "| fast |" in table(report)


def test_row_lengths_follow_the_real_data():
    lengths = row_lengths(500)
    assert min(lengths) >= 450 and max(lengths) <= 1500
    assert 850 <= sorted(lengths)[250] <= 950
    assert lengths == row_lengths(500)  # seeded
    rows = random_rows([5, 7], vocab_size=10, excluded={0, 1, 2})
    assert [len(r) for r in rows] == [5, 7] and not {0, 1, 2} & {t for r in rows for t in r}


def test_variant_spec():
    assert parse_variant("f4=fast:per_device_train_batch_size=4,env.X=1") == (
        "f4", "fast", {"per_device_train_batch_size": "4", "env.X": "1"})
    with pytest.raises(ValueError):
        parse_variant("x=nope:lora_r=8")
    assert set(CONFIGS) == {"seed", "tutorial", "hf", "fast"}


def test_fast_schedule_keeps_the_recipe_data_budget():
    s = sizing.fast_schedule()
    assert s == {"max_steps": 15, "learning_rate": pytest.approx(4e-4), "warmup_steps": 1}
    # same number of training tokens: SCALE x the tokens per step, 1/SCALE of the steps
    assert s["max_steps"] * sizing.SCALE == pytest.approx(sizing.RECIPE_STEPS, abs=sizing.SCALE)
    assert s["learning_rate"] == pytest.approx(sizing.RECIPE_LR * math.sqrt(sizing.SCALE))


@pytest.mark.parametrize("free_gib,processes", [(78, 1), (70, 1), (47, 1), (39, 1), (22, 1), (15, 1), (7, 1),
                                                (78, 2), (15, 4), (78, 8)])
def test_micro_batch_plan_fits_and_keeps_rows_per_step(free_gib, processes):
    plan = sizing.plan_micro_batches(free_gib, processes=processes)
    rows = plan["per_device_train_batch_size"] * plan["gradient_accumulation_steps"] * processes
    assert rows == sizing.PACKED_ROWS  # the optimizer step is the same on every GPU
    estimate = sizing.estimate_gib(plan["per_device_train_batch_size"], 2048, plan["gradient_checkpointing"])
    assert estimate <= sizing.HEADROOM * free_gib or plan["per_device_train_batch_size"] == 1


def test_memory_decides_recomputation():
    big, t4 = sizing.plan_micro_batches(78), sizing.plan_micro_batches(15)
    assert big["gradient_checkpointing"] == "false" and big["per_device_train_batch_size"] >= 4
    assert t4["gradient_checkpointing"] == "unsloth"


def test_fast_preset_is_sized_by_free_memory(monkeypatch):
    from medr1 import build_config

    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 15.0)
    small = build_config("fast", {"output_dir": "/tmp/x"}, quiet=True)
    assert small.gradient_checkpointing == "unsloth" and small.packing
    monkeypatch.setattr(sizing, "free_gpu_gib", lambda total=False: 78.0)
    big = build_config("fast", {"output_dir": "/tmp/x"}, quiet=True)
    assert big.gradient_checkpointing == "false"
    assert big.per_device_train_batch_size * big.gradient_accumulation_steps == sizing.PACKED_ROWS
    assert big.max_steps == 15 and big.learning_rate == pytest.approx(4e-4)
    mine = build_config("fast", {"output_dir": "/tmp/x", "per_device_train_batch_size": 2}, quiet=True)
    assert mine.per_device_train_batch_size == 2  # the user's override wins over the sizing


def test_packed_rows_do_not_see_each_other_on_cpu():
    """transformers' SDPA path, with the mask it builds from the restarted positions of a padding-free batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medr1.tiny import tiny_model_path

    path = str(tiny_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    rows = random_rows(row_lengths(6, seed=3, divisor=4), len(tokenizer), excluded, seed=3)
    check = script("packing").packing_check(model, rows, tokenizer.pad_token_id, max_length=1024)
    assert check["rows"] >= 3
    assert check["rel_error"] < 1e-4, check
    assert check["leak_gap"] > 100 * check["rel_error"], check  # rows that could see each other would show


def test_eval_bench_writes_the_json(tmp_path):
    """benchmarks/bench_eval.py on a CPU: the tiny model through plain `generate` and through medr1's decoder."""
    out = tmp_path / "eval.json"
    code = script("bench_eval").main(
        ["--prompts", "6", "--baseline-prompts", "3", "--max-new-tokens", "6", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report
    results = {r["config"]: r for r in report["results"]}
    assert list(results) == ["hf-generate", "medr1"]
    for r in results.values():
        assert {"config", "generated_tokens_per_s", "batch", "ms_per_step", "peak_gib"} <= set(r), r
        assert r["generated_tokens_per_s"] > 0 and r["ms_per_step"] > 0 and r["peak_gib"] is None
    assert results["hf-generate"]["prompts"] == 3 and results["medr1"]["prompts"] == 6
    assert 0 < results["medr1"]["generated_tokens"] <= 6 * 6 and results["medr1"]["batch"] == 6
    for check in results["medr1"]["agreement"].values():  # the same tokens at every batch size
        assert check["token_agreement"] == 1.0 and check["identical_rows"] == check["rows"], check
    assert report["speedup"] > 0 and report["estimates"]["medqa_minutes_medr1"] > 0


def test_several_gpus_are_compared_with_one():
    """`--gpus`: the process counts to add, and each N-GPU result against the same configuration on one GPU."""
    _finish, _gpu_counts = bench._finish, bench._gpu_counts
    assert _gpu_counts("1,2,4") == [2, 4] and _gpu_counts("") == []
    with pytest.raises(ValueError, match="--gpus"):
        _gpu_counts("0,2")
    one = {"config": "fast", "base": "fast", "gpus": 1, "trained_tokens_per_s": 100.0, "tokens_per_step": 10,
           "losses": [3.0, 2.5, 2.0]}
    split = {"config": "fast-2gpu", "base": "fast", "gpus": 2, "trained_tokens_per_s": 180.0, "tokens_per_step": 10,
             "losses": [3.0, 2.5004, 2.0]}
    same = {"config": "fast-2gpu-same-micro", "base": "fast", "gpus": 2, "trained_tokens_per_s": 190.0,
            "tokens_per_step": 20, "losses": [3.0, 2.6, 2.2]}
    _finish([one, split, same])
    assert split["speedup_vs_1gpu"] == 1.8 and same["speedup_vs_1gpu"] == 1.9
    assert split["loss_max_abs_diff_vs_1gpu"] == pytest.approx(4e-4)  # the same global batch: the same losses
    assert "loss_max_abs_diff_vs_1gpu" not in same  # twice the batch: another loss history, not compared


def test_bench_model_rebuilds_a_tiny_model_of_an_older_recipe(tmp_path, monkeypatch):
    import medr1.tiny as tiny

    built = []
    monkeypatch.setattr(tiny, "build_tiny", lambda path: built.append(path) or path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")  # a model is there: only the stamp's recipe is old
    (tmp_path / tiny.STAMP).write_text(json.dumps({"version": tiny.TINY_VERSION - 1, "seed": 0, "pad": "unsloth"}))
    assert bench.bench_model(str(tmp_path), cpu=True) == tmp_path and built == [tmp_path]  # stale: built again
    (tmp_path / tiny.STAMP).write_text(json.dumps({"version": tiny.TINY_VERSION, "seed": 0, "pad": "unsloth"}))
    assert bench.bench_model(str(tmp_path), cpu=True) == tmp_path and built == [tmp_path]  # current: kept


def test_build_8b_rebuilds_a_folder_of_another_recipe(tmp_path, monkeypatch):
    import transformers

    saved = []

    class Model:  # no 8B of weights on a CPU: only where it is saved
        def save_pretrained(self, folder):
            saved.append(folder)
            (folder / "config.json").write_text("{}")
            (folder / "model-00001-of-00004.safetensors").write_bytes(b"")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", lambda config: Model())
    path = tmp_path / "8b"
    path.mkdir()
    (path / "config.json").write_text("{}")  # an older build, without the recipe's stamp
    assert bench.build_8b(path) == path and len(saved) == 1
    assert {"config.json", "tokenizer.json", bench.STAMP_8B} <= {p.name for p in path.iterdir()}
    assert bench.build_8b(path) == path and len(saved) == 1  # current: kept

"""benchmarks/default_pair.py: every decoder side by side, with a consistent table, JSON and plot."""

from __future__ import annotations

import json
import re

import pytest
from helpers import load_benchmark
from tiny import tiny_chat_draft_pair

from rstitch_engine import StitchEngine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

bench = load_benchmark("default_pair")


@pytest.fixture(scope="module")
def tiny_draft_engine():
    """A tiny LLM and a draft cut from it, over a tokenizer with a chat template."""
    return StitchEngine(tiny_chat_draft_pair())


def test_every_config_on_a_tiny_pair_with_exact_cross_checks(tiny_draft_engine, tmp_path, capsys):
    # tau = 2 never switches (the SLM alone); tau = -1 always does (the LLM alone).
    # A hand-back threshold of 0.5 runs only with tau -1 (below it): the LLM still writes every token.
    args = bench.parse_args(["--limit", "2", "--taus", "2,-1", "--hand-back", "0.5", "--max-new-tokens", "6",
                             "--no-progress", "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png")])
    report = bench.run(tiny_draft_engine, args)
    names = ["SLM alone", "LLM alone", "assisted (HF)", "R-Stitch tau=2", "R-Stitch tau=-1", "R-Stitch tau=-1 back=0.5"]
    assert [row["config"] for row in report["rows"]] == names
    answers = report["answers"]
    assert len(answers) == 2 * len(names) and report["items"] == 2
    by = {(a["item"], a["config"]): a for a in answers}
    for item in {a["item"] for a in answers}:
        slm, llm = by[item, "SLM alone"], by[item, "LLM alone"]
        assert by[item, "R-Stitch tau=2"]["token_ids"] == slm["token_ids"]
        assert by[item, "R-Stitch tau=2"]["switches"] == 0
        assert by[item, "R-Stitch tau=-1"]["token_ids"] == llm["token_ids"]
        assert by[item, "R-Stitch tau=-1 back=0.5"]["token_ids"] == llm["token_ids"]
        assert by[item, "assisted (HF)"]["token_ids"] == llm["token_ids"]  # greedy speculative decoding is lossless
        assert by[item, "assisted (HF)"]["llm_passes"] >= 1
        for config in names:  # one NLL per distinct output
            if by[item, config]["token_ids"] == llm["token_ids"]:
                assert by[item, config]["nll"] == llm["nll"]

    rows = {row["config"]: row for row in report["rows"]}
    assert rows["LLM alone"]["speedup"] == 1.0 and rows["LLM alone"]["speedup_mean_per_item"] == 1.0
    assert rows["LLM alone"]["agree_text"] == rows["LLM alone"]["agree_answer"] == 1.0
    assert rows["R-Stitch tau=-1"]["agree_text"] == rows["assisted (HF)"]["agree_text"] == 1.0
    assert rows["SLM alone"]["slm_share"] == rows["R-Stitch tau=2"]["slm_share"] == 1.0
    assert rows["LLM alone"]["slm_share"] == rows["R-Stitch tau=-1"]["slm_share"] == 0.0
    assert rows["R-Stitch tau=-1"]["switches"] >= 1 and rows["SLM alone"]["switches"] is None
    assert rows["R-Stitch tau=-1 back=0.5"]["hand_back"] == 0.5 and rows["R-Stitch tau=-1"]["hand_back"] is None
    for row in report["rows"]:
        mine = [a for a in answers if a["config"] == row["config"]]
        assert row["accuracy"] == sum(a["correct"] for a in mine) / 2
        assert row["tokens"] == sum(a["tokens"] for a in mine) / 2
        assert row["latency_s"] == pytest.approx(sum(a["seconds"] for a in mine) / 2)
        assert row["speedup"] == pytest.approx(sum(a["llm_alone_seconds"] for a in mine) / sum(a["seconds"] for a in mine))

    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"])) and saved["table"] == report["table"]
    assert saved["pair"] == {"slm": "tiny-draft", "llm": "tiny-qwen2"} and saved["taus"] == [2.0, -1.0]
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert report["table"] in printed
    table_lines = report["table"].splitlines()
    assert len(table_lines) == 2 + len(names)
    assert all(line.count("|") == 12 for line in table_lines)
    assert table_lines[3].startswith("| LLM alone |") and "| 1.00x | 1.00x |" in table_lines[3]


def test_repeats_pool_their_runs_and_report_each_with_the_spread(tiny_draft_engine, capsys):
    args = bench.parse_args(["--limit", "2", "--taus", "-1", "--max-new-tokens", "4", "--no-progress",
                             "--baselines", "assisted", "--repeats", "2"])
    report = bench.run(tiny_draft_engine, args)
    names = ["LLM alone", "assisted (HF)", "R-Stitch tau=-1"]  # the LLM alone runs whatever the baselines say
    assert [row["config"] for row in report["rows"]] == names and report["repeats"] == 2
    assert len(report["answers"]) == 2 * 2 * len(names) and report["items"] == 2
    first, second = ([a for a in report["answers"] if a["run"] == run] for run in (0, 1))
    assert [a["token_ids"] for a in first] == [a["token_ids"] for a in second]  # greedy: each run decodes alike
    for run, rows in zip((first, second), report["runs"]):
        assert [r["speedup"] for r in rows["rows"]] == [r["speedup"] for r in bench.summarise(run, bench.configs_for([-1.0], ["assisted"]))]
    pooled = {row["config"]: row for row in report["rows"]}
    assert pooled["R-Stitch tau=-1"]["accuracy"] == report["runs"][0]["rows"][2]["accuracy"]
    printed = capsys.readouterr().out
    assert "| run 1: acc / speedup | run 2: acc / speedup | spread: acc / speedup |" in printed
    assert re.search(r"\| LLM alone \| ([\d.]+)% / 1\.00x \| \1% / 1\.00x \| 0\.0 pt / 0\.00x \|", printed)


def test_ctrl_c_reports_the_items_finished(tiny_draft_engine, monkeypatch):
    from rstitch_engine import GenerationSettings
    from rstitch_engine.measure.quality import quality_suite

    configs = bench.configs_for([0.5])
    real_run, calls = bench.run_config, []

    def interrupt_in_the_third_item(*args):
        calls.append(args)
        if len(calls) == len(configs) * 3 + 2:  # warm-up, two items, then Ctrl-C inside the third
            raise KeyboardInterrupt
        return real_run(*args)

    monkeypatch.setattr(bench, "run_config", interrupt_in_the_third_item)
    records = bench.benchmark(tiny_draft_engine, quality_suite("heldout")[:4], configs,
                              GenerationSettings(max_new_tokens=3), progress=False)
    assert len(records) == 2 * len(configs) and len({r["item"] for r in records}) == 2


def test_rotation_puts_every_config_first_in_turn():
    configs = bench.configs_for([0.01, 0.1])
    assert [c.name for c in configs] == ["SLM alone", "LLM alone", "assisted (HF)", "R-Stitch tau=0.01",
                                         "R-Stitch tau=0.1"]
    assert {0.001, 0.01, 0.02, 0.03, 0.05, 0.1} <= set(bench.DEFAULT_TAUS)  # the thresholds the issue asks for


@pytest.mark.slow
@pytest.mark.real_model
def test_the_command_on_the_default_pair(tmp_path, capsys):
    out = tmp_path / "default_pair.json"
    assert bench.main(["--limit", "2", "--taus", "0.01,0.1", "--no-progress", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["items"] == 2 and len(report["answers"]) == 2 * 5 and report["max_new_tokens"] == 32
    rows = {row["config"]: row for row in report["rows"]}
    assert rows["LLM alone"]["speedup"] == 1.0 and rows["LLM alone"]["agree_text"] == 1.0
    assert rows["SLM alone"]["slm_share"] == 1.0 and 0.0 <= rows["R-Stitch tau=0.1"]["slm_share"] <= 1.0
    assert all(row["nll"] >= 0 and row["latency_s"] > 0 for row in report["rows"])
    assert report["table"] in capsys.readouterr().out


def test_plot_labels_of_coinciding_points_are_merged_and_distant_ones_kept():
    def row(config, kind, tau, speedup, accuracy):
        return {"config": config, "kind": kind, "tau": tau, "speedup": speedup, "accuracy": accuracy}

    rows = [row("LLM alone", "llm", None, 1.0, 0.67), row("R-Stitch tau=0.001", "stitch", 0.001, 0.96, 0.67),
            row("R-Stitch tau=0.01", "stitch", 0.01, 0.95, 0.668), row("R-Stitch tau=0.3", "stitch", 0.3, 1.73, 0.45),
            row("SLM alone", "slm", None, 3.25, 0.147)]
    groups = bench.label_groups(rows)
    assert [labels for _, labels in groups] == [["LLM alone", "tau=0.001", "tau=0.01"], ["tau=0.3"], ["SLM alone"]]
    assert groups[0][0] == (1.0, 67.0)


def test_choose_tau_on_the_generalisation_tuning_part_takes_the_fastest_tau_within_the_margin(
        tiny_draft_engine, monkeypatch, tmp_path, capsys):
    from rstitch_engine.measure.generalisation import TEMPLATES, generalisation_suite

    choose_tau = load_benchmark("choose_tau")
    monkeypatch.setattr(choose_tau, "load_engine", lambda *args: tiny_draft_engine)
    out = tmp_path / "tau.json"
    assert choose_tau.main(["--suite", "generalisation", "--every", "60", "--taus", "2,-1", "--max-new-tokens", "4",
                            "--margin", "100", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    tuning = generalisation_suite("tuning")[::60]
    assert report["suite"] == "generalisation" and report["items"] == len(tuning)
    assert [a["item"] for a in report["answers"] if a["config"] == "LLM alone"] == [item.id for item in tuning]
    stitched = [row for row in report["rows"] if row["kind"] == "stitch"]
    assert report["chosen"]["config"] == max(stitched, key=lambda row: row["speedup"])["config"]  # all within 100 pt
    assert choose_tau.choose(report["rows"], margin_points=-100) is None  # none beats the LLM by 100 points
    assert set(report["per_skill"]) == {item.skill for item in tuning} and set(report["per_skill"]) <= set(TEMPLATES)
    assert "| skill | items |" in capsys.readouterr().out


def test_lookup_configs_and_the_skill_filter(tiny_draft_engine, tmp_path):
    """--lookup adds quality='exact' through the engine (the LLM's tokens, with prompt lookup) per K,
    --stitch-lookup each tau with it, --auto the 'auto' preset; --skills keeps only those skills' items."""
    args = bench.parse_args(["--suite", "generalisation", "--part", "tuning", "--skills", "multiturn,sum", "--every", "20",
                             "--taus=-1,0.1", "--baselines", "llm", "--lookup", "2,4", "--stitch-lookup", "--auto",
                             "--max-new-tokens", "6", "--no-progress", "--plot", str(tmp_path / "lookup.png")])
    report = bench.run(tiny_draft_engine, args)
    auto = "auto (the default preset)"
    names = ["LLM alone", "exact (LLM + lookup 2)", "exact (LLM + lookup 4)", auto, "R-Stitch tau=-1",
             "R-Stitch tau=0.1", "R-Stitch tau=-1 lookup=2", "R-Stitch tau=0.1 lookup=2", "R-Stitch tau=-1 lookup=4",
             "R-Stitch tau=0.1 lookup=4"]
    assert [row["config"] for row in report["rows"]] == names
    assert report["skills"] == ["multiturn", "sum"] and report["lookups"] == [2, 4]
    rows = {row["config"]: row for row in report["rows"]}
    assert rows[auto]["switches"] is not None and rows["exact (LLM + lookup 2)"]["switches"] is None
    assert f"| {auto} |" in report["cost_table"] and "| exact (LLM" not in report["cost_table"]
    assert (tmp_path / "lookup.png").read_bytes()[:4] == b"\x89PNG"  # every kind has a colour
    by = {(a["item"], a["config"]): a for a in report["answers"]}
    for item in {a["item"] for a in report["answers"]}:
        for name in ["exact (LLM + lookup 2)", "exact (LLM + lookup 4)", "R-Stitch tau=-1 lookup=2"]:
            assert by[item, name]["token_ids"] == by[item, "LLM alone"]["token_ids"]  # float64: the LLM's own tokens
        assert by[item, "R-Stitch tau=0.1 lookup=4"]["token_ids"] == by[item, "R-Stitch tau=0.1"]["token_ids"]
        # the tiny pair has no calibration profile: 'auto' is the LLM alone with prompt lookup
        assert by[item, auto]["token_ids"] == by[item, "LLM alone"]["token_ids"]
    with pytest.raises(SystemExit, match="no item"):
        bench.run(tiny_draft_engine, bench.parse_args(["--suite", "generalisation", "--skills", "nonesuch"]))

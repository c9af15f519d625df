"""The benchmark scripts run and report what they promise (on tiny data, not for figures)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from model.inkml import write_inkml
from tests.conftest import REPO, SYNTHETIC_EXPRESSIONS
from tests.synthetic_ink import ink_for


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_latency_benchmark_compares_with_the_full_prefix_baseline(tmp_path, tiny_checkpoint):
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:3]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "lat.json"
    done = _run("benchmarks/latency.py", "--data", str(tmp_path / "data"), "--split", "mini", "--limit", "3",
                "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert {"p50_ms", "p95_ms", "baseline_p50_ms", "speedup", "identical", "n", "checkpoint", "threads"} <= set(report)
    assert report["n"] == 3 and report["identical"] == 1.0  # caching changes the speed, never the answer
    assert report["no_cache_identical"] == 1.0 and report["no_cache_p50_ms"] > 0


def test_latency_benchmark_reports_the_arithmetic_floor_below_the_measured_times(tmp_path, tiny_checkpoint):
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:3]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "floor.json"
    done = _run("benchmarks/latency.py", "--data", str(tmp_path / "data"), "--split", "mini", "--limit", "3",
                "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--no-baseline", "--floor", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert 0 < report["gflop_p50"] <= report["gflop_p95"] and report["fp32_peak_gflops"] > 0
    assert 0 < report["floor_p50_ms"] < report["p50_ms"] and report["over_floor_p50"] > 1
    assert report["floor_p50_ms"] == pytest.approx(report["gflop_p50"] / report["fp32_peak_gflops"] * 1000)


def test_operations_are_counted_for_the_whole_recognition(tiny_checkpoint):
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.latency import count_flops
    from model.recognizer import Recognizer

    rec = Recognizer.load(tiny_checkpoint, device="cpu")
    strokes = ink_for(SYNTHETIC_EXPRESSIONS[0])
    beam, greedy = count_flops(rec, strokes, 3), count_flops(rec, strokes, 1)
    image = torch.from_numpy(rec.recognize(strokes, 1).image)[None, None]
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        rec.model.encode(image, torch.zeros(1, *image.shape[2:], dtype=torch.bool))
    assert counter.get_total_flops() < greedy < beam  # the searches are counted, not only the encoder
    assert count_flops(rec, strokes, 3) == beam  # each count encodes afresh: the kept encoding is not reused


def test_latency_benchmark_times_a_second_checkpoint_on_the_same_expressions(tmp_path, tiny_checkpoint):
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.hmer import HMER

    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:4]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    trained, vocab, _ = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "untrained.pt", HMER(trained.config), vocab)  # reads none of them right
    out = tmp_path / "ab.json"
    done = _run("benchmarks/latency.py", "--data", str(tmp_path / "data"), "--split", "mini", "--limit", "4",
                "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--no-baseline",
                "--against", str(tmp_path / "untrained.pt"), "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    against = report["against"]
    assert against["checkpoint"].endswith("untrained.pt") and against["p50_ms"] > 0
    assert against["ratio_p50"] == pytest.approx(report["p50_ms"] / against["p50_ms"])
    assert against["same_reading"] == 0.0  # the trained model reads all four, the untrained one none


def test_reference_baseline_decodes_the_rows_of_finished_directions_too(tiny_checkpoint):
    from benchmarks.latency import FullPrefixDecoder
    from model.checkpoint import load_checkpoint

    model, _, _ = load_checkpoint(tiny_checkpoint)
    model.eval()
    memory, mask = torch.randn(1, 2, 5, model.config.d_model), torch.zeros(1, 2, 5, dtype=torch.bool)
    batches: list[int] = []
    model.decoder.register_forward_hook(lambda mod, args, out: batches.append(args[2].shape[0]))
    tokens = torch.tensor([4, 7])  # two live rows of a batch the reference kept at six
    with torch.inference_mode():
        ref = FullPrefixDecoder(model, rows=6)
        ours = FullPrefixDecoder(model)
        ref_main, _, _ = ref.step(ref.start(memory, mask, torch.zeros(2, dtype=torch.long)), tokens)
        main, _, _ = ours.step(ours.start(memory, mask, torch.zeros(2, dtype=torch.long)), tokens)
    assert batches == [6, 2]
    assert ref_main.shape == (2, model.config.vocab_size) and torch.allclose(ref_main, main, atol=1e-5)


def test_train_throughput_benchmark_reports_all_three_settings(tmp_path):
    out = tmp_path / "tp.json"
    done = _run("benchmarks/train_throughput.py", "--preset", "tiny", "--batches", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["images_per_s"]) == {"fp32", "bf16", "bf16+channels_last"}
    assert report["bf16_loss_rel_diff"] < 0.05


def _two_writers(data):
    """Writer 7 with 4 expressions, writer 8 with 2, and a small training split to replay."""
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:6]):
        write_inkml(data / "2014" / f"w{i}.inkml", ink_for(latex), latex, writer="7" if i < 4 else "8")
        write_inkml(data / "train" / f"t{i}.inkml", ink_for(latex, size=11.0), latex)
    write_inkml(data / "2014" / "w5.inkml", ink_for(SYNTHETIC_EXPRESSIONS[0], seed=5), SYNTHETIC_EXPRESSIONS[0], writer="8")


def test_adaptation_benchmark_tests_every_expression_of_a_writer_once(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    _two_writers(data)
    out = tmp_path / "adapt.json"
    done = _run("benchmarks/adaptation.py", "--data", str(data), "--checkpoint", str(tiny_checkpoint),
                "--splits", "2014", "--writers", "1", "--steps", "3", "--others", "1", "--check", "1",
                "--slant", "0.4", "--squeeze", "0.7", "--shares", "0.5", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (row,) = report["writers"]
    assert row["writer"] == "2014/7" and row["expressions"] == 4 and len(row["steps"]) == 2
    assert report["trainable"] == "encoder" and report["replay"] is True
    assert report["simulated_style"] == {"slant": 0.4, "squeeze": 0.7}
    assert 0.0 <= row["writer_plain"] <= 100.0  # the same writer's plain ink, to show what the style costs
    assert {"pooled_writer_before", "pooled_writer_after", "mean_others_change"} <= set(report)
    # each fold measured again as the app keeps it: at most the default share of the change, less
    # when the forgetting limit's check set (apart from the forgetting sample) requires
    assert len(row["limited"]["shares"]) == 2 and all(s in (0.75, 0.5, 0.25, 0.0) for s in row["limited"]["shares"])
    assert report["keep"] == 0.5 and report["max_forgetting"] == 1.0 and report["check"] == 1
    assert {"limited_pooled_writer_after", "limited_mean_others_change"} <= set(report)
    # and, when asked, keeping only part of each fold's weight change
    assert set(row["by_share"]) == {"0.5"} and set(report["by_share"]["0.5"]) == {"pooled_writer_after",
                                                                                  "mean_others_change"}
    # each fold at each share: the writer's test fold, the others, what the check saw (lost, gained),
    # to judge other limit rules offline; the folds add up to the writer's figures
    assert [set(f["by_share"]) for f in row["folds"]] == [{"1.0", "0.5"}] * 2
    assert sum(f["test"] for f in row["folds"]) == 4
    seen = [n for f in row["folds"] for m in f["by_share"].values() for n in m["check_lost_gained"]]
    assert seen and all(0 <= n <= 1 for n in seen)
    read = {share: sum(f["by_share"][share]["test_read"] for f in row["folds"]) for share in ("1.0", "0.5")}
    assert 100 * read["1.0"] / 4 == pytest.approx(row["writer_after"])
    assert 100 * read["0.5"] / 4 == pytest.approx(row["by_share"]["0.5"]["writer_after"])
    # the others' expressions lost and gained, to tell a writer's loss elsewhere from chance
    for m in (m for f in row["folds"] for m in f["by_share"].values()):
        lost, gained = m["others_lost_gained"]
        assert m["others"] == pytest.approx(row["others_before"] + 100 * (gained - lost))  # of one expression
    limited = [f["limited"] for f in row["folds"]]
    assert [m["share"] for m in limited] == row["limited"]["shares"]
    assert 100 * sum(m["test_read"] for m in limited) / 4 == pytest.approx(row["limited"]["writer_after"])


def test_adaptation_benchmark_can_watch_every_other_expression(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    _two_writers(data)
    out = tmp_path / "adapt.json"
    args = ["benchmarks/adaptation.py", "--data", str(data), "--checkpoint", str(tiny_checkpoint), "--splits", "2014",
            "--writers", "1", "--steps", "1", "--check", "1", "--no-replay", "--json", str(out)]  # fmt: skip
    done = _run(*args, "--others", "all")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    # writer 7's four expressions are the writer's; of writer 8's two, one is the check, one the others
    assert report["others"] == "all"
    assert report["writers"][0]["others_expressions"] == 1 and report["writers"][0]["check_expressions"] == 1
    lost, gained = report["writers"][0]["folds"][0]["by_share"]["1.0"]["others_lost_gained"]
    assert 0 <= lost + gained <= 1
    assert report["writers"][0]["others_before"] in (0.0, 100.0)
    refused = _run(*args, "--others", "some")
    assert refused.returncode == 2 and "--others" in refused.stderr


def test_adaptation_benchmark_can_pass_over_the_writers_an_earlier_run_measured(tmp_path, tiny_checkpoint):
    data = tmp_path / "data"
    _two_writers(data)
    out = tmp_path / "adapt.json"
    args = ["benchmarks/adaptation.py", "--data", str(data), "--checkpoint", str(tiny_checkpoint), "--splits", "2014",
            "--writers", "1", "--steps", "2", "--others", "1", "--check", "1", "--no-replay", "--json", str(out)]
    done = _run(*args, "--skip-writers", "1")
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    (row,) = report["writers"]
    assert row["writer"] == "2014/8" and row["expressions"] == 2 and report["skip_writers"] == 1  # the second-largest
    refused = _run(*args, "--skip-writers", "-1")
    assert refused.returncode == 2 and "--skip-writers" in refused.stderr


def test_simulated_writer_style_slants_the_expression_and_narrows_each_stroke():
    spec = importlib.util.spec_from_file_location("adaptation", REPO / "benchmarks" / "adaptation.py")
    adaptation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adaptation)
    from train.data import Example

    vertical = np.array([[0.0, 0.0, 0.5], [0.0, 10.0, 0.7]])  # x, y (down), pressure
    horizontal = np.array([[20.0, 5.0], [30.0, 5.0]])
    plain = Example("e", [vertical, horizontal], ["1", "-"])
    styled = adaptation.with_style(plain, slant=0.5, squeeze=0.6)
    top, bottom = styled.strokes[0][:, :2]
    assert top[0] - bottom[0] == 5.0 and (top[1], bottom[1]) == (0.0, 10.0)  # the top leans right
    assert np.array_equal(styled.strokes[0][:, 2], vertical[:, 2])  # pressure kept
    assert np.ptp(styled.strokes[1][:, 0]) == 6.0 and styled.strokes[1][:, 0].mean() == 25.0  # narrowed in place
    assert plain.strokes[0] is vertical and styled.tokens == plain.tokens  # the original is untouched
    assert adaptation.with_style(plain, 0.0, 1.0) is plain


def test_search_stopping_replay_reproduces_the_reference_search(tmp_path, tiny_checkpoint):
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:3]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "stop.json"
    done = _run("benchmarks/search_stopping.py", "--data", str(tmp_path / "data"), "--split", "mini",
                "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    rules = json.loads(out.read_text())["rules"]
    assert rules["reference"]["identical"] == 1.0 and rules["reference"]["exprate"] == 100.0
    assert rules["1 finished"]["mean_steps"] <= rules["reference"]["mean_steps"]


def test_train_step_profile_counts_shapes_and_times_fresh_and_seen_ones(tmp_path):
    data = tmp_path / "data"
    for i in range(12):
        latex = SYNTHETIC_EXPRESSIONS[i % len(SYNTHETIC_EXPRESSIONS)]
        write_inkml(data / "train" / f"t{i}.inkml", ink_for(latex, size=9.0 + i), latex)
    out = tmp_path / "profile.json"
    done = _run("benchmarks/train_step_profile.py", "--data", str(data), "--preset", "tiny", "--device", "cpu",
                "--steps", "2", "--workers", "0", "--max-batch", "1", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    plain, padded = report["shapes_multiple_1_1"], report["shapes_multiple_32_8"]
    assert plain["batches"] == padded["batches"] == 12
    assert padded["encoder_shapes"] < plain["encoder_shapes"]  # padding is what makes shapes repeat
    for layout in ("channels_last", "contiguous"):
        assert set(report[layout]) == {"fresh_ms", "seen_again_ms", "one_shape_ms"}
    assert report["loader_batches_per_s"] > 0 and "top_by_self_cpu_time_total" in report


def test_failure_report_separates_dropped_symbols_from_substitutions(tmp_path):
    from benchmarks.failure_report import main

    failures = [
        {"prediction": "x + 1", "truth": "x + 1 0"},  # a dropped symbol
        {"prediction": "c ^ { 2 }", "truth": "C ^ { 2 }"},  # one wrong token: case
        {"prediction": "c } 2 {", "truth": "C { 2 }"},  # same length, three wrong tokens
        {"prediction": "a + b + c", "truth": "a + b"},  # an extra symbol
    ]
    src, out = tmp_path / "eval.json", tmp_path / "report.json"
    src.write_text(json.dumps({"failures": failures}))
    assert main([str(src), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["failures"], r["shorter_pct"], r["longer_pct"], r["same_length_pct"]) == (4, 25.0, 25.0, 50.0)
    assert r["single_substitutions"] == [["C", "c", 1]]
    assert r["same_length_substitutions"][0] == ["C", "c", 2]
    assert r["brace_swaps"] == 2
    assert main([str(tmp_path / "missing.json")]) == 2


def test_nbest_rerank_reproduces_the_search_ranking_and_bounds_it_by_the_oracle(tmp_path, tiny_checkpoint):
    from benchmarks.nbest_rerank import main
    from model.checkpoint import load_checkpoint
    from train.data import load_split
    from train.evaluate import evaluate_examples

    truths = list(SYNTHETIC_EXPRESSIONS[:4])
    for i, latex in enumerate(truths):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), "1 + 2 +" if i == 0 else latex)
    out = tmp_path / "nbest.json"
    args = ["--data", str(tmp_path / "data"), "--split", "mini", "--checkpoint", str(tiny_checkpoint), "--beam", "3"]
    assert main([*args, "--rescore", str(tiny_checkpoint), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    model, vocab, _ = load_checkpoint(tiny_checkpoint)
    examples, _ = load_split(tmp_path / "data", "mini", vocab)
    exprate = evaluate_examples(model, vocab, examples, beam=3, show_progress=False)["exprate"]
    assert report["n"] == 4
    assert report["rerank"]["reference"] == report["top_k"]["1"] == exprate == 75.0  # the search's own pick
    assert report["top_k"]["1"] <= report["top_k"]["5"] <= report["oracle"]
    # a companion that is the same model doubles every score: the ranking cannot change
    assert report["rerank"]["main+1:" + tiny_checkpoint.stem] == report["rerank"]["reference"]


def test_compare_evals_counts_the_expressions_only_one_model_reads_and_pools_splits_apart(tmp_path, capsys):
    from benchmarks.compare_evals import main

    def report(split: str, failed: int) -> dict:
        return {"split": split, "n": 100, "failures": [{"id": f"f{i}"} for i in range(failed)]}

    files = []
    for name, rep in [("b14", report("2014", 30)), ("n14", report("2014", 20)),  # new fixes 10, breaks none
                      ("b16", report("2016", 10)), ("n16", report("2016", 12))]:  # same ids, other split
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(rep))
    out = tmp_path / "cmp.json"
    assert main([*map(str, files), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    first, second, pooled = r["pairs"][0], r["pairs"][1], r["pooled"]
    assert (first["base_exprate"], first["new_exprate"], first["difference"]) == (70.0, 80.0, 10.0)
    assert (first["only_new_right"], first["only_base_right"]) == (10, 0)
    assert abs(first["p_value"] - 2 / 2**10) < 1e-12  # ten to none: exact sign test
    assert (second["only_new_right"], second["only_base_right"], second["p_value"]) == (0, 2, 0.5)
    assert (pooled["n"], pooled["only_new_right"], pooled["only_base_right"]) == (200, 10, 2)
    assert abs(pooled["p_value"] - 2 * (1 + 12 + 66) / 2**12) < 1e-12
    assert pooled["ci95"][0] < pooled["difference"] == 4.0 < pooled["ci95"][1]

    capsys.readouterr()
    assert main([str(files[0]), str(files[3])]) == 2  # 2014 against 2016
    assert "do not score the same expressions" in capsys.readouterr().err
    assert main([str(files[0])]) == 2
    assert "in pairs" in capsys.readouterr().err
    assert main([str(files[0]), str(files[1]), str(files[0]), str(files[1])]) == 2  # nothing to pool
    assert "comes twice" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text(json.dumps({"split": "x", "n": 0, "failures": []}))
    assert main([str(tmp_path / "empty.json")] * 2) == 2
    assert "no expressions" in capsys.readouterr().err


def test_token_fixes_counts_readings_one_offered_replacement_from_right(tmp_path, tiny_checkpoint):
    from benchmarks.token_fixes import main, outcome, summarize
    from model.prediction import Alternative, Prediction

    def reading(latex: str, probs: list[float], offered: list[list[str]], others: tuple[str, ...] = ()):
        tokens = latex.split()
        return Prediction(
            latex=latex, tokens=tokens, score=-1.0, token_probs=np.array(probs),
            attention=np.zeros((len(tokens), 1, 1)), image=np.zeros((16, 16), np.float32), ink_to_image=None,
            downsample=16, structure=tokens, expected_structure=tokens,
            alternatives=[Alternative(s, s.split(), -1.0, 0.5) for s in (latex, *others)],
            token_alternatives=[[(t, 0.1) for t in o] for o in offered],
        )  # fmt: skip

    truth = "C ^ { 2 }".split()
    # right; fixed by the first offered choice; by the third; right among the listed readings;
    # two tokens off, both offered; one token too many; two off, one not offered
    outcomes = [
        outcome(reading("C ^ { 2 }", [0.9] * 5, [[]] * 5), truth),
        outcome(reading("c ^ { 2 }", [0.4, 0.9, 1, 0.8, 1], [["C"], [], [], [], []]), truth),
        outcome(reading("c ^ { 2 }", [0.9, 0.9, 1, 0.3, 1], [["G", "e", "C"], [], [], [], []]), truth),
        outcome(reading("C _ { 2 }", [0.9, 0.5, 1, 0.8, 1], [[], ["+"], [], [], []], ("C ^ { 2 }",)), truth),
        outcome(reading("c _ { 2 }", [0.9] * 5, [["C"], ["^"], [], [], []]), truth),
        outcome(reading("C ^ { 2 } 1", [0.9] * 6, [[]] * 6), truth),
        outcome(reading("c _ { 2 }", [0.9] * 5, [["C"], ["+"], [], [], []]), truth),  # `^` is not offered
    ]
    assert [o.fix_rank for o in outcomes] == [None, 1, 3, None, None, None, None]
    assert [o.two_fixes for o in outcomes] == [False] * 4 + [True, False, False]
    assert [o.confidence_rank for o in outcomes[1:4]] == [1, 2, 1]

    def pct(k: int, n: int = 7):
        return pytest.approx(100 * k / n, abs=0.01)

    r = summarize(outcomes)
    assert (r["exprate"], r["among_readings"], r["one_token_off"]) == (pct(1), pct(2), pct(3))
    assert r["token_fix_at_k"] == {"1": pct(1), "3": pct(2), "5": pct(2)}
    assert r["one_click"] == pct(4) and r["two_clicks"] == pct(5)
    assert r["wrong_token_confidence_rank"]["1"] == pct(2, 3)

    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:3]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "fixes.json"
    assert main(["--data", str(tmp_path / "data"), "--split", "mini", "--checkpoint", str(tiny_checkpoint),
                 "--beam", "3", "--json", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["exprate"] == 100.0 and report["one_click"] == 100.0


def test_live_drawing_requests_the_beam_search_only_when_the_pen_rests():
    # The comparison rests on when each way asks for the beam search: before, once the
    # debounce passed since a pen up, even with the next stroke under way; now, only when
    # the pen stayed up that long.
    from concurrent.futures import Future

    from benchmarks.live_drawing import replay
    from hmer_desktop.service import Result

    class Recording:
        def __init__(self) -> None:
            self.asked: list[tuple[int, int]] = []

        def recognize(self, strokes, ink_version, beam_size):
            self.asked.append((ink_version, beam_size))
            future: Future = Future()
            future.set_result(Result(len(self.asked), ink_version, None, 1.0, "cpu"))
            return future

    strokes = [np.zeros((2, 2))] * 3
    downs, ups = [0.0, 0.07, 0.22], [0.05, 0.20, 0.25]  # pen up for 20 ms twice; up to up 150 and 50 ms
    asked = {}
    for kind in ("before", "now", "compiled"):
        service = Recording()
        report = replay(service, strokes, downs, ups, kind, debounce_s=0.08, beam=10, settle_s=1.0)
        asked[kind] = service.asked
        assert report["previews_missed"] == 0 and report["final_wait_s"] >= 0.08
    assert asked["before"] == [(1, 1), (1, 10), (2, 1), (3, 1), (3, 10)]  # (1, 10) while stroke 2 was drawn
    assert asked["now"] == asked["compiled"] == [(1, 1), (2, 1), (3, 1), (3, 10)]


def test_live_drawing_benchmark_replays_expressions_for_each_way(tmp_path, tiny_checkpoint):
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:2]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "live.json"
    done = _run("benchmarks/live_drawing.py", "--data", str(tmp_path / "data"), "--split", "mini", "--limit", "2",
                "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--draw-ms", "10", "30",
                "--gap-ms", "10", "200", "--ways", "before:100", "now:100", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["n"] == 2 and report["strokes"] == sum(len(ink_for(x)) for x in SYNTHETIC_EXPRESSIONS[:2])
    for way in ("before:100", "now:100"):
        assert report[way]["final_missing"] == 0  # every expression got its beam reading
        assert report[way]["final_wait_p50_ms"] >= 100  # which waits for the debounce
        assert report[way]["preview_wait_p50_ms"] > 0
    bad = _run("benchmarks/live_drawing.py", "--data", str(tmp_path / "data"), "--ways", "later:100")
    assert bad.returncode != 0 and "KIND:DEBOUNCE_MS" in bad.stderr
    missing = _run("benchmarks/live_drawing.py", "--data", str(tmp_path / "data"), "--split", "nope",
                   "--checkpoint", str(tiny_checkpoint))  # fmt: skip
    assert missing.returncode == 2 and "split 'nope' not found" in missing.stderr


def test_gui_pauses_benchmark_times_readings_and_results(tmp_path, tiny_checkpoint):
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS[:2]):
        write_inkml(tmp_path / "data" / "mini" / f"e{i}.inkml", ink_for(latex), latex)
    out = tmp_path / "pauses.json"
    done = _run("benchmarks/gui_pauses.py", "--data", str(tmp_path / "data"), "--split", "mini", "--limit", "2",
                "--longest", "1", "--checkpoint", str(tiny_checkpoint), "--beam", "3", "--wait-compiled", "0",
                "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert len(report["readings"]["expressions"]) == 1 and report["results"]["n"] == 2
    assert 0 < report["readings"]["max_ms"] < 10_000 and 0 < report["results"]["max_ms"] < 10_000

"""`hybridsep bench --bundle`: a shipped bundle's per-window compute and streaming keep-up."""

import json

from hybridsep_rt import cli


def test_bench_measures_a_bundle(small_bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "--bundle", str(small_bundle()), "--hops", "0.5", "--stream-seconds", "2",
                     "--repeats", "1", "--threads", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "per-window compute" in printed and "preset" not in printed
    (result,) = json.loads(out.read_text())
    assert 0 < result["window_compute_s"] < 5 and result["window_s"] == 1.0
    assert 0 < result["tagger_s"] < 5 and "tagger, one window" in printed
    (stream,) = result["streaming"]
    assert stream["hop_s"] == 0.5 and stream["windows"] >= 2

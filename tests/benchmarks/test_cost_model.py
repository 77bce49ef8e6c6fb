"""benchmarks/cost_model.py: the LSTM FLOPs it adds, the plan's arithmetic, and a quick run."""

from __future__ import annotations

import json

import pytest

from benchmarks import cost_model


def test_lstm_flops_match_the_counter_on_the_same_cell_unrolled():
    """The hooks' count equals what torch's counter finds in an LSTM written out as matmuls."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    lstm = torch.nn.LSTM(input_size=6, hidden_size=5, num_layers=2)
    counted = cost_model.count_lstm_flops(lstm)
    x = torch.randn(7, 3, 6)  # steps, batch, features
    lstm(x)

    def unrolled(x):
        for layer in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            h = torch.zeros(x.shape[1], lstm.hidden_size)
            c = torch.zeros_like(h)
            out = []
            for t in range(x.shape[0]):
                i, f, g, o = (x[t] @ w_ih.T + h @ w_hh.T).chunk(4, dim=1)
                c = f.sigmoid() * c + i.sigmoid() * g.tanh()
                h = o.sigmoid() * c.tanh()
                out.append(h)
            x = torch.stack(out)
        return x

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unrolled(x)
    assert counted[0] == counter.get_total_flops() > 0


def test_plan_arithmetic():
    logmel = {"row": "8 h", "audio_h_per_vcpu_h": 400.0}
    model = {"tokenizer": "hubert-l9-km500", "cpu_x_real_time_1_thread": 8.0, "gflop_per_audio_s": 12.1}
    rows = {r["what"]: r for r in cost_model.plan(100_000, 24, logmel, [model])}
    mel = rows["decode + log-mel"]
    assert mel["unit_hours"] == 250 and mel["workers_for_deadline"] == 3  # 250 vCPU-h / 4 vCPUs / 24 h
    worker_hour = cost_model.WORKER["vcpus"] * cost_model.DATAFLOW_VCPU_HOUR + \
        cost_model.WORKER["memory_gb"] * cost_model.DATAFLOW_GB_HOUR
    assert mel["usd"] == round(250 / 4 * worker_hour)
    # 600,000 files of 10 min in 9,375 groups of 64; a group's 1,280 samples make 2 shards of <= 1,000.
    assert mel["shards"] == 18_750 and mel["stream_tb"] == 5.76
    assert cost_model.shard_count(100_000, 60, 100) == 1_563 * 8  # groups of 64 h: 7,680 samples, 8 shards
    assert cost_model.shard_count(100_000, 0.1, 100) == 937_500  # 6 s clips: a group's 64 samples, one shard

    assert rows["hubert-l9-km500 on CPU"]["unit_hours"] == 12_500
    gpu = rows["hubert-l9-km500 on an L4"]
    expected_x = cost_model.L4_DENSE_FP16_FLOPS * cost_model.GPU_UTILIZATION / 12.1e9
    assert gpu["audio_h_per_unit_h"] == round(expected_x) and gpu["usd"] is None and "estimate" in gpu["basis"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_writes_every_row(tmp_path):
    local = tmp_path / "local_memory.json"
    local.write_text(json.dumps({"machine": {"cpus": 2}, "rows": [
        {"row": "one file", "audio_s": 4.0, "wall_s": 3.0, "peak_rss_mb": 700},
        {"row": "1 h", "audio_s": 3600.0, "wall_s": 9.0, "peak_rss_mb": 760}]}))
    out = tmp_path / "cost.json"
    assert cost_model.main(["--quick", "--local-memory", str(local), "--workdir", str(tmp_path / "w"),
                            "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["logmel"]["row"] == "1 h" and report["logmel"]["audio_h_per_vcpu_h"] == 200.0
    assert [m["tokenizer"] for m in report["models"]] == list(cost_model.MODELS)
    for m in report["models"]:
        assert m["gflop_per_audio_s"] > 0.5 and m["cpu_x_real_time_1_thread"] > 0
    assert len(report["rows"]) == 1 + 2 * len(cost_model.MODELS)

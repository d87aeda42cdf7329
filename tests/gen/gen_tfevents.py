#!/usr/bin/env python3
"""TensorBoard event files: golden bytes from TensorBoard's own writer, and qlora's files read
back by TensorBoard's own reader. Run by hand (never at test time); needs `pip install tensorboard`
(2.21.0 when this was written) and a built qlora.

  python3 tests/gen/gen_tfevents.py [--qlora bin/qlora]

(a) Writes tests/fixtures/tfevents/scenario.json (fixed wall times, steps and values, edge cases
    included: step 0, a negative and a 2^40 step, NaN, +-inf, -0.0, values that round to inf or
    to a float32 denormal, a 200-byte tag, a non-ASCII tag, a summary of 20 values, SessionLog
    START and an unspecified status) and tests/fixtures/tfevents/golden.tfevents: those events as
    tensorboard.compat.proto.event_pb2 / summary_pb2 messages, framed by tensorboard's
    RecordWriter (tensorboard.summary.writer.record_writer). It also checks that tensorboard's
    EventFileWriter frames the same events into the same bytes (its first event differs only by
    its source_metadata and the time, so every record after the first must be equal).
    tests/lua/test_tensorboard.lua has qlora write the scenario and compares the bytes.
(b) Has qlora write the scenario (qlora.tfevents with the same wall times), checks the bytes,
    and reads the file with TensorBoard's EventAccumulator: every scalar's tag, step, wall time
    and float32 value, after TensorBoard's purge at the START event.
(c) Trains a tiny random model with recipes/train.lua (eval every 2 steps), kills it with
    SIGKILL after step 5 (checkpoint at 3), resumes it, and reads the run folder with
    EventAccumulator and with the server's plugin_event_accumulator (`--load_fast=false`):
    steps 1..8 once each (the killed run's steps 4 and 5 purged by the resumed run's START
    event), every train/* and eval/* scalar equal to metrics.jsonl as float32. (The Rust data
    server, TensorBoard's default, was checked by hand the same way through its HTTP API.)
"""
import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from unittest import mock

from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import event_file_writer
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures", "tfevents")


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0] if math.isfinite(v) and abs(v) < 3.4028235677973366e38 \
        else (v if not math.isfinite(v) else math.copysign(math.inf, v))


def scenario():
    t0 = 1767225600.125
    many = [["m/%02d" % i, i * 0.37 - 3.0] for i in range(20)]
    return [
        {"wall_time": t0, "file_version": "brain.Event:2"},
        {"wall_time": t0 + 1.375, "step": 1, "summary": [["train/loss", 10.8125], ["train/learning_rate", 2e-4],
                                                         ["train/grad_norm", 1.2345678], ["train/tokens_per_s", 8765.4321]]},
        {"wall_time": t0 + 2.5, "step": 2, "summary": [["train/loss", 10.5], ["train/learning_rate", 1.9e-4],
                                                       ["train/grad_norm", 0.987], ["train/tokens_per_s", 9001.0],
                                                       ["eval/loss", 10.25], ["eval/perplexity", math.exp(10.25)]]},
        {"wall_time": t0 + 3.0, "step": 0, "summary": [["zero", 0.0], ["neg_zero", -0.0], ["tenth", 0.1]]},
        {"wall_time": t0 + 4.0, "step": -1, "summary": [["x" * 200, 1.5], ["损失/λ", -2.25]]},
        {"wall_time": t0 + 5.0, "step": 1, "summary": many},
        {"wall_time": t0 + 6.0, "step": 2, "session_log": 1},
        {"wall_time": t0 + 7.0, "step": 2, "summary": [["train/loss", 9.0]]},
        {"wall_time": t0 + 8.0, "step": 3, "session_log": 0},
        {"wall_time": t0 + 9.0, "step": 3, "summary": [["train/loss", 8.5]]},
        {"wall_time": t0 + 10.0, "step": 2 ** 40 + 3, "summary": [["nan", math.nan], ["inf", math.inf], ["-inf", -math.inf],
                                                                  ["to_inf", 1e39], ["max", 3.4028234663852886e38],
                                                                  ["to_zero", 1e-46], ["denormal", 7.006492321624095e-46]]},
    ]


def to_json_value(v):   # JSON has no NaN, inf or -0.0
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0 and math.copysign(1, v) < 0:
        return "-0.0"
    return v


def event_of(e):
    ev = event_pb2.Event(wall_time=e["wall_time"], step=e.get("step", 0))
    if "file_version" in e:
        ev.file_version = e["file_version"]
    if "summary" in e:
        ev.summary.CopyFrom(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in e["summary"]]))
    if "session_log" in e:
        ev.session_log.CopyFrom(event_pb2.SessionLog(status=e["session_log"]))
    return ev


def records(data):
    out, i = [], 0
    while i < len(data):
        n = struct.unpack("<Q", data[i:i + 8])[0]
        out.append(data[i:i + 16 + n])
        i += 16 + n
    return out


def expected_scalars(events):
    """What TensorBoard should show: every scalar, minus those a START event purges (steps >= its step)."""
    want = {}
    for e in events:
        if e.get("session_log") == 1:
            for tag in want:
                want[tag] = [x for x in want[tag] if x[0] < e.get("step", 0)]
        for tag, v in e.get("summary", []):
            want.setdefault(tag, []).append((e.get("step", 0), e["wall_time"], f32(v)))
    return want   # a tag whose scalars were all purged is still a tag, with none


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def check_accumulator(path, want, what):
    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    assert tags == sorted(want), "%s: tags %s, expected %s" % (what, tags, sorted(want))
    n = 0
    for tag in tags:
        got = [(s.step, s.wall_time, s.value) for s in acc.Scalars(tag)]
        exp = want[tag]
        assert len(got) == len(exp), "%s: %s: %d scalars, expected %d: %s" % (what, tag, len(got), len(exp), got)
        for g, x in zip(got, exp):
            assert g[0] == x[0], "%s: %s: step %s, expected %s" % (what, tag, g[0], x[0])
            assert x[1] is None or g[1] == x[1], "%s: %s step %d: wall time %r, expected %r" % (what, tag, g[0], g[1], x[1])
            assert same(g[2], x[2]), "%s: %s step %d: value %r, expected %r" % (what, tag, g[0], g[2], x[2])
            n += 1
    print("%s: EventAccumulator read %d scalars of %d tags, all as expected" % (what, n, len(tags)))


def check_server_accumulator(path, want, what):
    """The reader behind `tensorboard --load_fast=false` (plugin_event_accumulator: scalars as tensors;
    the first SessionLog START of a run is its start, a later one a restart that purges)."""
    acc = plugin_event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    acc.Reload()
    tags = sorted(acc.Tags()["tensors"])
    assert tags == sorted(want), "%s: tags %s, expected %s" % (what, tags, sorted(want))
    n = 0
    for tag in tags:
        got = [(t.step, float(tensor_util.make_ndarray(t.tensor_proto))) for t in acc.Tensors(tag)]
        exp = [(s, v) for s, _, v in want[tag]]
        assert len(got) == len(exp) and all(g[0] == x[0] and same(g[1], x[1]) for g, x in zip(got, exp)), \
            "%s: %s: %s, expected %s" % (what, tag, got, exp)
        n += len(got)
    print("%s: the server's plugin_event_accumulator read %d scalars of %d tags, all as expected" % (what, n, len(tags)))


def write_golden(events):
    os.makedirs(FIX, exist_ok=True)
    with open(os.path.join(FIX, "scenario.json"), "w", encoding="utf-8") as f:
        rows = []
        for e in events:
            r = dict(e)
            if "summary" in r:
                r["summary"] = [[t, to_json_value(v)] for t, v in r["summary"]]
            rows.append(r)
        f.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n")
    golden = os.path.join(FIX, "golden.tfevents")
    with open(golden, "wb") as f:
        w = RecordWriter(f)
        for e in events:
            w.write(event_of(e).SerializeToString())
    data = open(golden, "rb").read()
    print("wrote %s (%d bytes, %d records) and scenario.json" % (golden, len(data), len(records(data))))
    # tensorboard's EventFileWriter frames the same events into the same records
    tmp = tempfile.mkdtemp()
    with mock.patch.object(event_file_writer.time, "time", return_value=events[0]["wall_time"]):
        w = event_file_writer.EventFileWriter(tmp)
        for e in events[1:]:
            w.add_event(event_of(e))
        w.close()
    (name,) = os.listdir(tmp)
    theirs = records(open(os.path.join(tmp, name), "rb").read())
    ours = records(data)
    assert theirs[1:] == ours[1:], "EventFileWriter's records differ from RecordWriter's"
    first = event_pb2.Event.FromString(theirs[0][12:-4])
    assert first.file_version == "brain.Event:2" and first.wall_time == events[0]["wall_time"]
    shutil.rmtree(tmp)
    print("EventFileWriter wrote the same %d records after its header" % (len(ours) - 1))
    return data


LUA_SCENARIO = r'''
local json, tfe = qlora.json, qlora.tfevents
local f = assert(io.open(FIX .. "/scenario.json", "rb")); local evs = json.decode(f:read("a")); f:close()
local SPECIAL = { nan = 0 / 0, inf = math.huge, ["-inf"] = -math.huge, ["-0.0"] = -0.0 }
local k = 0
local w = assert(tfe.open(OUT, { name = "events.out.tfevents.qlora", clock = function() k = k + 1; return evs[k].wall_time end }))
for i = 2, #evs do
  local e = evs[i]
  if e.summary then
    local vals = {}
    for j, tv in ipairs(e.summary) do vals[j] = { tv[1], SPECIAL[tv[2]] or tv[2] } end
    w:scalars(e.step, vals)
  else
    if e.session_log == 1 then w:restart(e.step) else w:add({ step = e.step, session_log = { status = e.session_log } }) end
  end
end
w:close()
'''


def run_qlora_scenario(qlora, golden):
    tmp = tempfile.mkdtemp()
    code = "FIX = %s; OUT = %s\n%s" % (json.dumps(FIX), json.dumps(tmp), LUA_SCENARIO)
    subprocess.run([qlora, "-e", code], check=True, cwd=ROOT)
    path = os.path.join(tmp, "events.out.tfevents.qlora")
    data = open(path, "rb").read()
    assert data == golden, "qlora's bytes differ from tensorboard's (%d vs %d bytes)" % (len(data), len(golden))
    print("qlora wrote the scenario byte for byte as tensorboard's writer")
    check_accumulator(tmp, expected_scalars(scenario()), "qlora's scenario file")
    shutil.rmtree(tmp)


def run_qlora_training(qlora):
    tmp = tempfile.mkdtemp()
    subprocess.run([qlora, "-e", "qlora.llm.random_model(%s, {tokenizer = 'tests/fixtures/tokenizers/gpt2', layers = 1, "
                    "hidden = 32, heads = 2, kv_heads = 1})" % json.dumps(tmp + "/m")], check=True, cwd=ROOT)
    words = "the quick brown fox jumps over a lazy dog and runs home".split()
    with open(tmp + "/d.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"text": " ".join(words[(i + k) % len(words)] for k in range(12))}) + "\n")
    run = tmp + "/run"
    cmd = [qlora, "recipes/train.lua", "model=" + tmp + "/m", "data=" + tmp + "/d.jsonl", "out=" + run, "seq_len=32",
           "batch=2", "steps=8", "lr=5e-3", "r=4", "save_every=3", "eval_every=2", "eval_fraction=0.1", "seed=5"]
    killed = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, QLORA_KILL_AT="5"), capture_output=True)
    assert killed.returncode != 0, "the run should have been killed after step 5"
    subprocess.run(cmd + ["resume=" + run + "/checkpoint-3"], check=True, cwd=ROOT, capture_output=True)
    files = sorted(n for n in os.listdir(run) if "tfevents" in n)
    assert len(files) == 2, files
    rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 9)), [r["step"] for r in rows]
    want = {}
    for r in rows:
        for tag, key in (("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"),
                         ("train/tokens_per_s", "tokens_per_s"), ("eval/loss", "eval_loss"),
                         ("eval/perplexity", "eval_perplexity")):
            if key in r:
                want.setdefault(tag, []).append((r["step"], None, f32(r[key])))
    assert [s for s, _, _ in want["eval/loss"]] == [2, 4, 6, 8], want["eval/loss"]
    check_accumulator(run, want, "a training run killed at step 5 and resumed from checkpoint-3")
    check_server_accumulator(run, want, "a training run killed at step 5 and resumed from checkpoint-3")
    shutil.rmtree(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default="bin/qlora", help="the qlora binary (relative to the repository root)")
    args = ap.parse_args()
    qlora = os.path.join(ROOT, args.qlora) if not os.path.isabs(args.qlora) else args.qlora
    golden = write_golden(scenario())
    if not os.path.exists(qlora):
        sys.exit("no %s: build qlora (./setup.sh) to check its files, or give --qlora" % qlora)
    run_qlora_scenario(qlora, golden)
    run_qlora_training(qlora)


if __name__ == "__main__":
    main()

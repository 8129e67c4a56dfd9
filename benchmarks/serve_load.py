"""Serving load test (issue #14): ``deltatune serve`` vs a plain transformers pipeline behind FastAPI.

The run: ``--run DIR`` or, without it, the "full" setting of ``benchmarks/delta_methods_sst2.py``
(packaged MiniLM, first ``--rows`` rows of ``../shared/data/text_classification/sst2/train.tsv``,
one epoch, same config function) trained once into ``--workdir`` (reused on later calls).

Load: every request is ONE sentence of SST-2 dev.tsv (872 rows, cycled from row 0, so every
configuration sends the same sentences in the same order), ``POST /v1/predict`` with
``{"inputs": sentence}``. ``--concurrency`` clients (asyncio + ``httpx.AsyncClient``, one
connection each) send ``--requests`` requests in all, after ``--warmup`` requests that are not
counted. Reported per configuration: requests/s (counted requests / wall time of the measured
phase), p50 and p99 latency (ms, per request, client side), errors, the mean batch size (deltatune
only, from ``/metrics``) and the agreement of the predicted labels with the anchor's (per dev
sentence).

Configurations, all in one invocation, one server at a time on 127.0.0.1:

- ``anchor-default``: ``benchmarks/anchor_server.py``, a plain ``def`` endpoint calling
  ``pipeline("text-classification", device=-1)`` per request, uvicorn with 1 worker.
- ``anchor-*``: the anchor tuned (``--anchor-variants``): several worker processes with the
  torch threads split between them, and/or one forward pass at a time (``asyncio.Lock`` +
  ``run_in_executor``). The best of them is the "anchor best" row.
- ``deltatune-nobatch``: ``deltatune serve RUN --max-batch-size 1``.
- ``deltatune-wait{MS}``: ``deltatune serve RUN --max-wait-ms MS`` (the default is 5 ms; the
  values come from ``--wait-ms``).
- ``onnx-fp32`` / ``onnx-int8``: ``deltatune serve DIR --backend onnx`` on exports of the run
  (``deltatune export RUN --format onnx [--quantize int8]`` when the CLI has it, otherwise
  :func:`deltatune.serving.onnx_export.export_onnx`), with dynamic batching at the default
  settings.

Writes the table to stdout, the raw numbers to ``--output`` (JSON) and the table, the command,
``uptime`` before and after and the library versions to ``--markdown``.

``--profile`` instead times the steps of deltatune's request path in-process (no HTTP) for one
sentence and for a batch of 32: pydantic validation, ``inputs.request_rows``,
``datasets.Dataset.from_list``, ``task.check``, ``task.encode``, the forward pass, decoding,
against a plain tokenizer + model call and the anchor's pipeline call.

Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/serve_load.py --output benchmarks/results/serve_load.json \\
        --markdown benchmarks/results/serve_load.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))
from delta_methods_sst2 import METHODS, SST2, config

from tests.serving.server_process import Server, free_port, start_server

DEFAULT_WORKDIR = Path("/tmp/deltatune_serve_load")
# anchor variants: name -> anchor_server.py arguments (the first is the anchor's defaults)
ANCHOR_VARIANTS = {
    "anchor-default": [],
    "anchor-lock": ["--mode", "lock"],
    "anchor-2w1t": ["--workers", "2", "--torch-threads", "1"],
    "anchor-2w1t-lock": ["--workers", "2", "--torch-threads", "1", "--mode", "lock"],
    "anchor-1t": ["--torch-threads", "1"],
}


@dataclass
class Result:
    """One configuration's measurement."""

    name: str
    command: str
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  # dev row -> label (first answer)
    inconsistent: int = 0  # dev rows answered with two different labels within this configuration
    mean_batch: float | None = None
    cpu_seconds: float = 0.0  # user + system CPU time of the server's processes during the measured phases
    round_rates: list[float] = field(default_factory=list)  # requests/s of each round
    loadavg: tuple[float, float, float] | None = None
    error_samples: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        return {
            "name": self.name,
            "command": self.command,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round((self.requests - self.errors) / self.seconds, 2) if self.seconds else 0.0,
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
            "mean_batch_size": None if self.mean_batch is None else round(self.mean_batch, 2),
            "server_cpu_ms_per_request": round(1000 * self.cpu_seconds / self.requests, 2) if self.requests else None,
            "round_requests_per_s": [round(r, 2) for r in self.round_rates],
            "inconsistent_labels": self.inconsistent,
            "loadavg_at_start": self.loadavg,
            "error_samples": self.error_samples[:3],
        }


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def dev_sentences() -> list[str]:
    """SST-2 dev.tsv's sentences in file order (872)."""
    import csv

    with open(SST2 / "dev.tsv", newline="") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


# ---------------------------------------------------------------- load generator


async def _phase(client: httpx.AsyncClient, sentences: list[str], n: int, start_row: int, concurrency: int, record: Result | None) -> float:
    """Send ``n`` one-sentence requests from ``concurrency`` clients; wall seconds."""
    counter = iter(range(n))

    async def client_loop() -> None:
        for i in counter:
            row = (start_row + i) % len(sentences)
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", json={"inputs": sentences[row]})
                ok = r.status_code == 200
                body = r.json() if ok else r.text
            except httpx.HTTPError as e:
                ok, body = False, f"{type(e).__name__}: {e}"
            ms = (time.perf_counter() - t0) * 1000
            if record is None:
                continue
            record.requests += 1
            if not ok:
                record.errors += 1
                record.error_samples.append(str(body)[:200])
                continue
            record.latencies_ms.append(ms)
            label = str(body["predictions"][0]["label"])
            if row in record.labels and record.labels[row] != label:
                record.inconsistent += 1
            record.labels.setdefault(row, label)

    t0 = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` and its descendants (uvicorn workers)."""
    import psutil

    total = 0.0
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measure(server: Server, sentences: list[str], requests: int, start_row: int, warmup: int, concurrency: int, record: Result) -> None:
    """Warm up (not counted, from the end of dev.tsv), then the measured phase (from ``start_row``)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=httpx.Timeout(300.0)) as client:
        await _phase(client, sentences, warmup, len(sentences) - warmup, concurrency, None)
        cpu0 = cpu_seconds(server.process.pid)
        seconds = await _phase(client, sentences, requests, start_row, concurrency, record)
        record.cpu_seconds += cpu_seconds(server.process.pid) - cpu0
        record.seconds += seconds
        record.round_rates.append(requests / seconds)


def mean_batch_size(url: str) -> float | None:
    """Mean inputs per forward pass from deltatune's ``/metrics`` (cumulative: warm-up included)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    s = re.search(r"^deltatune_batch_size_sum\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    c = re.search(r"^deltatune_batch_size_count\{[^}]*\} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(s.group(1)) / float(c.group(1)) if s and c and float(c.group(1)) else None


# ---------------------------------------------------------------- servers


def start_anchor(model_dir: Path, extra: list[str], log: Path, timeout: float = 240.0) -> Server:
    """``anchor_server.py MODEL_DIR EXTRA`` on a free port; waits until every worker answers /health."""
    port = free_port()
    workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
    f = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "anchor_server.py"), str(model_dir), "--port", str(port), *extra],
        stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"anchor_server.py exited with {proc.returncode}:\n{server.output()}")
        try:
            r = httpx.get(f"{server.url}/health", timeout=2, headers={"Connection": "close"})
            if r.status_code == 200:
                pids.add(r.json()["pid"])
                if len(pids) >= workers:
                    return server
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"anchor_server.py was not ready within {timeout} s ({len(pids)} of {workers} workers):\n{server.output()}")


def cli_has_onnx_export() -> bool:
    """True when ``deltatune export`` takes ``--format onnx``."""
    r = subprocess.run([sys.executable, "-m", "deltatune", "export", "--help"], capture_output=True, text=True, check=False)
    return r.returncode == 0 and "onnx" in r.stdout


def export_onnx(run: Path, out: Path, quantize: str | None) -> str:
    """An ONNX export of ``run`` in ``out`` (reused when already there); how it was made."""
    if (out / "deltatune_onnx.json").is_file():
        return f"reused {out}"
    if cli_has_onnx_export():
        cmd = [sys.executable, "-m", "deltatune", "export", str(run), "--format", "onnx", "--out", str(out)]
        if quantize:
            cmd += ["--quantize", quantize]
        subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return "deltatune export " + " ".join(shlex.quote(c) for c in cmd[4:])
    import deltatune
    from deltatune.serving.onnx_export import export_onnx as export

    out.mkdir(parents=True)
    export(deltatune.load(run, device="cpu"), out, quantize)
    return f"deltatune.serving.onnx_export.export_onnx(load(run), out, {quantize!r}) (the CLI had no --format onnx)"


def train(out: Path, rows: int) -> Path:
    """The "full" run of delta_methods_sst2.py in ``out`` (kept: later calls reuse it)."""
    import deltatune

    if (out / "model").is_dir() and (out / "eval.json").is_file():
        return out
    deltatune.finetune(config("full", out, rows, METHODS["full"]), overwrite=True, verbose=False)
    return out


# ---------------------------------------------------------------- report


def table(rows: list[dict], anchor: dict, best_anchor: dict) -> str:
    """The markdown table of ``rows`` (summaries with ``agreement``), ratios against the two anchors."""
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else "n/a"

    head = ("| configuration | req/s | x anchor default | x anchor best | p50 ms | p99 ms | errors | mean batch | "
            "server CPU ms/request | req/s per round | label agreement with anchor |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['requests_per_s']:.1f} | {ratio(r['requests_per_s'], anchor['requests_per_s'])} | "
            f"{ratio(r['requests_per_s'], best_anchor['requests_per_s'])} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
            f"{'' if r['mean_batch_size'] is None else r['mean_batch_size']} | {r['server_cpu_ms_per_request']} | "
            f"{', '.join(f'{x:.1f}' for x in r['round_requests_per_s'])} | {100 * r['agreement']:.2f}% ({r['compared']}) |"
        )
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def versions() -> dict:
    import fastapi
    import onnxruntime
    import torch
    import transformers
    import uvicorn

    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "httpx": httpx.__version__,
        "cpus": os.cpu_count(), "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------- profile


def profile(run: Path, repeats: int) -> dict:
    """Milliseconds per call of each step of deltatune's request path (in-process, no HTTP)."""
    import datasets
    import torch
    from transformers import pipeline

    import deltatune
    from deltatune.serving.inputs import request_rows
    from deltatune.serving.schemas import predict_models
    from deltatune.training.inference import batched_outputs, merge_outputs

    sentences = dev_sentences()
    pred = deltatune.load(run, device="cpu")
    task = pred.task
    req_model, _ = predict_models([task.config.task])
    pipe = pipeline("text-classification", model=str(run / "model"), device=-1)

    def timed(fn, n=repeats) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1000 / n

    def steps_for(bs: int) -> dict:
        """The timed steps for a batch of ``bs`` dev sentences."""
        texts = sentences[100 : 100 + bs]
        rows = [{task.config.data.text_column: t} for t in texts]
        ds = datasets.Dataset.from_list(rows)
        feats = task.encode(ds, pred.tokenizer, with_labels=False)
        outputs = merge_outputs(batched_outputs(pred.model, task, feats, bs, pred.device), len(feats))

        def forward_plain() -> None:
            enc = pred.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                pred.model(**enc)

        steps = {
            "pydantic validation (per request)": lambda: [req_model.model_validate({"inputs": t}) for t in texts],
            "inputs.request_rows (per request)": lambda: [
                request_rows(t, task, 256, 20000) for t in texts
            ],
            "datasets.Dataset.from_list (one per batch)": lambda: datasets.Dataset.from_list(rows),
            "task.check (one per batch)": lambda: task.check(ds, "inputs", with_labels=False),
            "task.encode (one per batch)": lambda: task.encode(ds, pred.tokenizer, with_labels=False),
            "batched_outputs forward (one per batch)": lambda: merge_outputs(batched_outputs(pred.model, task, feats, bs, pred.device), len(feats)),
            "task.decode (one per batch)": lambda: task.decode(outputs, feats),
            "Predictor.predict_rows, all rows in one forward (one per batch)": lambda: pred.predict_rows(ds, "inputs", batch_size=bs),
            "Predictor.predict_rows, 8 rows per forward (length-sorted; what deltatune serve does on CPU)": lambda: pred.predict_rows(
                ds, "inputs", batch_size=min(8, bs)
            ),
            "plain tokenizer + model forward (one per batch)": forward_plain,
            "anchor: pipeline(text) per sentence": lambda: [pipe(t) for t in texts],
            "pipeline(list, batch_size=bs)": lambda: pipe(texts, batch_size=bs),
        }
        return steps

    out: dict[str, dict] = {}
    for bs in (1, 32):
        steps = steps_for(bs)
        n = repeats if bs == 1 else max(3, repeats // 8)
        out[f"batch {bs}"] = {k: round(timed(fn, n), 3) for k, fn in steps.items()}
        print(f"batch {bs} (ms per call, {n} calls, torch threads {torch.get_num_threads()}):", flush=True)
        for k, v in out[f"batch {bs}"].items():
            print(f"  {v:9.3f}  {k}", flush=True)
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a finished text-classification run (default: train the SST-2 run into --workdir)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"run, ONNX exports and server logs (default {DEFAULT_WORKDIR})")
    p.add_argument("--rows", type=int, default=8000, help="training rows when training the run")
    p.add_argument("--requests", type=int, default=2000, help="measured requests per configuration")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    p.add_argument("--warmup", type=int, default=50, help="requests before the measurement (not counted)")
    p.add_argument("--rounds", type=int, default=1,
                   help="split the requests of every configuration into this many rounds run in turn (spreads a shared machine's load changes over all)")
    p.add_argument("--anchor-variants", default=",".join(ANCHOR_VARIANTS), help=f"of {','.join(ANCHOR_VARIANTS)} (anchor-default always runs)")
    p.add_argument("--wait-ms", default="5,20", help="--max-wait-ms values of deltatune serve with batching (5 is the default)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX configurations")
    p.add_argument("--only", default=None, help="comma-separated configuration names to run (after the anchor default)")
    p.add_argument("--output", type=Path, help="JSON results")
    p.add_argument("--markdown", type=Path, help="markdown report (table, command, uptime, versions)")
    p.add_argument("--profile", action="store_true", help="time the steps of the request path in-process instead")
    p.add_argument("--profile-repeats", type=int, default=64)
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    command = "HF_HUB_OFFLINE=1 python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    args.workdir.mkdir(parents=True, exist_ok=True)
    up_before = uptime()
    print(up_before, flush=True)
    run = args.run or train(args.workdir / "run", args.rows)
    if args.profile:
        res = profile(run, args.profile_repeats)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"profile": res, "uptime_before": up_before, "uptime_after": uptime(), "versions": versions()}, indent=2))
        return

    configs: list[tuple[str, str, list[str], dict]] = []  # (name, kind, args, environment)
    for name in ["anchor-default", *[v for v in args.anchor_variants.split(",") if v and v != "anchor-default"]]:
        configs.append((name, "anchor", ANCHOR_VARIANTS[name], {}))
    configs.append(("deltatune-nobatch", "deltatune", [str(run), "--max-batch-size", "1"], {}))
    for ms in [m for m in args.wait_ms.split(",") if m]:
        configs.append((f"deltatune-wait{ms}", "deltatune", [str(run), "--max-wait-ms", ms], {}))
    # deltatune serve with one intra-op thread per CPU (torch's own default; deltatune serve's default is CPUs - 1)
    cpus = os.cpu_count() or 1
    configs.append((f"deltatune-threads{cpus}", "deltatune", [str(run), "--threads", str(cpus)], {}))
    exports = {}
    if not args.no_onnx:
        for name, q in (("onnx-fp32", None), ("onnx-int8", "int8")):
            folder = args.workdir / name
            try:
                exports[name] = export_onnx(run, folder, q)
            except Exception as e:  # noqa: BLE001 - reported, the rest still runs
                print(f"{name}: export failed ({type(e).__name__}: {e}); skipped", flush=True)
                continue
            print(f"{name}: {exports[name]}", flush=True)
            configs.append((name, "deltatune", [str(folder), "--backend", "onnx"], {}))
    if args.only:
        keep = set(args.only.split(",")) | {"anchor-default"}
        configs = [c for c in configs if c[0] in keep]

    sentences = dev_sentences()
    results: dict[str, Result] = {}
    per_round = [args.requests // args.rounds + (1 if i < args.requests % args.rounds else 0) for i in range(args.rounds)]
    for rnd, n in enumerate(per_round):
        start_row = sum(per_round[:rnd]) % len(sentences)
        for name, kind, cargs, env in configs:
            log = args.workdir / f"{name}.log"
            cmd = (f"python benchmarks/anchor_server.py {run}/model " if kind == "anchor" else "deltatune serve ") + " ".join(cargs)
            cmd = "".join(f"{k}={v} " for k, v in env.items()) + cmd.strip()
            res = results.setdefault(name, Result(name, cmd, loadavg=os.getloadavg()))
            print(f"round {rnd + 1}/{args.rounds} {name}: {res.command} (load {os.getloadavg()[0]:.2f})", flush=True)
            server = start_anchor(run / "model", cargs, log) if kind == "anchor" else start_server(cargs, log, env=env)
            try:
                asyncio.run(measure(server, sentences, n, start_row, args.warmup, args.concurrency, res))
                if kind == "deltatune":
                    b = mean_batch_size(server.url)
                    res.mean_batch = b if res.mean_batch is None or b is None else (res.mean_batch * rnd + b) / (rnd + 1)
            finally:
                server.stop()
            print(f"  {res.round_rates[-1]:.1f} req/s this round", flush=True)
    results_list = list(results.values())
    for res in results_list:
        s = res.summary()
        print(f"{res.name}: {s['requests_per_s']:.1f} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, errors {s['errors']}, "
              f"mean batch {s['mean_batch_size']}, server CPU {s['server_cpu_ms_per_request']} ms/request", flush=True)
    results = results_list

    anchor_labels = results[0].labels
    rows = []
    for r in results:
        s = r.summary()
        common = [k for k in r.labels if k in anchor_labels]
        s["compared"] = len(common)
        s["agreement"] = sum(r.labels[k] == anchor_labels[k] for k in common) / len(common) if common else 0.0
        s["disagreeing_rows"] = sorted(k for k in common if r.labels[k] != anchor_labels[k])[:20]
        rows.append(s)
    anchors = [s for s in rows if s["name"].startswith("anchor")]
    best = max(anchors, key=lambda s: s["requests_per_s"])
    md_table = table(rows, rows[0], best)
    up_after = uptime()
    print(md_table)
    print(up_after)
    report = {
        "command": command, "run": str(run), "requests": args.requests, "rounds": args.rounds, "concurrency": args.concurrency, "warmup": args.warmup,
        "anchor_best": best["name"], "onnx_exports": exports, "uptime_before": up_before, "uptime_after": up_after,
        "versions": versions(), "results": rows,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        v = report["versions"]
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(
            "# Serving load: deltatune serve vs a transformers pipeline behind FastAPI\n\n"
            f"Command (repository root):\n\n```\n{command}\n```\n\n"
            f"{args.requests} measured requests per configuration (after {args.warmup} warm-up requests), "
            f"{args.concurrency} concurrent clients (asyncio + httpx), one SST-2 dev sentence per request, "
            f"127.0.0.1, one server at a time, in {args.rounds} round(s) (every configuration once per round, "
            f"a fresh server each time, the rounds' requests continue along dev.tsv). Anchor best: `{best['name']}`. "
            "Server CPU: user + system CPU time of the server's processes during the measured requests, per request.\n\n"
            f"{md_table}\n\n"
            "Server commands:\n\n" + "".join(f"- {s['name']}: `{s['command']}`\n" for s in rows) + "\n"
            f"`uptime` before: `{up_before}`\n\n`uptime` after: `{up_after}`\n\n"
            f"Versions: torch {v['torch']}, transformers {v['transformers']}, onnxruntime {v['onnxruntime']}, "
            f"fastapi {v['fastapi']}, uvicorn {v['uvicorn']}, httpx {v['httpx']}, Python {v['python']}; "
            f"{v['cpus']} CPUs ({v['processor']}).\n"
        )


if __name__ == "__main__":
    main()
